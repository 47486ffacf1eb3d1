/*
 * auth.h — bearer tokens. A token is "kiln_" + 40 random hex characters,
 * shown once when created; the database keeps only its sha256, so a leaked
 * database does not leak usable tokens. Each token belongs to a user in a
 * team; admins may create teams and tokens over the API.
 */
#ifndef KILN_AUTH_H
#define KILN_AUTH_H

#include "db.h"
#include "status.h"

#define KILN_TOKEN_LEN 45 /* "kiln_" + 40 hex */

/* Create a token for user `user` (default "admin"/"user") of team `team`
 * (created when create_team is set, KILN_ERR_NOT_FOUND otherwise). */
kiln_status kiln_auth_token_create(kiln_db *db, const char *team, const char *user, int admin,
                                   int create_team, char token[KILN_TOKEN_LEN + 1]);
/* Check an Authorization header value ("Bearer kiln_..."): KILN_ERR_INVALID
 * when missing or malformed, KILN_ERR_NOT_FOUND when unknown or revoked. */
kiln_status kiln_auth_check(kiln_db *db, const char *authorization, kiln_db_principal *out);

#endif

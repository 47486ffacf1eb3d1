/*
 * auth.c — token creation and checking (see auth.h). Tokens are compared by
 * their sha256 through an indexed lookup, never by string comparison of the
 * secret itself.
 */
#include "auth.h"

#include <string.h>
#include <strings.h>
#include <stdio.h>

#include "hash.h"
#include "kilnd.h"

kiln_status kiln_auth_token_create(kiln_db *db, const char *team, const char *user, int admin,
                                   int create_team, char token[KILN_TOKEN_LEN + 1])
{
    if (!kilnd_name_ok(team, 64))
        return kiln_fail(KILN_ERR_INVALID, "team: \"%s\" is not a valid name ([A-Za-z0-9._-], 1-64)", team);
    if (!user) user = admin ? "admin" : "user";
    if (!kilnd_name_ok(user, 64))
        return kiln_fail(KILN_ERR_INVALID, "user: \"%s\" is not a valid name ([A-Za-z0-9._-], 1-64)", user);
    kiln_db_team t;
    kiln_status st;
    if (create_team) {
        int existed;
        st = kiln_db_team_create(db, team, &t, &existed);
    } else {
        st = kiln_db_team_find(db, team, &t);
    }
    if (st) return st;
    char hex[41], hash[65];
    if ((st = kilnd_random_hex(hex, 20))) return st;
    snprintf(token, KILN_TOKEN_LEN + 1, "kiln_%s", hex);
    kiln_sha256_hex(token, strlen(token), hash);
    return kiln_db_token_add(db, t.seq, user, admin, hash);
}

kiln_status kiln_auth_check(kiln_db *db, const char *authorization, kiln_db_principal *out)
{
    if (!authorization || !*authorization)
        return kiln_fail(KILN_ERR_INVALID, "missing Authorization header (want \"Bearer <token>\")");
    if (strncasecmp(authorization, "Bearer ", 7) != 0)
        return kiln_fail(KILN_ERR_INVALID, "Authorization: expected the Bearer scheme");
    const char *tok = authorization + 7;
    while (*tok == ' ') tok++;
    size_t n = strlen(tok);
    while (n && tok[n - 1] == ' ') n--;
    if (n != KILN_TOKEN_LEN || strncmp(tok, "kiln_", 5) != 0)
        return kiln_fail(KILN_ERR_NOT_FOUND, "Authorization: unknown token");
    char hash[65];
    kiln_sha256_hex(tok, n, hash);
    kiln_status st = kiln_db_token_lookup(db, hash, out);
    if (st == KILN_ERR_NOT_FOUND) return kiln_fail(KILN_ERR_NOT_FOUND, "Authorization: unknown or revoked token");
    return st;
}

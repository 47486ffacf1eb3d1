/*
 * routes_admin.c — service routes: health, the OpenAPI document, the
 * caller's identity, presets and config validation (core/recipe.h), and the
 * admin routes for teams and tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "recipe.h"
#include "routes.h"
#include "workers.h"

json_t *kiln_json_time(double t)
{
    if (t <= 0) return json_null();
    char buf[32];
    kilnd_iso8601(t, buf, sizeof buf);
    return json_string(buf);
}

void kiln_route_health(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    int queued = 0, running = 0;
    if (kiln_db_queue_counts(ctx->db, &queued, &running)) {
        kiln_reply_error(r, 503, "unavailable", NULL, "database: %s", kiln_errmsg());
        return;
    }
    kiln_reply_json(r, 200, json_pack("{s:s, s:s, s:i, s:i, s:i, s:i}", "status", "ok", "version",
                                      kiln_version(), "workers", ctx->cfg.workers, "kernel_threads",
                                      ctx->cfg.kernel_threads, "queued", queued, "running", running));
}

void kiln_route_openapi(kiln_req *r)
{
    kiln_reply_raw(r, 200, "application/json", kilnd_openapi_json, strlen(kilnd_openapi_json));
}

void kiln_route_me(kiln_req *r)
{
    const kiln_db_principal *who = kiln_req_who(r);
    kiln_reply_json(r, 200, json_pack("{s:s, s:s, s:b}", "team", who->team, "user", who->user, "admin",
                                      who->admin));
}

void kiln_route_presets(kiln_req *r)
{
    char *s = kiln_presets_json();
    json_error_t e;
    json_t *p = s ? json_loads(s, 0, &e) : NULL;
    free(s);
    if (!p) {
        kiln_reply_error(r, 500, "internal", NULL, "presets could not be rendered");
        return;
    }
    kiln_reply_json(r, 200, json_pack("{s:o}", "presets", p));
}

/* Reply 422 invalid_config listing every problem; paths get `prefix`. */
void kiln__reply_config_errors(kiln_req *r, const kiln_config_errors *errs, const char *prefix);
void kiln__reply_config_errors(kiln_req *r, const kiln_config_errors *errs, const char *prefix)
{
    json_t *details = json_array();
    char first_field[512] = "", first_msg[768] = "";
    size_t n = errs ? kiln_config_errors_count(errs) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *path = kiln_config_errors_path(errs, i);
        char field[512];
        if (path[0]) snprintf(field, sizeof field, "%s%s%s", prefix, prefix[0] ? "." : "", path);
        else snprintf(field, sizeof field, "%s", prefix[0] ? prefix : "");
        json_array_append_new(details, json_pack("{s:s, s:s}", "field", field, "message",
                                                 kiln_config_errors_message(errs, i)));
        if (i == 0) {
            snprintf(first_field, sizeof first_field, "%s", field);
            snprintf(first_msg, sizeof first_msg, "%s", kiln_config_errors_message(errs, i));
        }
    }
    if (n == 0) snprintf(first_msg, sizeof first_msg, "%s", kiln_errmsg());
    kiln_reply_error_details(r, 422, "invalid_config", first_field[0] ? first_field : prefix, details,
                             "%s%s%s (%zu problem%s)", first_field, first_field[0] ? ": " : "",
                             first_msg, n ? n : 1, n > 1 ? "s" : "");
}

void kiln_route_config_validate(kiln_req *r)
{
    json_t *j = kiln_req_json(r); /* rejects non-JSON / non-objects with 400 */
    if (!j) return;
    json_decref(j);
    size_t len;
    const char *body = kiln_req_body(r, &len);
    kiln_recipe *rec = NULL;
    kiln_config_errors *errs = NULL;
    kiln_status st = kiln_recipe_parse(body, len, &rec, &errs);
    if (st) {
        kiln__reply_config_errors(r, errs, "");
        kiln_config_errors_free(errs);
        return;
    }
    char hash[65];
    kiln_recipe_hash(rec, hash);
    char *canon = kiln_recipe_to_json(rec);
    json_error_t e;
    json_t *cj = canon ? json_loads(canon, 0, &e) : NULL;
    free(canon);
    kiln_reply_json(r, 200, json_pack("{s:b, s:s, s:s, s:o}", "valid", 1, "name", kiln_recipe_name(rec),
                                      "config_hash", hash, "config", cj ? cj : json_null()));
    kiln_recipe_destroy(rec);
}

static json_t *team_json(const kiln_db_team *t)
{
    return json_pack("{s:s, s:s, s:o}", "id", t->id, "name", t->name, "created_at",
                     kiln_json_time(t->created_at));
}

static void team_cb(void *ctx, const kiln_db_team *t) { json_array_append_new(ctx, team_json(t)); }

void kiln_route_teams_list(kiln_req *r)
{
    json_t *a = json_array();
    if (kiln_db_teams_list(kiln_req_ctx(r)->db, team_cb, a)) {
        json_decref(a);
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        return;
    }
    kiln_reply_json(r, 200, json_pack("{s:o}", "teams", a));
}

void kiln_route_team_create(kiln_req *r)
{
    json_t *j = kiln_req_json(r);
    if (!j) return;
    const char *name = json_string_value(json_object_get(j, "name"));
    if (!name || !kilnd_name_ok(name, 64)) {
        kiln_reply_error(r, 400, "invalid_request", "name",
                         "name: a team name is required ([A-Za-z0-9][A-Za-z0-9._-], at most 64)");
        json_decref(j);
        return;
    }
    kiln_db_team t;
    int existed = 0;
    if (kiln_db_team_create(kiln_req_ctx(r)->db, name, &t, &existed)) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    } else if (existed) {
        kiln_reply_error(r, 409, "already_exists", "name", "team \"%s\" already exists", name);
    } else {
        kiln_reply_json(r, 201, team_json(&t));
    }
    json_decref(j);
}

void kiln_route_token_create(kiln_req *r)
{
    json_t *j = kiln_req_json(r);
    if (!j) return;
    json_t *jteam = json_object_get(j, "team"), *juser = json_object_get(j, "user"),
           *jadmin = json_object_get(j, "admin");
    const char *team = json_string_value(jteam);
    const char *user = juser ? json_string_value(juser) : NULL;
    if (!team || !kilnd_name_ok(team, 64)) {
        kiln_reply_error(r, 400, "invalid_request", "team", "team: a team name is required");
    } else if (juser && (!user || !kilnd_name_ok(user, 64))) {
        kiln_reply_error(r, 400, "invalid_request", "user", "user: must be a name ([A-Za-z0-9._-], at most 64)");
    } else if (jadmin && !json_is_boolean(jadmin)) {
        kiln_reply_error(r, 400, "invalid_request", "admin", "admin: must be true or false");
    } else {
        int admin = json_is_true(jadmin);
        char tok[KILN_TOKEN_LEN + 1];
        kiln_status st = kiln_auth_token_create(kiln_req_ctx(r)->db, team, user, admin, 1, tok);
        if (st) kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        else kiln_reply_json(r, 201, json_pack("{s:s, s:s, s:s, s:b}", "token", tok, "team", team, "user",
                                               user ? user : (admin ? "admin" : "user"), "admin", admin));
    }
    json_decref(j);
}

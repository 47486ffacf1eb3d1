/*
 * routes.h — the /v1 handlers (one file per resource) and the JSON shapes
 * they share. The routing table itself is in routes.c; server/openapi.json
 * documents every entry of it (test_server_api checks both directions).
 */
#ifndef KILN_ROUTES_H
#define KILN_ROUTES_H

#include <jansson.h>

#include "db.h"
#include "http.h"

/* routes_admin.c */
void kiln_route_health(kiln_req *r);
void kiln_route_openapi(kiln_req *r);
void kiln_route_me(kiln_req *r);
void kiln_route_presets(kiln_req *r);
void kiln_route_config_validate(kiln_req *r);
void kiln_route_teams_list(kiln_req *r);
void kiln_route_team_create(kiln_req *r);
void kiln_route_token_create(kiln_req *r);

/* routes_models.c */
void kiln_route_models_list(kiln_req *r);
void kiln_route_model_upload(kiln_req *r);
void kiln_route_model_get(kiln_req *r);
void kiln_route_model_delete(kiln_req *r);
json_t *kiln_model_json(const kiln_db_model *m);

/* routes_datasets.c */
void kiln_route_datasets_list(kiln_req *r);
void kiln_route_dataset_upload(kiln_req *r);
void kiln_route_dataset_get(kiln_req *r);
json_t *kiln_dataset_json(const kiln_db_dataset *d);
/* Register every benchmark-layout folder under the data root (start-up). */
kiln_status kiln_datasets_register_root(kilnd_ctx *ctx, int *n);

/* routes_jobs.c */
void kiln_route_jobs_list(kiln_req *r);
void kiln_route_job_create(kiln_req *r);
void kiln_route_job_get(kiln_req *r);
void kiln_route_job_cancel(kiln_req *r);
void kiln_route_job_retry(kiln_req *r);
void kiln_route_job_artifact(kiln_req *r);
void kiln_route_job_preview(kiln_req *r);
json_t *kiln_job_json(const kiln_db_job *j);

/* An ISO-8601 string, or JSON null for t <= 0. */
json_t *kiln_json_time(double t);

#endif

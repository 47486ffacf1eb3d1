/*
 * routes.c — kilnd's routing table: method, path pattern ({id} matches
 * [A-Za-z0-9_.-]+), handler, auth flags, body kind. `kilnd routes` prints
 * it; server/openapi.json must list exactly these (tested).
 */
#include "routes.h"

#define MODEL_RAW "application/octet-stream"
#define DATASET_RAW "application/x-tar|application/gzip|application/x-gzip|application/octet-stream"

const kiln_route kiln_routes[] = {
    {"GET", "/v1/health", kiln_route_health, KILN_ROUTE_PUBLIC, KILN_BODY_NONE, NULL},
    {"GET", "/v1/openapi.json", kiln_route_openapi, KILN_ROUTE_PUBLIC, KILN_BODY_NONE, NULL},
    {"GET", "/v1/me", kiln_route_me, 0, KILN_BODY_NONE, NULL},
    {"GET", "/v1/models", kiln_route_models_list, 0, KILN_BODY_NONE, NULL},
    {"POST", "/v1/models", kiln_route_model_upload, 0, KILN_BODY_UPLOAD, MODEL_RAW},
    {"GET", "/v1/models/{id}", kiln_route_model_get, 0, KILN_BODY_NONE, NULL},
    {"DELETE", "/v1/models/{id}", kiln_route_model_delete, 0, KILN_BODY_NONE, NULL},
    {"GET", "/v1/datasets", kiln_route_datasets_list, 0, KILN_BODY_NONE, NULL},
    {"POST", "/v1/datasets", kiln_route_dataset_upload, 0, KILN_BODY_UPLOAD, DATASET_RAW},
    {"GET", "/v1/datasets/{id}", kiln_route_dataset_get, 0, KILN_BODY_NONE, NULL},
    {"GET", "/v1/presets", kiln_route_presets, 0, KILN_BODY_NONE, NULL},
    {"POST", "/v1/configs:validate", kiln_route_config_validate, 0, KILN_BODY_JSON, NULL},
    {"GET", "/v1/jobs", kiln_route_jobs_list, 0, KILN_BODY_NONE, NULL},
    {"POST", "/v1/jobs", kiln_route_job_create, 0, KILN_BODY_JSON, NULL},
    {"GET", "/v1/jobs/{id}", kiln_route_job_get, 0, KILN_BODY_NONE, NULL},
    {"POST", "/v1/jobs/{id}:cancel", kiln_route_job_cancel, 0, KILN_BODY_NONE, NULL},
    {"POST", "/v1/jobs/{id}:retry", kiln_route_job_retry, 0, KILN_BODY_NONE, NULL},
    {"GET", "/v1/jobs/{id}/artifact", kiln_route_job_artifact, 0, KILN_BODY_NONE, NULL},
    {"GET", "/v1/jobs/{id}/preview", kiln_route_job_preview, 0, KILN_BODY_NONE, NULL},
    {"GET", "/v1/admin/teams", kiln_route_teams_list, KILN_ROUTE_ADMIN, KILN_BODY_NONE, NULL},
    {"POST", "/v1/admin/teams", kiln_route_team_create, KILN_ROUTE_ADMIN, KILN_BODY_JSON, NULL},
    {"POST", "/v1/admin/tokens", kiln_route_token_create, KILN_ROUTE_ADMIN, KILN_BODY_JSON, NULL},
};
const int kiln_n_routes = (int)(sizeof kiln_routes / sizeof kiln_routes[0]);

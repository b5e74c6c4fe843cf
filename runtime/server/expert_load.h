/* GET /v1/moira/expert-load: the tokens the served requests routed to each expert of each MoE
 * layer since the server started, as a load profile (the YAML `moira plan --profile` reads), so
 * a deployment can be re-planned for the load it really sees. */
#ifndef MOIRA_RUNTIME_SERVER_EXPERT_LOAD_H
#define MOIRA_RUNTIME_SERVER_EXPERT_LOAD_H

#include "runtime/model_config.h"
#include "runtime/server/scheduler.h"

typedef struct serve_expert_load {
    serve_scheduler_t *scheduler;       /* borrowed */
    const moira_model_config_t *config; /* borrowed */
    const char *model_name;             /* borrowed */
} serve_expert_load_t;

/* serve_http_backend_t's expert_load callback over a serve_expert_load_t context: the profile's
 * YAML (malloc'd), or NULL with *status_code and *error set. */
char *serve_expert_load_yaml(void *context, int *status_code, const char **error);

#endif

/* The observed expert load as a profile (runtime/server/expert_load.h). */
#include "runtime/server/expert_load.h"

#include <stdio.h>
#include <stdlib.h>

#include "placement/profile.h"

/* The profile as YAML in memory (malloc'd), or NULL. */
static char *profile_text(const moira_profile_t *profile, const char *model_name) {
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    moira_status_t status =
        out ? moira_profile_write_stream(profile, model_name, "expert-load", out)
            : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    bool written = !status && out && fflush(out) == 0;
    moira_status_free(status);
    if (out) fclose(out);
    if (written) return text;
    free(text);
    return NULL;
}

char *serve_expert_load_yaml(void *context, int *status_code, const char **error) {
    const serve_expert_load_t *x = context;
    const moira_model_config_t *c = x->config;
    size_t count = (size_t)(c->num_hidden_layers * c->n_routed_experts);
    double *all = malloc(count * sizeof(double));
    *status_code = 500;
    *error = "out of memory";
    if (!all) return NULL;
    if (!serve_scheduler_read_expert_load(x->scheduler, all, count)) {
        free(all);
        *status_code = 404;
        *error = "this server does not record expert load";
        return NULL;
    }
    moira_profile_t profile;
    moira_status_t status = moira_profile_from_totals(c, all, &profile);
    free(all);
    if (!status) status = serve_scheduler_add_speeds(x->scheduler, &profile);
    char *text = status ? NULL : profile_text(&profile, x->model_name);
    moira_status_free(status);
    moira_profile_free(&profile);
    return text;
}

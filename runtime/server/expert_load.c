/* The observed expert load as a profile (runtime/server/expert_load.h). */
#include "runtime/server/expert_load.h"

#include <stdio.h>
#include <stdlib.h>

#include "placement/profile.h"

char *serve_expert_load_yaml(void *context, int *status_code, const char **error) {
    const serve_expert_load_t *x = context;
    const moira_model_config_t *c = x->config;
    int64_t layers = c->num_hidden_layers, experts = c->n_routed_experts;
    double *all = malloc((size_t)(layers * experts) * sizeof(double));
    moira_profile_t profile = {.experts = experts};
    profile.layers = malloc((size_t)layers * sizeof(int64_t));
    profile.load = malloc((size_t)(layers * experts) * sizeof(double));
    char *text = NULL;
    size_t len = 0;
    *status_code = 500;
    *error = "out of memory";
    if (all && profile.layers && profile.load &&
        !serve_scheduler_read_expert_load(x->scheduler, all, (size_t)(layers * experts))) {
        *status_code = 404;
        *error = "this server does not record expert load";
    } else if (all && profile.layers && profile.load) {
        for (int64_t l = 0; l < layers; l++) {
            if (!moira_model_config_is_moe_layer(c, l)) continue;
            for (int64_t e = 0; e < experts; e++)
                profile.load[profile.n_layers * experts + e] = all[l * experts + e];
            profile.layers[profile.n_layers++] = l;
        }
        FILE *out = open_memstream(&text, &len);
        moira_status_t status =
            out ? moira_profile_write_stream(&profile, x->model_name, "expert-load", out)
                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
        bool written = !status && out && fflush(out) == 0;
        moira_status_free(status);
        if (out) fclose(out);
        if (!written) {
            free(text);
            text = NULL;
        }
    }
    free(all);
    free(profile.layers);
    free(profile.load);
    return text;
}

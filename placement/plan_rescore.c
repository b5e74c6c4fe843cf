/* Scoring an existing plan against another load (`moira plan --check --profile`). */
#include <stdlib.h>

#include "placement/plan.h"

/* Each expert's new load goes to its replicas in the shares they had (evenly when they had
 * none), so a plan's own split between copies survives and only the amounts change. */
moira_status_t moira_plan_apply_profile(moira_plan_t *plan, const moira_profile_t *profile) {
    if (profile->experts != plan->experts)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "the profile has %lld experts, the plan %lld",
                                 (long long)profile->experts, (long long)plan->experts);
    double *old_sum = calloc((size_t)plan->experts, sizeof(double));
    int *copies = calloc((size_t)plan->experts, sizeof(int));
    moira_status_t status = MOIRA_OK_STATUS;
    if (!old_sum || !copies) status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int l = 0; !status && l < plan->n_layers; l++) {
        moira_plan_layer_t *layer = &plan->layers[l];
        const double *load = moira_profile_layer_load(profile, layer->layer);
        if (!load) {
            status = moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "the profile has no layer %lld",
                                       (long long)layer->layer);
            break;
        }
        for (int64_t e = 0; e < plan->experts; e++) {
            old_sum[e] = 0;
            copies[e] = 0;
        }
        for (int r = 0; r < layer->n_replicas; r++) {
            old_sum[layer->replica_expert[r]] += layer->replica_load[r];
            copies[layer->replica_expert[r]]++;
        }
        for (int r = 0; r < layer->n_replicas; r++) {
            int32_t e = layer->replica_expert[r];
            layer->replica_load[r] = old_sum[e] > 0 ? load[e] * layer->replica_load[r] / old_sum[e]
                                                    : load[e] / copies[e];
        }
    }
    free(old_sum);
    free(copies);
    return status;
}

bool moira_plan_has_load(const moira_plan_t *plan) {
    for (int l = 0; l < plan->n_layers; l++)
        for (int r = 0; r < plan->layers[l].n_replicas; r++)
            if (plan->layers[l].replica_load[r] > 0) return true;
    return false;
}

/* Fuzz target: expert load profiles, read against EPLB's example model (12 experts, MoE layers 0
 * and 1). A profile that parses must hold one finite, non-negative count per expert for every MoE
 * layer, and the planner must place from it on EPLB's example machine. */
#include <math.h>

#include "placement/plan.h"
#include "placement/profile.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_placement_fixtures.h"
#include "tests/fuzz/fuzz_plan_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moira_fuzz_setup();
    const moira_model_config_t *model = moira_fuzz_model();
    const moira_topology_t *topology = moira_fuzz_topology();
    moira_profile_t profile;
    moira_status_t status =
        moira_profile_parse((const char *)data, size, "fuzz-profile.yaml", model, &profile);
    if (status) {
        moira_fuzz_expect_input_error(status, "profile");
        return 0;
    }
    FUZZ_ASSERT(profile.experts == model->n_routed_experts, "experts");
    FUZZ_ASSERT(profile.n_layers == moira_model_config_moe_layer_count(model), "layers");
    for (int l = 0; l < profile.n_layers; l++) {
        const double *load = moira_profile_layer_load(&profile, profile.layers[l]);
        FUZZ_ASSERT(load, "layer %lld has no loads", (long long)profile.layers[l]);
        for (int64_t e = 0; e < profile.experts; e++)
            FUZZ_ASSERT(isfinite(load[e]) && load[e] >= 0 && load[e] <= MOIRA_MAX_TOKEN_COUNT,
                        "load %g", load[e]);
    }
    moira_plan_options_t options = {4, 2, MOIRA_PLAN_BALANCED};
    moira_plan_t plan;
    status = moira_plan_make(topology, model, &profile, &options, &plan);
    FUZZ_ASSERT(!status, "planning from a valid profile failed: %s", moira_status_message(status));
    moira_fuzz_check_plan(&plan, topology, model);
    moira_plan_free(&plan);
    moira_profile_free(&profile);
    return 0;
}

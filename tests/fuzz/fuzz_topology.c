/* Fuzz target: topology files. A topology that parses must be consistent (hosts, unique target
 * names, links between devices, NUMA references on the device's host), and the planner must
 * either place EPLB's example model on it or say why; a plan it makes must validate, write and
 * read back. `discover: true` hosts are filled from this machine (hwloc, no devices). */
#include <string.h>

#include "placement/plan.h"
#include "placement/profile.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_placement_fixtures.h"
#include "tests/fuzz/fuzz_plan_check.h"

/* What the loader promises about a topology it returns. */
static void check_topology(const moira_topology_t *t) {
    FUZZ_ASSERT(t->n_hosts >= 1 && t->n_targets >= 1, "%d hosts, %d targets", t->n_hosts,
                t->n_targets);
    for (int i = 0; i < t->n_targets; i++) {
        const moira_target_t *a = &t->targets[i];
        FUZZ_ASSERT(a->host >= 0 && a->host < t->n_hosts, "target %s on host %d", a->name, a->host);
        FUZZ_ASSERT(memchr(a->name, '\0', sizeof(a->name)) && a->name[0], "target name");
        for (int j = 0; j < i; j++)
            FUZZ_ASSERT(strcmp(a->name, t->targets[j].name), "duplicate target %s", a->name);
    }
    for (int i = 0; i < t->n_links; i++) {
        const moira_link_t *l = &t->links[i];
        FUZZ_ASSERT(l->a >= 0 && l->a < t->n_targets && l->b >= 0 && l->b < t->n_targets &&
                        l->a != l->b && l->bandwidth_gbs > 0,
                    "link %d", i);
    }
}

/* Plans the fixture model on the fuzzed topology. */
static void plan_on(const moira_topology_t *topology) {
    const moira_model_config_t *model = moira_fuzz_model();
    moira_profile_t profile;
    moira_status_t status = moira_profile_synthesise(model, "zipf:1.2", 512, &profile);
    FUZZ_ASSERT(!status, "synthesising a profile failed");
    moira_plan_options_t options = {4, 0, MOIRA_PLAN_BALANCED};
    moira_plan_t plan;
    status = moira_plan_make(topology, model, &profile, &options, &plan);
    if (status) {
        /* Too little memory or no usable target: said, never a crash or an internal error. */
        FUZZ_ASSERT(moira_status_code(status) != MOIRA_CODE_INTERNAL &&
                        *moira_status_message(status),
                    "planning failed badly: %s", moira_status_message(status));
        moira_status_free(status);
    } else {
        moira_fuzz_check_plan(&plan, topology, model);
        moira_plan_free(&plan);
    }
    moira_profile_free(&profile);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moira_fuzz_setup();
    moira_topology_t topology;
    moira_status_t status =
        moira_topology_parse((const char *)data, size, "fuzz-topology.yaml", NULL, &topology);
    if (status) {
        moira_fuzz_expect_input_error(status, "topology");
        return 0;
    }
    check_topology(&topology);
    plan_on(&topology);
    moira_topology_free(&topology);
    return 0;
}

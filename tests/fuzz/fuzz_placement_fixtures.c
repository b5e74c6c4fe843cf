/* Loads the placement fixtures once; a fixture that fails to load is a broken checkout. */
#include "tests/fuzz/fuzz_placement_fixtures.h"

#include "tests/fuzz/fuzz.h"

static moira_model_config_t model;
static moira_topology_t topology;
static bool model_loaded, topology_loaded;

const moira_model_config_t *moira_fuzz_model(void) {
    if (model_loaded) return &model;
    moira_status_t status =
        moira_model_config_load(MOIRA_TEST_DATA_DIR "/placement/eplb-model.yaml", &model);
    FUZZ_ASSERT(!status, "fixture: %s", moira_status_message(status));
    model_loaded = true;
    return &model;
}

const moira_topology_t *moira_fuzz_topology(void) {
    if (topology_loaded) return &topology;
    moira_status_t status =
        moira_topology_load(MOIRA_TEST_DATA_DIR "/placement/eplb-topology.yaml", NULL, &topology);
    FUZZ_ASSERT(!status, "fixture: %s", moira_status_message(status));
    topology_loaded = true;
    return &topology;
}

/* Fuzz target: plan files (YAML or JSON), read against EPLB's example machine. A plan that loads
 * must pass validation again, be checked against the model without crashing, be re-costed, and
 * write and read back with the same replicas. */
#include "placement/plan.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_placement_fixtures.h"
#include "tests/fuzz/fuzz_plan_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moira_fuzz_setup();
    const moira_model_config_t *model = moira_fuzz_model();
    const moira_topology_t *topology = moira_fuzz_topology();
    moira_plan_t plan;
    moira_status_t status =
        moira_plan_parse((const char *)data, size, "fuzz-plan.yaml", topology, &plan);
    if (status) {
        moira_fuzz_expect_input_error(status, "plan");
        return 0;
    }
    status = moira_plan_check_model(&plan, model, "fuzz-plan.yaml");
    if (status) {
        moira_fuzz_expect_input_error(status, "plan against the model");
    } else {
        moira_plan_evaluate(&plan, topology, model);
    }
    moira_fuzz_check_plan(&plan, topology, model);
    moira_plan_free(&plan);
    return 0;
}

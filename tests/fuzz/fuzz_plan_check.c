/* The plan invariants the placement fuzz targets share. */
#include "tests/fuzz/fuzz_plan_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"

/* Two plans place the same replicas on the same targets, layer by layer. */
static void expect_same_replicas(const moira_plan_t *a, const moira_plan_t *b, const char *how) {
    FUZZ_ASSERT(a->n_layers == b->n_layers && a->experts == b->experts, "%s: layers differ", how);
    for (int l = 0; l < a->n_layers; l++) {
        const moira_plan_layer_t *x = &a->layers[l], *y = &b->layers[l];
        FUZZ_ASSERT(x->layer == y->layer && x->n_replicas == y->n_replicas, "%s: layer %d differs",
                    how, l);
        for (int r = 0; r < x->n_replicas; r++)
            FUZZ_ASSERT(x->replica_target[r] == y->replica_target[r] &&
                            x->replica_expert[r] == y->replica_expert[r],
                        "%s: layer %d replica %d differs", how, l, r);
    }
}

/* Writes the plan into memory in one format and parses it back. */
static void round_trip(const moira_plan_t *plan, const moira_topology_t *topology, bool json) {
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    FUZZ_ASSERT(out, "open_memstream failed");
    moira_status_t status = moira_plan_write_stream(plan, topology, out, json);
    FUZZ_ASSERT(fclose(out) == 0, "closing the memory stream failed");
    FUZZ_ASSERT(!status, "writing the plan failed: %s", moira_status_message(status));
    moira_plan_t again;
    status = moira_plan_parse(text, len, json ? "written.json" : "written.yaml", topology, &again);
    FUZZ_ASSERT(!status, "a written plan does not read back (%s): %s\n%s", json ? "JSON" : "YAML",
                moira_status_message(status), text);
    expect_same_replicas(plan, &again, json ? "JSON round trip" : "YAML round trip");
    moira_plan_free(&again);
    free(text);
}

void moira_fuzz_check_plan(const moira_plan_t *plan, const moira_topology_t *topology,
                           const moira_model_config_t *model) {
    moira_status_t status = moira_plan_validate(plan, topology, "fuzz plan");
    FUZZ_ASSERT(!status, "plan fails validation: %s", moira_status_message(status));
    moira_plan_summary_t summary;
    moira_plan_summarise(plan, &summary);
    FUZZ_ASSERT(isfinite(summary.predicted_us_per_layer) && isfinite(summary.max_over_mean),
                "summary not finite");
    round_trip(plan, topology, false);
    round_trip(plan, topology, true);
    char svg[256];
    snprintf(svg, sizeof(svg), "%s/plan.svg", moira_fuzz_setup());
    status = moira_plan_write_svg(plan, topology, model, svg);
    FUZZ_ASSERT(!status, "drawing the plan failed: %s", moira_status_message(status));
}

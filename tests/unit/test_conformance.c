/* The cross-backend conformance suite over every device this build finds: every op, every
 * shape, every weight dtype (and for the decode ops every latent-cache dtype the device keeps),
 * against the reference, held to each device's precision limit (bf16's for a bf16 cache). */
#include <stdio.h>
#include <stdlib.h>

#include "ops/conformance.h"
#include "runtime/backend.h"
#include "tests/unit/testing.h"

int main(void) {
    CHECK_OK(moira_runtime_init());
    CHECK(moira_device_count() >= 1);
    for (int i = 0; i < moira_device_count(); i++) {
        moira_conformance_result_t *results = NULL;
        int count = 0;
        CHECK_OK(moira_conformance_run(moira_device_at(i), NULL, &results, &count));
        int ran = 0;
        for (int r = 0; r < count; r++) {
            const moira_conformance_result_t *x = &results[r];
            if (x->skipped) continue;
            ran++;
            CHECK_MSG(x->passed, "%s %s %s %s (%s cache) T=%lld: NMSE %.3g > %.3g %s", x->device,
                      x->op, x->shape, moira_dtype_name(x->weight_dtype),
                      moira_dtype_name(x->cache_dtype), (long long)x->tokens, x->nmse, x->limit,
                      x->detail);
        }
        printf("%s: %d cases run, %d skipped\n", moira_device_info(moira_device_at(i))->name, ran,
               count - ran);
        /* A device that supports nothing would pass vacuously: demand real coverage. */
        CHECK_MSG(ran > 0, "%s ran no conformance case",
                  moira_device_info(moira_device_at(i))->name);
        free(results);
    }
    moira_runtime_shutdown();
    return moira_test_finish("test_conformance");
}

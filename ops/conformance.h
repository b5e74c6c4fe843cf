/* The cross-backend conformance suite: every model op, on one device, over a fixed set of shapes
 * (real models scaled down, odd sizes, one token, many tokens) and weight dtypes, the decode ops
 * also with a bf16 latent cache (held to bf16's limit), against the reference implementations of
 * ops/reference.h. Written once: a new backend joins by
 * registering devices. Used by `moira check` and by the test suite. */
#ifndef MOIRA_OPS_CONFORMANCE_H
#define MOIRA_OPS_CONFORMANCE_H

#include <stdbool.h>

#include "runtime/device.h"

typedef struct moira_conformance_result {
    char device[32];
    char op[16];    /* gate, moe, mla, mla_decode, layer, layer_decode */
    char shape[24]; /* the model shape's name */
    moira_dtype_t weight_dtype;
    moira_dtype_t cache_dtype; /* decode ops: the latent cache's (F32 or BF16); F32 otherwise */
    int64_t tokens;
    double nmse;  /* NMSE of the output (gate: of the weights) */
    double limit; /* the device's precision limit */
    bool passed;
    bool skipped;     /* the device does not support the op with this dtype */
    char detail[160]; /* why it failed, or what was compared */
} moira_conformance_result_t;

/* Names of the ops the suite covers, NULL-terminated. Static storage. */
extern const char *const moira_conformance_ops[];

/* Runs every case whose op is in `ops` (comma-separated; NULL for all) on `device`. Results are
 * appended to `*results` (grown with realloc; caller frees) and counted in `*count`. A failing
 * comparison is a result, not an error; the status reports only what prevented running. A case
 * the device failed to run keeps a short reason in its detail; the first such failure is also
 * logged whole on stderr (an OpenCL build log does not fit a table cell). */
moira_status_t moira_conformance_run(moira_device_t *device, const char *ops,
                                     moira_conformance_result_t **results, int *count);

#endif

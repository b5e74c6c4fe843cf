/* The grouped SwiGLU expert FFN over quantised panels (MXFP4 or INT8, quant_panels.h): the same
 * two stages as moe_grouped.h, with every activation row quantised to int8 per block of 32 once
 * (x per token, h per row) and the int8 tiles doing the products. Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_MOE_GROUPED_QUANT_H
#define MOIRA_BACKENDS_CPU_MOE_GROUPED_QUANT_H

#include "backends/cpu/packed_weights.h"
#include "backends/cpu/quant_panels.h"

/* One MOE_FFN launch whose three weights are packed quantised panels of one format. Pointers
 * borrowed. */
typedef struct moira_cpu_grouped_qffn {
    const float *x; /* [T, D] */
    int64_t tokens, hidden, inter, top_k;
    const moira_cpu_packed_t *w1, *w3, *w2; /* [E, I, D], [E, I, D], [E, D, I] */
    int n_experts;
    const int32_t *offsets;     /* [E + 1], already checked */
    const int32_t *sorted_rows; /* assignment index per sorted row, already checked */
    float *ys;                  /* [T * k, D]: rows offsets[0] .. offsets[E] - 1 are written */
    moira_cpu_qtile_fn tile;
} moira_cpu_grouped_qffn_t;

moira_status_t moira_cpu_grouped_qffn_run(moira_threadpool_t *pool,
                                          const moira_cpu_grouped_qffn_t *job);

#endif

/* The grouped SwiGLU expert FFN over packed weights: every expert's rows through the fused
 * gate/up projection and then the down projection, each stage one parallel loop over (expert,
 * block of weight panels) items for all experts at once. Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_MOE_GROUPED_H
#define MOIRA_BACKENDS_CPU_MOE_GROUPED_H

#include "backends/cpu/gemm.h"
#include "backends/cpu/packed_weights.h"

/* One MOE_FFN launch whose three weights are packed (all f32 or all bf16). Pointers borrowed. */
typedef struct moira_cpu_grouped_ffn {
    const float *x; /* [T, D] */
    int64_t tokens, hidden, inter, top_k;
    const moira_cpu_packed_t *w1, *w3, *w2; /* [E, I, D], [E, I, D], [E, D, I] */
    int n_experts;
    const int32_t *offsets;     /* [E + 1], already checked */
    const int32_t *sorted_rows; /* assignment index per sorted row, already checked */
    float *ys;                  /* [T * k, D]: rows offsets[0] .. offsets[E] - 1 are written */
    const moira_cpu_gemm_kernels_t *kernels;
} moira_cpu_grouped_ffn_t;

moira_status_t moira_cpu_grouped_ffn_run(moira_threadpool_t *pool,
                                         const moira_cpu_grouped_ffn_t *job);

/* A work item of either stage: one expert's panels (or gate/up pairs) [first, last). */
typedef struct moira_cpu_ffn_item {
    int32_t expert, first, last;
} moira_cpu_ffn_item_t;

/* Writes the items for every expert with rows: blocks of `per_item` out of `count`, expert by
 * expert; returns how many (at most n_experts * ceil(count / per_item)). */
int64_t moira_cpu_ffn_items(const moira_cpu_grouped_ffn_t *job, int64_t count, int64_t per_item,
                            moira_cpu_ffn_item_t *items);

#endif

/* Dense projections (LINEAR, and SWIGLU's fused gate/up and down projections) on quantised
 * panels (MXFP4 or INT8, quant_panels.h): the activations quantised per token and per block of 32
 * once, then the int8 tiles the expert FFN uses, so no dequantised weight matrix is ever made.
 * Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_QUANT_LINEAR_H
#define MOIRA_BACKENDS_CPU_QUANT_LINEAR_H

#include "backends/cpu/kernels_common.h"

/* Runs `job` (batch 1, from weight row 0 of matrix 0) whose `packed` (and `packed_up`, for
 * SWIGLU's fused gate/up) are quantised panels of one format. Fails with OUT_OF_MEMORY when the
 * quantised activations have no room, INTERNAL for a batched or offset job (MLA head slices,
 * which never carry quantised weights: ops take them only for LINEAR and SWIGLU). */
moira_status_t moira_cpu_quant_linear_run(moira_threadpool_t *pool,
                                          const moira_cpu_linear_job_t *job);

#endif

/* Dense linears on the GEMM engine (gemm.h): a moira_cpu_linear_job_t whose weight is packed
 * into panels runs as register tiles over those panels, from one decode token to a long prefill.
 * Private to backends/cpu/.
 *
 * Decode (a few tokens) streams every panel once, all the batch's tokens in one tile, so the
 * weight is read at the machine's bandwidth and bf16 weights are widened in registers. Prefill
 * runs tiles of 6 tokens against 4 panels, the panels' depth cut into chunks that stay in the
 * core's L2 while every token tile of the item passes over them. */
#ifndef MOIRA_BACKENDS_CPU_LINEAR_PANELS_H
#define MOIRA_BACKENDS_CPU_LINEAR_PANELS_H

#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels_common.h"
#include "backends/cpu/packed_weights.h"

/* Runs `job` (job->packed set, its panel rows aligned as kernels_common.h says) with the
 * launch's tile table (moira_cpu_gemm_kernels_for_launch). Fails only when the activations'
 * temporary copy cannot be allocated. */
moira_status_t moira_cpu_panel_linear_run(moira_threadpool_t *pool,
                                          const moira_cpu_linear_job_t *job);

/* The packed form a dense projection runs on (moira_cpu_packed_acquire_widened), or NULL in
 * *out_packed when there is none. Running out of memory while packing is not an error here: the
 * kernel then widens rows one at a time, slower but in the memory it has, and says so once on
 * the log. Release with moira_cpu_packed_release. */
void moira_cpu_dense_weight_acquire(moira_threadpool_t *pool, const moira_dtensor_t *weight,
                                    moira_cpu_packed_t **out_packed);

#endif

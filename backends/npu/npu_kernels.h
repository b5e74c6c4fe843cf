/* The npu backend's kernels and the machinery they share: the device's AI cores, block-parallel
 * launches over them (one host thread per running core), GM workspace, the grouped Cube GEMM and
 * the dispatch table. Private to backends/npu/.
 *
 * A kernel is a function run once per block, block b on AI core b, like an Ascend C kernel with
 * GetBlockIdx(); a device op may be several launches back to back (the cube phase of a SwiGLU,
 * its vector activation, then the down projection), whose modelled times add up. */
#ifndef MOIRA_BACKENDS_NPU_KERNELS_H
#define MOIRA_BACKENDS_NPU_KERNELS_H

#include <pthread.h>
#include <stdbool.h>

#include "backends/npu/acl.h"
#include "backends/npu/cost_model.h"
#include "backends/npu/davinci.h"
#include "ops/op.h"
#include "runtime/threadpool.h"

/* One device's compute side. */
typedef struct moira_npu_machine {
    moira_acl_device_t *acl; /* borrowed: workspace comes from its HBM */
    moira_npu_spec_t spec;
    moira_npu_core_t *cores;      /* owned, spec.ai_cores of them */
    moira_npu_cost_t *block_cost; /* owned scratch: per-core counters of the running launch */
    moira_threadpool_t *pool;     /* owned: host threads that run the cores */
    pthread_mutex_t mutex;        /* one launch at a time: streams share the cores */
} moira_npu_machine_t;

moira_status_t moira_npu_machine_create(moira_acl_device_t *acl, moira_npu_machine_t **out);
void moira_npu_machine_destroy(moira_npu_machine_t *machine);

/* Body of a kernel: runs on `core` as block `block` of `n_blocks`. Faults go to the core. */
typedef void (*moira_npu_block_fn)(moira_npu_core_t *core, int block, int n_blocks, void *ctx);

/* Runs `n_blocks` blocks (at most one per AI core; fewer when there is less work) and adds the
 * launch's modelled figures to `report`. The first core fault becomes the returned status. */
moira_status_t moira_npu_launch(moira_npu_machine_t *machine, const char *kernel, int n_blocks,
                                moira_npu_block_fn fn, void *ctx,
                                moira_npu_launch_report_t *report);

/* Blocks worth launching for `items` independent pieces of work. */
int moira_npu_blocks_for(const moira_npu_machine_t *machine, int64_t items);

/* GM workspace for a kernel's intermediates; free with moira_npu_workspace_free. */
moira_status_t moira_npu_workspace(moira_npu_machine_t *machine, size_t bytes, void **out);
void moira_npu_workspace_free(moira_npu_machine_t *machine, void *workspace);

/* GM address of a device tensor's first element, or NULL for an absent optional operand. */
void *moira_npu_gm(const moira_dtensor_t *tensor);

/* A weight or activation tensor as a Cube operand (matrix `matrix` of a packed [E, rows, cols]
 * weight), with fp8 block scales resolved. */
moira_npu_gm_matrix_t moira_npu_gm_matrix(const moira_dtensor_t *tensor, int64_t matrix);

/* An f32 matrix in GM as a Cube operand. */
moira_npu_gm_matrix_t moira_npu_gm_f32(const float *data, int64_t rows, int64_t cols,
                                       int64_t row_stride);

/* ---- Grouped Cube GEMM: C_g = A_g B_g for every group, in one launch ---- */

typedef struct moira_npu_gemm_group {
    moira_npu_gm_matrix_t a; /* [m, k] */
    moira_npu_gm_matrix_t b; /* [n, k] when b_is_nk (nn.Linear weights), else [k, n] */
    bool b_is_nk;
    float *c; /* [m, n] f32 in GM */
    int64_t c_stride;
    int64_t m, n, k;
} moira_npu_gemm_group_t;

/* Tiles every group into 128x128 output blocks spread over the cores; each streams 128-deep K
 * slices GM -> L1 -> L0A/L0B through ping-pong buffers into an L0C accumulator, then FIXPIPE
 * writes (or, with `accumulate`, atomically adds) the f32 block to C. */
moira_status_t moira_npu_gemm(moira_npu_machine_t *machine, const char *kernel,
                              const moira_npu_gemm_group_t *groups, int n_groups, bool accumulate,
                              moira_npu_launch_report_t *report);

/* y = beta * y for a [rows, cols] f32 matrix with `stride` (a vector kernel; beta 1 is a no-op
 * and beta 0 writes zeros). Used before an accumulating GEMM for a general beta. */
moira_status_t moira_npu_scale_rows(moira_npu_machine_t *machine, float *y, int64_t rows,
                                    int64_t cols, int64_t stride, float beta,
                                    moira_npu_launch_report_t *report);

/* h = silu(gate) * up over [rows, cols] f32 matrices in GM (a vector kernel); h may be gate. */
moira_status_t moira_npu_swiglu_activation(moira_npu_machine_t *machine, const float *gate,
                                           const float *up, float *h, int64_t rows, int64_t cols,
                                           moira_npu_launch_report_t *report);

/* ---- W8A8 (kernels_quant.c): activations quantised per token for the Cube's int8 mode ---- */

/* GM bytes moira_npu_int8_rows needs for `rows` rows of `cols`. */
size_t moira_npu_int8_rows_bytes(int64_t rows, int64_t cols);

/* Quantises the rows of the f32 operand `a` (through its row map) per token on the vector units,
 * scale = amax / 127 and q = rint(x / scale), into `workspace` (moira_npu_int8_rows_bytes,
 * borrowed), and describes them in *out as an INT8 Cube operand with per-row scales: the layout
 * of an INT8 weight. */
moira_status_t moira_npu_int8_rows(moira_npu_machine_t *machine, const moira_npu_gm_matrix_t *a,
                                   void *workspace, moira_npu_launch_report_t *report,
                                   moira_npu_gm_matrix_t *out);

/* ---- Kernels, one per op (launch validated) ---- */

typedef moira_status_t (*moira_npu_kernel_fn)(moira_npu_machine_t *machine,
                                              const moira_op_launch_t *launch,
                                              moira_npu_launch_report_t *report);

moira_status_t moira_npu_rmsnorm(moira_npu_machine_t *, const moira_op_launch_t *,
                                 moira_npu_launch_report_t *);
moira_status_t moira_npu_rope(moira_npu_machine_t *, const moira_op_launch_t *,
                              moira_npu_launch_report_t *);
moira_status_t moira_npu_linear(moira_npu_machine_t *, const moira_op_launch_t *,
                                moira_npu_launch_report_t *);
moira_status_t moira_npu_gate(moira_npu_machine_t *, const moira_op_launch_t *,
                              moira_npu_launch_report_t *);
moira_status_t moira_npu_moe_dispatch(moira_npu_machine_t *, const moira_op_launch_t *,
                                      moira_npu_launch_report_t *);
moira_status_t moira_npu_moe_ffn(moira_npu_machine_t *, const moira_op_launch_t *,
                                 moira_npu_launch_report_t *);
moira_status_t moira_npu_moe_combine(moira_npu_machine_t *, const moira_op_launch_t *,
                                     moira_npu_launch_report_t *);
moira_status_t moira_npu_swiglu(moira_npu_machine_t *, const moira_op_launch_t *,
                                moira_npu_launch_report_t *);
moira_status_t moira_npu_mla_attention(moira_npu_machine_t *, const moira_op_launch_t *,
                                       moira_npu_launch_report_t *);
moira_status_t moira_npu_mla_absorb_q(moira_npu_machine_t *, const moira_op_launch_t *,
                                      moira_npu_launch_report_t *);
moira_status_t moira_npu_mla_decode_attention(moira_npu_machine_t *, const moira_op_launch_t *,
                                              moira_npu_launch_report_t *);
moira_status_t moira_npu_mla_absorb_out(moira_npu_machine_t *, const moira_op_launch_t *,
                                        moira_npu_launch_report_t *);

/* Runs one validated launch to completion and fills `report` with its modelled figures. */
moira_status_t moira_npu_run_op(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                moira_npu_launch_report_t *report);

/* Whether a kernel exists for `op` with weights of `weight_dtype`. */
bool moira_npu_supports_op(int op, moira_dtype_t weight_dtype);

#endif

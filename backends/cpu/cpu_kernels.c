/* The cpu backend's dispatch table: one kernel per op kind (ops/op.h). */
#include "backends/cpu/cpu_kernels.h"

#include "backends/cpu/kernels_common.h"

static const moira_cpu_kernel_fn kernels[MOIRA_OP_COUNT] = {
    [MOIRA_OP_RMSNORM] = moira_cpu_rmsnorm,
    [MOIRA_OP_LINEAR] = moira_cpu_linear,
    [MOIRA_OP_ROPE] = moira_cpu_rope,
    [MOIRA_OP_GATE] = moira_cpu_gate,
    [MOIRA_OP_MOE_DISPATCH] = moira_cpu_moe_dispatch,
    [MOIRA_OP_MOE_FFN] = moira_cpu_moe_ffn,
    [MOIRA_OP_MOE_COMBINE] = moira_cpu_moe_combine,
    [MOIRA_OP_SWIGLU] = moira_cpu_swiglu,
    [MOIRA_OP_MLA_ATTENTION] = moira_cpu_mla_attention,
    [MOIRA_OP_MLA_ABSORB_Q] = moira_cpu_mla_absorb_q,
    [MOIRA_OP_MLA_DECODE_ATTENTION] = moira_cpu_mla_decode_attention,
    [MOIRA_OP_MLA_ABSORB_OUT] = moira_cpu_mla_absorb_out,
};

/* Runs a launch the device layer has checked against the op's contract (moira_queue_launch), so
 * the kernels may index memory with its shapes. */
moira_status_t moira_cpu_run_op(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    moira_cpu_kernel_fn kernel = kernels[launch->op];
    if (!kernel)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "cpu: no kernel for op %s",
                                 moira_op_name(launch->op));
    return kernel(launch, pool);
}

/* Every kernel widens weights of every float type row by row, so support depends only on the op
 * existing and the weight type being a float type. Decode attention has no weights: the dtype is
 * its latent cache's, f32 or bf16 (ops/op.h). */
bool moira_cpu_supports_op(int op, moira_dtype_t weight_dtype) {
    if (op < 0 || op >= MOIRA_OP_COUNT || !kernels[op]) return false;
    if (op == MOIRA_OP_MLA_DECODE_ATTENTION)
        return weight_dtype == MOIRA_DTYPE_F32 || weight_dtype == MOIRA_DTYPE_BF16;
    /* MXFP4 and INT8 weights: routed experts and the dense projections (int8 tiles where the
     * CPU has them, quant_panels.h; rows widened one at a time otherwise). */
    if (moira_dtype_is_quantized(weight_dtype))
        return op == MOIRA_OP_MOE_FFN || op == MOIRA_OP_LINEAR || op == MOIRA_OP_SWIGLU;
    return moira_dtype_is_float(weight_dtype);
}

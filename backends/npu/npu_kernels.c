/* The npu backend's dispatch table: one kernel per op kind (ops/op.h). */
#include "backends/npu/npu_kernels.h"

static const moira_npu_kernel_fn kernels[MOIRA_OP_COUNT] = {
    [MOIRA_OP_RMSNORM] = moira_npu_rmsnorm,
    [MOIRA_OP_LINEAR] = moira_npu_linear,
    [MOIRA_OP_ROPE] = moira_npu_rope,
    [MOIRA_OP_GATE] = moira_npu_gate,
    [MOIRA_OP_MOE_DISPATCH] = moira_npu_moe_dispatch,
    [MOIRA_OP_MOE_FFN] = moira_npu_moe_ffn,
    [MOIRA_OP_MOE_COMBINE] = moira_npu_moe_combine,
    [MOIRA_OP_SWIGLU] = moira_npu_swiglu,
    [MOIRA_OP_MLA_ATTENTION] = moira_npu_mla_attention,
    [MOIRA_OP_MLA_ABSORB_Q] = moira_npu_mla_absorb_q,
    [MOIRA_OP_MLA_DECODE_ATTENTION] = moira_npu_mla_decode_attention,
    [MOIRA_OP_MLA_ABSORB_OUT] = moira_npu_mla_absorb_out,
};

/* Runs a launch the device layer has checked against the op's contract (moira_queue_launch). */
moira_status_t moira_npu_run_op(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                moira_npu_launch_report_t *report) {
    *report = (moira_npu_launch_report_t){.bound = "idle"};
    moira_npu_kernel_fn kernel = kernels[launch->op];
    if (!kernel)
        return moira_acl_status(MOIRA_ACL_ERROR_API_NOT_SUPPORT, "npu: no kernel for op %s",
                                moira_op_name(launch->op));
    /* The kernels keep f32 latent caches only (ops/op.h): a bf16 one is refused, not written as
     * f32. */
    moira_dtype_t cache = moira_op_cache_dtype(launch);
    if (cache != MOIRA_DTYPE_F32)
        return moira_acl_status(MOIRA_ACL_ERROR_API_NOT_SUPPORT,
                                "npu: %s with a %s latent cache is not implemented (f32 caches "
                                "only)",
                                moira_op_name(launch->op), moira_dtype_name(cache));
    return kernel(machine, launch, report);
}

/* Every kernel reads weights of every float type (the ND2NZ load and the gate's casts widen
 * them), so support depends only on the op having a kernel. Decode attention has no weights: the
 * dtype is its latent cache's, and only f32 is kept. */
bool moira_npu_supports_op(int op, moira_dtype_t weight_dtype) {
    if (op < 0 || op >= MOIRA_OP_COUNT || !kernels[op]) return false;
    if (op == MOIRA_OP_MLA_DECODE_ATTENTION) return weight_dtype == MOIRA_DTYPE_F32;
    /* The grouped FFN and the dense projections expand MXFP4 weights to bf16 on their way into
     * L1 (davinci.h) and run INT8 ones in the Cube's int8 mode on activations quantised per
     * token (kernels_gemm.c, W8A8). */
    if (moira_dtype_is_quantized(weight_dtype))
        return op == MOIRA_OP_MOE_FFN || op == MOIRA_OP_LINEAR || op == MOIRA_OP_SWIGLU;
    return moira_dtype_is_float(weight_dtype);
}

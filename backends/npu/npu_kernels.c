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

/* Validates again right before the kernels index GM with the shapes, as the cpu backend does. */
moira_status_t moira_npu_run_op(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                moira_npu_launch_report_t *report) {
    *report = (moira_npu_launch_report_t){.bound = "idle"};
    MOIRA_RETURN_IF_ERROR(moira_op_validate(launch));
    moira_npu_kernel_fn kernel = kernels[launch->op];
    if (!kernel)
        return moira_acl_status(MOIRA_ACL_ERROR_API_NOT_SUPPORT, "npu: no kernel for op %s",
                                moira_op_name(launch->op));
    return kernel(machine, launch, report);
}

/* Every kernel reads weights of every float type (the ND2NZ load and the gate's casts widen
 * them), so support depends only on the op having a kernel. */
bool moira_npu_supports_op(int op, moira_dtype_t weight_dtype) {
    if (op < 0 || op >= MOIRA_OP_COUNT || !kernels[op]) return false;
    return moira_dtype_is_float(weight_dtype);
}

/* The device ops: the kernels every backend implements, their parameters and operand order.
 *
 * These are the building blocks; the model-level ops (ops/moe.h, ops/mla.h, ops/layer.h) are
 * composed from them on one device and queue. Activations are f32 on every device (a backend may
 * compute in a narrower type, within DESIGN.md §4's limits for it). Weight operands ("W") may be
 * F32, F16, BF16 or F8_E4M3 (with block scales, see moira_dtensor_t), and for MOE_FFN, LINEAR and
 * SWIGLU also MXFP4 or INT8 where the device says so (moira_device_supports); norm weights and
 * biases are always f32. A latent cache (the rows MLA_DECODE_ATTENTION reads as c and k_pe, and the
 * RMSNORM and ROPE outputs that write them) is F32 or BF16 ("cache" below): a bf16 cache halves the
 * bytes decode streams, and its limit is bf16's (DESIGN.md §4). A device keeps a bf16 cache where
 * moira_device_supports(device, MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_BF16) says so (for that
 * op, which has no weights, the dtype asked about is the cache's); it then also writes BF16 from
 * RMSNORM and ROPE. Operands marked (strided) may have a row_stride; all others are contiguous.
 * Optional operands are passed with a NULL buffer. Outputs may alias inputs only where noted.
 *
 * Shapes: T tokens, D hidden, E experts, k per token, I intermediate, H heads, S cache length. */
#ifndef MOIRA_OPS_OP_H
#define MOIRA_OPS_OP_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/device.h"

typedef enum moira_op_kind {
    /* y = x * rsqrt(mean(x^2) + eps) * w.
     * operands: x f32 [T,N] (strided), w f32 [N], y cache [T,N] (strided; may alias x). */
    MOIRA_OP_RMSNORM = 0,
    /* y = beta * y + x W^T.
     * operands: x f32 [T,K] (strided), W [N,K], y f32 [T,N] (strided; must not alias x). */
    MOIRA_OP_LINEAR,
    /* Rotates consecutive pairs (2i, 2i+1) of the rope slice of every head of every row by
     * pos * inv_freq[i], scaling cos and sin by cos_sin_scale (YaRN's mscale ratio).
     * operands: x f32 [T,C] (strided), positions i32 [T], y cache [T,C] (strided; may alias x).
     * Every column of x reaches y, the rope slices rotated. */
    MOIRA_OP_ROPE,
    /* The router of DESIGN.md §4. Dropped assignments (capacity factor) get index -1, weight 0.
     * operands: x f32 [T,D], W [E,D], bias f32 [E] (optional), topk_idx i32 [T,k],
     * topk_weight f32 [T,k], selection f32 [T,E] (optional output: biased, group-masked scores
     * with -inf for masked groups). */
    MOIRA_OP_GATE,
    /* Sorts the T*k assignments by expert (stable: by expert, then assignment index t*k+j),
     * skipping dropped ones (-1), like CANN's MoeInitRouting.
     * operands: topk_idx i32 [T,k], expert_offsets i32 [E+1] (offsets[e]..offsets[e+1] are expert
     * e's rows), sorted_rows i32 [T*k] (assignment index per sorted row; tail unused),
     * assignment_pos i32 [T*k] (sorted row of each assignment, -1 when dropped). */
    MOIRA_OP_MOE_DISPATCH,
    /* Grouped SwiGLU: for every sorted row p of expert e, ys[p] = FFN_e(x[sorted_rows[p] / k]),
     * FFN_e(v) = W2_e (silu(W1_e v) * (W3_e v)). One launch for all experts.
     * operands: x f32 [T,D], W1 [E,I,D], W3 [E,I,D], W2 [E,D,I], expert_offsets i32 [E+1],
     * sorted_rows i32 [T*k], ys f32 [T*k,D]. */
    MOIRA_OP_MOE_FFN,
    /* y[t] = beta * y[t] + sum_j w[t,j] * ys[assignment_pos[t,j]] (skipping -1), j in order.
     * operands: ys f32 [T*k,D], assignment_pos i32 [T,k], topk_weight f32 [T,k], y f32 [T,D]. */
    MOIRA_OP_MOE_COMBINE,
    /* y = beta * y + W2 (silu(W1 x) * (W3 x)): shared experts and dense MLP layers.
     * operands: x f32 [T,D], W1 [I,D], W3 [I,D], W2 [D,I], y f32 [T,D] (must not alias x). */
    MOIRA_OP_SWIGLU,
    /* Naive (prefill) MLA attention, causal on positions (key s visible when pos[s] <= pos[t]).
     * operands: q f32 [T, H*(nope+rope)] (roped), kv f32 [T, H*(nope+v)],
     * k_pe f32 [T, rope] (strided, roped, shared by heads), positions i32 [T], out f32 [T, H*v]. */
    MOIRA_OP_MLA_ATTENTION,
    /* Folds kv_b_proj's k part into the query: q_lat[t,h] = W_UK[h]^T q_nope[t,h], where W_UK[h]
     * is rows h*(nope+v) .. h*(nope+v)+nope-1 of kv_b_proj.
     * operands: q f32 [T, H*(nope+rope)], W_kv_b [H*(nope+v), L], q_lat f32 [T, H*L]. */
    MOIRA_OP_MLA_ABSORB_Q,
    /* Absorbed attention over the latent cache: score[s] = (q_lat[t,h] . c[s] + q_pe[t,h] .
     * k_pe[s]) * scale for s <= pos[t]; o_lat[t,h] = sum_s softmax(score)[s] c[s].
     * operands: q_lat f32 [T, H*L], q f32 [T, H*(nope+rope)] (its roped pe part is read),
     * c cache [S, L], k_pe cache [S, rope] (c's dtype), positions i32 [T],
     * o_lat f32 [T, H*L]. */
    MOIRA_OP_MLA_DECODE_ATTENTION,
    /* Applies kv_b_proj's v part to latent outputs: out[t,h] = W_UV[h] o_lat[t,h], where W_UV[h]
     * is rows h*(nope+v)+nope .. (h+1)*(nope+v)-1 of kv_b_proj.
     * operands: o_lat f32 [T, H*L], W_kv_b [H*(nope+v), L], out f32 [T, H*v]. */
    MOIRA_OP_MLA_ABSORB_OUT,
    MOIRA_OP_COUNT,
} moira_op_kind_t;

/* Static name ("rmsnorm", "linear", ...). */
const char *moira_op_name(int op);

/* Whether operand `operand` of op `op` is one the op writes. */
bool moira_op_operand_is_output(int op, int operand);

typedef struct moira_rmsnorm_params {
    float eps;
} moira_rmsnorm_params_t;

typedef struct moira_linear_params {
    float beta; /* 0: overwrite y; 1: accumulate into y */
} moira_linear_params_t;

#define MOIRA_ROPE_MAX_PAIRS 64

/* The largest token position every backend computes exactly: devices form RoPE angles and causal
 * masks in f32, whose integers are exact up to 2^24. Beyond it backends would silently disagree
 * (NMSE 0.08-0.5 at 1e8), so inputs are refused there. */
#define MOIRA_MAX_POSITION ((1 << 24) - 1)

typedef struct moira_rope_params {
    int32_t n_heads;
    int32_t head_stride; /* elements between heads within a row */
    int32_t rope_offset; /* first rotated element within a head */
    int32_t rope_dim;    /* even; rope_dim / 2 pairs */
    float cos_sin_scale;
    double inv_freq[MOIRA_ROPE_MAX_PAIRS];
} moira_rope_params_t;

typedef enum moira_scoring {
    MOIRA_SCORING_SOFTMAX = 0,
    MOIRA_SCORING_SIGMOID = 1,
} moira_scoring_t;

typedef struct moira_gate_params {
    int32_t n_experts;
    int32_t top_k;
    int32_t n_group; /* 1 = no groups */
    int32_t topk_group;
    int32_t scoring; /* moira_scoring_t */
    int32_t norm_topk_prob;
    float routed_scaling_factor;
    float capacity_factor; /* 0 = unlimited */
} moira_gate_params_t;

typedef struct moira_moe_dispatch_params {
    int32_t n_experts;
} moira_moe_dispatch_params_t;

typedef struct moira_moe_ffn_params {
    int32_t top_k;
} moira_moe_ffn_params_t;

typedef struct moira_moe_combine_params {
    float beta;
} moira_moe_combine_params_t;

typedef struct moira_swiglu_params {
    float beta;
} moira_swiglu_params_t;

typedef struct moira_mla_params {
    int32_t n_heads;
    int32_t nope_dim;
    int32_t rope_dim;
    int32_t v_dim;
    int32_t kv_lora_rank;
    int32_t cache_len; /* S: valid rows of the latent cache (decode attention) */
    float scale;       /* softmax scale, YaRN's mscale^2 included */
} moira_mla_params_t;

/* Capacity per expert for `tokens` tokens: ceil(c * T * k / E), or INT32_MAX when c == 0. The one
 * definition every backend and the fp64 reference use, with c as the devices see it (an f32). */
int32_t moira_capacity_limit(float capacity_factor, int64_t tokens, int64_t top_k,
                             int64_t n_experts);

/* moira_capacity_limit with a gate's parameters. */
int32_t moira_gate_capacity(const moira_gate_params_t *params, int64_t tokens);

/* Submits op `op` with `params` (copied) over `n` operands (copied) to `queue`: the short form
 * of filling a moira_op_launch_t for moira_queue_launch. */
moira_status_t moira_launch_op(moira_queue_t *queue, int op, const void *params, size_t params_size,
                               int n, const moira_dtensor_t *operands);

/* The dtype of a launch's cache operands (RMSNORM and ROPE's y, MLA_DECODE_ATTENTION's c and
 * k_pe), F32 for ops without one: what a backend that keeps only f32 caches refuses. The launch
 * must have passed moira_op_validate. */
moira_dtype_t moira_op_cache_dtype(const moira_op_launch_t *launch);

/* Checks a launch's operand count, dtypes and shapes against this header's contract, so that
 * every backend can trust what it receives. Returns INVALID_ARGUMENT naming the op and operand. */
moira_status_t moira_op_validate(const moira_op_launch_t *launch);

#endif

#include "ops/conformance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/device_layer.h"
#include "ops/random_weights.h"
#include "ops/reference.h"
#include "runtime/log.h"
#include "runtime/weight_format.h"

const char *const moira_conformance_ops[] = {"gate",  "moe",          "mla", "mla_decode",
                                             "layer", "layer_decode", NULL};

/* Model shapes: two real DeepSeek families scaled down (every feature of each kept: groups, bias,
 * q_lora, YaRN; softmax without groups) and one of odd sizes with a capacity factor and a dense
 * first layer. Parsed by the real config parser, so they are validated like a user's file. */
typedef struct shape {
    const char *name;
    const char *yaml;
} shape_t;

static const shape_t shapes[] = {
    {"v3-scaled",
     "hidden_size: 64\nmoe_intermediate_size: 32\nintermediate_size: 96\nn_routed_experts: 32\n"
     "n_shared_experts: 1\nnum_experts_per_tok: 8\nn_group: 8\ntopk_group: 4\n"
     "scoring_func: sigmoid\nnorm_topk_prob: true\nrouted_scaling_factor: 2.5\n"
     "num_attention_heads: 4\nq_lora_rank: 48\nkv_lora_rank: 32\nqk_nope_head_dim: 16\n"
     "qk_rope_head_dim: 8\nv_head_dim: 16\nrope_theta: 10000\nnum_hidden_layers: 2\n"
     "first_k_dense_replace: 0\nrope_scaling: {type: yarn, factor: 40, "
     "original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1.0, "
     "mscale_all_dim: 1.0}\n"},
    {"v2lite-scaled",
     "hidden_size: 64\nmoe_intermediate_size: 32\nintermediate_size: 96\nn_routed_experts: 16\n"
     "n_shared_experts: 2\nnum_experts_per_tok: 6\nscoring_func: softmax\n"
     "norm_topk_prob: false\nnum_attention_heads: 4\nq_lora_rank: null\nkv_lora_rank: 32\n"
     "qk_nope_head_dim: 16\nqk_rope_head_dim: 8\nv_head_dim: 16\nnum_hidden_layers: 2\n"
     "first_k_dense_replace: 0\n"},
    {"odd",
     "hidden_size: 72\nmoe_intermediate_size: 40\nintermediate_size: 88\nn_routed_experts: 12\n"
     "n_shared_experts: 1\nnum_experts_per_tok: 3\nn_group: 3\ntopk_group: 2\n"
     "scoring_func: softmax\nnorm_topk_prob: true\nrouted_scaling_factor: 1.5\n"
     "capacity_factor: 1.25\nnum_attention_heads: 3\nq_lora_rank: 24\nkv_lora_rank: 20\n"
     "qk_nope_head_dim: 12\nqk_rope_head_dim: 6\nv_head_dim: 10\nnum_hidden_layers: 2\n"
     "first_k_dense_replace: 1\n"},
};

static const int64_t token_counts[] = {1, 7, 40};

#define MAX_DTYPES 5

/* Which weight dtypes each op is checked with: every op in f32; the weight-heavy ones also in the
 * narrow types checkpoints ship, and quantised (MXFP4, INT8) as `moira quantize` writes them: the
 * experts and the dense projections, the rest of the layer f32 (quantize_weights). */
static int dtypes_for(const char *op, moira_dtype_t out[MAX_DTYPES]) {
    out[0] = MOIRA_DTYPE_F32;
    if (!strcmp(op, "moe") || !strcmp(op, "layer")) {
        out[1] = MOIRA_DTYPE_BF16;
        out[2] = MOIRA_DTYPE_F8_E4M3;
        out[3] = MOIRA_DTYPE_MXFP4;
        out[4] = MOIRA_DTYPE_INT8;
        return 5;
    }
    return 1;
}

static bool op_selected(const char *op, const char *list) {
    if (!list) return true;
    size_t n = strlen(op);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && !strncmp(p, op, n)) return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* Index sets must match per token, except where the k-th and (k+1)-th selection scores are closer
 * than the device's precision (then either choice is right); weights are compared by NMSE. */
static void compare_gate(const moira_tensor_t *got_idx, const moira_tensor_t *got_w,
                         const moira_tensor_t *ref_idx, const moira_tensor_t *ref_w,
                         const moira_tensor_t *selection, moira_conformance_result_t *r) {
    int64_t t = ref_idx->shape[0], k = ref_idx->shape[1], e = selection->shape[1];
    const int32_t *gi = got_idx->data, *ri = ref_idx->data;
    const float *sel = selection->data;
    int differing = 0;
    for (int64_t row = 0; row < t; row++) {
        bool same = true;
        for (int64_t j = 0; j < k && same; j++) {
            bool found = false;
            for (int64_t m = 0; m < k; m++)
                found |= gi[row * k + j] == ri[row * k + m];
            same = found;
        }
        if (same) continue;
        float kth = INFINITY, next = -INFINITY;
        for (int64_t c = 0; c < e; c++) {
            bool chosen = false;
            for (int64_t m = 0; m < k; m++)
                chosen |= ri[row * k + m] == c;
            float s = sel[row * e + c];
            if (chosen && s < kth) kth = s;
            if (!chosen && s > next) next = s;
        }
        if (!(fabsf(kth - next) <= sqrtf((float)r->limit) * fabsf(kth))) differing++;
    }
    double num = 0, den = 0;
    const float *gw = got_w->data, *rw = ref_w->data;
    for (int64_t i = 0; i < t * k; i++) {
        double d = (double)gw[i] - rw[i];
        num += d * d;
        den += (double)rw[i] * rw[i];
    }
    r->nmse = den > 0 ? num / den : num;
    r->passed = differing == 0 && r->nmse <= r->limit && isfinite(r->nmse);
    if (differing)
        snprintf(r->detail, sizeof(r->detail), "%d tokens chose other experts", differing);
}

static double nmse(const float *got, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(got[i]) != isfinite(ref[i])) return INFINITY;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

/* The host side of one case: weights, inputs and the reference answer. */
typedef struct host_case {
    moira_model_config_t config;
    moira_random_layer_t layer;
    int64_t layer_index;
    moira_tensor_t x, positions, ref, ref_idx, ref_weight, selection;
    moira_tensor_t *quantized; /* owned: each quantised matrix, then its scales */
    int64_t n_quantized;
} host_case_t;

/* The matrix slots `moira quantize` quantises (docs/quantize.md): the routed experts, the shared
 * experts or dense MLP and the attention projections other than kv_b_proj (which the absorbed
 * decode reads by head slices). The router gate, norms, embeddings and lm_head stay as they are.
 * Returns how many it wrote to `slots` (room for 3E + 8). */
static int64_t quantized_slots(moira_layer_weights_t *w, const moira_tensor_t ***slots) {
    int64_t n = 0;
    moira_mla_weights_t *mla = &w->mla;
    const moira_tensor_t **projections[] = {&mla->q_proj, &mla->q_a_proj, &mla->q_b_proj,
                                            &mla->kv_a_proj_with_mqa, &mla->o_proj};
    moira_mlp_weights_t *mlp = w->is_moe ? &w->moe.shared : &w->mlp;
    const moira_tensor_t **ffn[] = {&mlp->gate_proj, &mlp->up_proj, &mlp->down_proj};
    for (size_t i = 0; i < sizeof(projections) / sizeof(projections[0]); i++)
        if (*projections[i]) slots[n++] = projections[i];
    for (size_t i = 0; i < sizeof(ffn) / sizeof(ffn[0]); i++)
        if (*ffn[i]) slots[n++] = ffn[i];
    if (!w->is_moe) return n;
    moira_moe_weights_t *moe = &w->moe;
    for (int64_t e = 0; e < moe->n_experts; e++) {
        slots[n++] = &moe->expert_gate_proj[e];
        slots[n++] = &moe->expert_up_proj[e];
        slots[n++] = &moe->expert_down_proj[e];
    }
    return n;
}

/* Replaces the layer's matrices by quantised copies as `moira quantize` would (the layer keeps
 * pointers to them), so the reference reads the same dequantised values the device computes
 * with. A projection the format cannot store (MXFP4 rows not a multiple of 32) stays f32, as in
 * `moira quantize`; a routed expert that cannot is no case. */
static moira_status_t quantize_weights(host_case_t *h, moira_dtype_t dtype) {
    moira_layer_weights_t *w = &h->layer.weights;
    int64_t d = h->config.hidden_size, inter = h->config.moe_intermediate_size;
    if (w->is_moe &&
        (!moira_weight_shape_fits(dtype, inter, d) || !moira_weight_shape_fits(dtype, d, inter)))
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "%s needs rows of a multiple of 32",
                                 moira_dtype_name(dtype));
    int64_t room = 3 * (w->is_moe ? w->moe.n_experts : 0) + 8;
    const moira_tensor_t ***slots = calloc((size_t)room, sizeof(*slots));
    h->quantized = calloc((size_t)(2 * room), sizeof(*h->quantized));
    if (!slots || !h->quantized) {
        free(slots);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "conformance: out of memory");
    }
    int64_t n = quantized_slots(w, slots);
    moira_status_t status = MOIRA_OK_STATUS;
    for (int64_t i = 0; i < n && !status; i++) {
        const moira_tensor_t *t = *slots[i];
        if (!moira_weight_shape_fits(dtype, t->shape[0], t->shape[1])) continue;
        moira_tensor_t *q = &h->quantized[h->n_quantized], *scale = q + 1;
        status = moira_tensor_convert(t, dtype, q, scale);
        h->n_quantized += 2;
        q->scale = scale;
        if (!status) *slots[i] = q;
    }
    free(slots);
    return status;
}

static void host_case_release(host_case_t *h) {
    for (int64_t i = 0; i < h->n_quantized; i++)
        moira_tensor_release(&h->quantized[i]);
    free(h->quantized);
    moira_random_layer_release(&h->layer);
    moira_tensor_t *all[] = {&h->x,       &h->ref,        &h->positions,
                             &h->ref_idx, &h->ref_weight, &h->selection};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        moira_tensor_release(all[i]);
}

static moira_status_t host_case_make(const shape_t *shape, const char *op, moira_dtype_t dtype,
                                     int64_t tokens, uint64_t seed, host_case_t *h) {
    memset(h, 0, sizeof(*h));
    MOIRA_RETURN_IF_ERROR(
        moira_model_config_parse_string(shape->yaml, strlen(shape->yaml), shape->name, &h->config));
    const moira_model_config_t *c = &h->config;
    /* The layer op runs layer 0: dense for shapes with first_k_dense_replace, else MoE. */
    h->layer_index = !strncmp(op, "layer", 5) ? 0 : c->first_k_dense_replace;
    bool quantized = moira_dtype_is_quantized(dtype);
    MOIRA_RETURN_IF_ERROR(moira_random_layer_create(
        c, h->layer_index, seed, quantized ? MOIRA_DTYPE_F32 : dtype, &h->layer));
    if (quantized) MOIRA_RETURN_IF_ERROR(quantize_weights(h, dtype));
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(tokens, c->hidden_size, &h->x));
    moira_random_fill_uniform(h->x.data, (size_t)(tokens * c->hidden_size), seed + 17, -1.0f, 1.0f);
    int64_t shape1[1] = {tokens};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_I32, 1, shape1, &h->positions));
    for (int64_t t = 0; t < tokens; t++)
        ((int32_t *)h->positions.data)[t] = (int32_t)t;
    const moira_layer_weights_t *w = &h->layer.weights;
    if (!strcmp(op, "gate")) {
        int64_t tk[2] = {tokens, c->num_experts_per_tok};
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_I32, 2, tk, &h->ref_idx));
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_F32, 2, tk, &h->ref_weight));
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(tokens, c->n_routed_experts, &h->selection));
        return moira_ref_gate(c, &h->x, w->moe.gate, w->moe.e_score_correction_bias, &h->ref_idx,
                              &h->ref_weight, &h->selection);
    }
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(tokens, c->hidden_size, &h->ref));
    if (!strcmp(op, "moe")) return moira_ref_moe(c, &w->moe, &h->x, &h->ref);
    /* Decode ops are held to the naive form: both forms must agree (DESIGN.md §4). */
    if (!strncmp(op, "mla", 3)) return moira_ref_mla(c, &w->mla, &h->x, &h->positions, &h->ref);
    return moira_ref_layer(c, h->layer_index, w, &h->x, &h->positions, &h->ref, false);
}

/* The largest NMSE of one token that a near tie routed to another expert may have. */
#define ROUTED_APART_MAX 0.25

/* Layer outputs: the NMSE over all tokens; when that is over the limit, again without the tokens
 * that went wrong on their own (token NMSE over the limit) and whose reference routing is a near
 * tie by the window compare_gate allows (moira_ref_layer_near_ties): such a token was routed to the
 * other expert, as the gate comparison permits, and whose own NMSE is that of one expert swapped,
 * not of a broken layer (ROUTED_APART_MAX). The rest must then pass. */
static moira_status_t compare_layer(host_case_t *h, const float *got,
                                    moira_conformance_result_t *r) {
    int64_t t = h->x.shape[0], d = h->config.hidden_size;
    r->nmse = nmse(got, h->ref.data, t * d);
    r->passed = r->nmse <= r->limit;
    if (r->passed || !isfinite(r->nmse)) return MOIRA_OK_STATUS;
    bool *tie = calloc((size_t)t, sizeof(*tie));
    if (!tie) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "conformance: out of memory");
    moira_status_t status = moira_ref_layer_near_ties(&h->config, &h->layer.weights, &h->x,
                                                      &h->positions, sqrtf((float)r->limit), tie);
    /* A token routed apart changes one of its k experts' share of the MoE output, added to the
     * residual: its own NMSE stays far below 1, where a broken layer's (zeros, garbage) is 1 or
     * more. Without this bound a broken single-token layer passed as "NMSE 0 without 1 token". */
    for (int64_t i = 0; !status && i < t; i++)
        if (tie[i] && nmse(got + i * d, (const float *)h->ref.data + i * d, d) > ROUTED_APART_MAX)
            tie[i] = false;
    int excluded = 0;
    double rest =
        status ? 0 : moira_nmse_without_ties(got, h->ref.data, t, d, tie, r->limit, &excluded);
    if (!status && excluded) {
        r->passed = rest <= r->limit;
        snprintf(r->detail, sizeof(r->detail),
                 "NMSE %.3g without %d token(s) routed apart at a near tie", rest, excluded);
    }
    free(tie);
    return status;
}

/* Runs the op on the device and compares. Device errors become a failed row, not an abort. */
static moira_status_t device_case_run(moira_device_t *device, moira_queue_t *queue, const char *op,
                                      host_case_t *h, moira_conformance_result_t *r) {
    const moira_model_config_t *c = &h->config;
    int64_t t = h->x.shape[0], d = c->hidden_size, k = c->num_experts_per_tok;
    moira_device_layer_t layer;
    MOIRA_RETURN_IF_ERROR(moira_device_layer_upload(device, queue, c, &h->layer.weights,
                                                    MOIRA_WEIGHT_DTYPE_AS_STORED, &layer));
    moira_buffer_t *io = NULL;
    moira_mla_cache_t cache;
    memset(&cache, 0, sizeof(cache));
    moira_tensor_t got, got_w;
    memset(&got, 0, sizeof(got));
    memset(&got_w, 0, sizeof(got_w));
    size_t x_bytes = (size_t)(t * d) * 4, io_bytes = 3 * x_bytes + 1024;
    moira_status_t status = moira_buffer_alloc(device, io_bytes, -1, &io);
    size_t pos_off = (x_bytes + 255) / 256 * 256, out_off = pos_off + 256 + (size_t)t * 4;
    out_off = (out_off + 255) / 256 * 256;
    moira_dtensor_t dx = moira_dtensor_2d(io, 0, MOIRA_DTYPE_F32, t, d);
    moira_dtensor_t dpos = moira_dtensor_2d(io, pos_off, MOIRA_DTYPE_I32, t, 1);
    dpos.rank = 1;
    moira_dtensor_t dout = moira_dtensor_2d(io, out_off, MOIRA_DTYPE_F32, t, d);
    if (!status) status = moira_queue_write(queue, io, 0, h->x.data, x_bytes);
    if (!status) status = moira_queue_write(queue, io, pos_off, h->positions.data, (size_t)t * 4);
    if (!status) status = moira_tensor_alloc_f32(t, !strcmp(op, "gate") ? k : d, &got);
    if (!status && !strcmp(op, "gate")) {
        got.dtype = MOIRA_DTYPE_I32;
        status = moira_tensor_alloc_f32(t, k, &got_w);
        moira_dtensor_t idx = moira_dtensor_2d(io, out_off, MOIRA_DTYPE_I32, t, k);
        moira_dtensor_t w = moira_dtensor_2d(io, out_off + x_bytes, MOIRA_DTYPE_F32, t, k);
        if (!status) status = moira_gate_run(queue, c, &layer, &dx, &idx, &w, NULL);
        if (!status) status = moira_queue_read(queue, io, out_off, got.data, (size_t)(t * k) * 4);
        if (!status)
            status =
                moira_queue_read(queue, io, out_off + x_bytes, got_w.data, (size_t)(t * k) * 4);
    } else if (!status) {
        bool decode = strstr(op, "_decode") != NULL, whole = !strncmp(op, "layer", 5);
        if (decode) status = moira_mla_cache_create(device, c, t, r->cache_dtype, &cache);
        if (!status && decode)
            status = moira_decode_tokens(queue, c, h->layer_index, &layer, whole, &dx, &dpos,
                                         &cache, &dout);
        else if (!status && !strcmp(op, "moe"))
            status = moira_moe_run(queue, c, &layer, &dx, &dout, 0.0f);
        else if (!status && !strcmp(op, "mla"))
            status = moira_mla_run(queue, c, &layer, &dx, &dpos, NULL, &dout, 0.0f);
        else if (!status)
            status = moira_layer_run(queue, c, h->layer_index, &layer, &dx, &dpos, NULL, &dout);
        if (!status) status = moira_queue_read(queue, io, out_off, got.data, x_bytes);
    }
    if (!status) status = moira_queue_finish(queue);
    if (!status && !strcmp(op, "gate")) {
        compare_gate(&got, &got_w, &h->ref_idx, &h->ref_weight, &h->selection, r);
    } else if (!status && !strncmp(op, "layer", 5)) {
        status = compare_layer(h, got.data, r);
    } else if (!status) {
        r->nmse = nmse(got.data, h->ref.data, t * d);
        r->passed = r->nmse <= r->limit;
    }
    /* After a failure part way (a kernel that would not build), the writes of the host case and
     * the reads into `got` may still be queued: drain them before anything they touch is freed.
     * The first error is the one reported. */
    if (status) moira_status_free(moira_queue_finish(queue));
    moira_mla_cache_release(&cache);
    moira_buffer_free(io);
    moira_device_layer_release(&layer);
    moira_tensor_release(&got);
    moira_tensor_release(&got_w);
    return status;
}

static moira_status_t append_result(moira_conformance_result_t **results, int *count,
                                    const moira_conformance_result_t *r) {
    moira_conformance_result_t *grown = realloc(*results, sizeof(*grown) * (size_t)(*count + 1));
    if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "conformance: out of memory");
    grown[(*count)++] = *r;
    *results = grown;
    return MOIRA_OK_STATUS;
}

/* The device op kinds a model op needs, to ask the device before running: with the weights'
 * dtype, except decode attention, which has no weights and is asked about the cache's. */
static bool device_supports(const moira_device_t *device, const char *op, moira_dtype_t dtype,
                            moira_dtype_t cache_dtype) {
    static const int gate_ops[] = {MOIRA_OP_GATE, -1};
    static const int moe_ops[] = {MOIRA_OP_GATE,        MOIRA_OP_MOE_DISPATCH, MOIRA_OP_MOE_FFN,
                                  MOIRA_OP_MOE_COMBINE, MOIRA_OP_SWIGLU,       -1};
    static const int mla_ops[] = {MOIRA_OP_LINEAR,         MOIRA_OP_RMSNORM,
                                  MOIRA_OP_ROPE,           MOIRA_OP_MLA_ATTENTION,
                                  MOIRA_OP_MLA_ABSORB_Q,   MOIRA_OP_MLA_DECODE_ATTENTION,
                                  MOIRA_OP_MLA_ABSORB_OUT, -1};
    const int *lists[2] = {mla_ops, moe_ops};
    if (!strcmp(op, "gate"))
        lists[0] = gate_ops, lists[1] = NULL;
    else if (!strcmp(op, "moe"))
        lists[0] = moe_ops, lists[1] = NULL;
    else if (!strncmp(op, "mla", 3))
        lists[1] = NULL;
    for (int l = 0; l < 2 && lists[l]; l++)
        for (const int *k = lists[l]; *k >= 0; k++) {
            /* Quantised cases quantise the experts and the dense projections (LINEAR, SWIGLU);
             * the router and kv_b_proj's absorbed ops stay f32. */
            bool takes = *k == MOIRA_OP_MOE_FFN || *k == MOIRA_OP_LINEAR || *k == MOIRA_OP_SWIGLU;
            moira_dtype_t asked = *k == MOIRA_OP_MLA_DECODE_ATTENTION         ? cache_dtype
                                  : takes || !moira_dtype_is_quantized(dtype) ? dtype
                                                                              : MOIRA_DTYPE_F32;
            if (!moira_device_supports(device, *k, asked)) return false;
        }
    return true;
}

moira_status_t moira_conformance_run(moira_device_t *device, const char *ops,
                                     moira_conformance_result_t **results, int *count) {
    const moira_device_info_t *info = moira_device_info(device);
    moira_queue_t *queue = NULL;
    MOIRA_RETURN_IF_ERROR(moira_queue_create(device, &queue));
    moira_status_t status = MOIRA_OK_STATUS;
    bool reported_failure = false; /* the first failed case's whole message went to stderr */
    uint64_t seed = 1;
    for (int o = 0; moira_conformance_ops[o] && !status; o++) {
        const char *op = moira_conformance_ops[o];
        if (!op_selected(op, ops)) continue;
        moira_dtype_t dtypes[MAX_DTYPES];
        int n_dtypes = dtypes_for(op, dtypes);
        /* Decode ops run with each cache dtype; a bf16 cache is held to bf16's limit. */
        int n_caches = strstr(op, "_decode") ? 2 : 1;
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]) && !status; s++) {
            for (int dc = 0; dc < n_dtypes * n_caches && !status; dc++) {
                int di = dc / n_caches, ci = dc % n_caches;
                for (size_t ti = 0; ti < sizeof(token_counts) / sizeof(token_counts[0]) && !status;
                     ti++) {
                    moira_conformance_result_t r;
                    memset(&r, 0, sizeof(r));
                    snprintf(r.device, sizeof(r.device), "%s", info->name);
                    snprintf(r.op, sizeof(r.op), "%s", op);
                    snprintf(r.shape, sizeof(r.shape), "%s", shapes[s].name);
                    r.weight_dtype = dtypes[di];
                    r.cache_dtype = ci ? MOIRA_DTYPE_BF16 : MOIRA_DTYPE_F32;
                    r.tokens = token_counts[ti];
                    r.limit = moira_precision_nmse_limit(info->compute_precision);
                    if (ci) {
                        double bf16 = moira_precision_nmse_limit(MOIRA_DTYPE_BF16);
                        r.limit = r.limit > bf16 ? r.limit : bf16;
                    }
                    /* Quantised weights may meet activations quantised per token (DESIGN.md §4:
                     * W8A8, W4A8): the limit of what the device computes them in. */
                    if (moira_dtype_is_quantized(dtypes[di])) {
                        double q = moira_precision_nmse_limit(info->quantized_precision);
                        r.limit = r.limit > q ? r.limit : q;
                    }
                    r.skipped = !device_supports(device, op, dtypes[di], r.cache_dtype);
                    if (!r.skipped) {
                        host_case_t h;
                        status = host_case_make(&shapes[s], op, dtypes[di], r.tokens, seed++, &h);
                        if (moira_status_code(status) == MOIRA_CODE_UNSUPPORTED) {
                            /* A shape the format cannot store (MXFP4 rows of 72): no case. */
                            r.skipped = true;
                            snprintf(r.detail, sizeof(r.detail), "%s",
                                     moira_status_message(status));
                            moira_status_free(status);
                            status = MOIRA_OK_STATUS;
                            host_case_release(&h);
                            if (!status) status = append_result(results, count, &r);
                            continue;
                        }
                        moira_status_t run =
                            status ? MOIRA_OK_STATUS : device_case_run(device, queue, op, &h, &r);
                        if (run) {
                            r.passed = false;
                            r.nmse = NAN;
                            snprintf(r.detail, sizeof(r.detail), "%s", moira_status_message(run));
                            /* The table cell is short; a driver's build log is not. */
                            if (!reported_failure) MOIRA_LOG_E("%s", moira_status_message(run));
                            reported_failure = true;
                            moira_status_free(run);
                        }
                        host_case_release(&h);
                    }
                    if (!status) status = append_result(results, count, &r);
                }
            }
        }
    }
    moira_queue_destroy(queue);
    return status;
}

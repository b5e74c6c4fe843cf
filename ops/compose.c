/* The model-level ops composed from device ops on one queue (see ops/device_layer.h). */
#include <math.h>
#include <string.h>

#include "ops/device_experts.h"
#include "ops/device_layer.h"
#include "ops/rope.h"

/* Temporaries of one composed op, carved from a single device buffer. Windows are 256-byte
 * aligned, enough for every backend's vector loads. */
typedef struct scratch {
    moira_buffer_t *buffer;
    size_t used;
    size_t capacity;
} scratch_t;

#define SCRATCH_ALIGN 256

static size_t scratch_round(size_t bytes) {
    return (bytes + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN;
}

static moira_status_t scratch_open(moira_device_t *device, size_t capacity, scratch_t *out) {
    memset(out, 0, sizeof(*out));
    out->capacity = capacity;
    return moira_buffer_alloc(device, capacity, -1, &out->buffer);
}

/* A [rows, cols] window; the caller sized the scratch for every take (see *_scratch_bytes). */
static moira_dtensor_t scratch_take(scratch_t *scratch, moira_dtype_t dtype, int64_t rows,
                                    int64_t cols) {
    moira_dtensor_t t = moira_dtensor_2d(scratch->buffer, scratch->used, dtype, rows, cols);
    scratch->used += scratch_round((size_t)(rows * cols) * moira_dtype_size(dtype));
    return t;
}

static size_t tensor_bytes(int64_t rows, int64_t cols) {
    return scratch_round((size_t)(rows * cols) * 4);
}

moira_dtensor_t moira_dtensor_2d(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype,
                                 int64_t rows, int64_t cols) {
    moira_dtensor_t t = {.buffer = buffer, .offset = offset, .dtype = dtype, .rank = 2};
    t.shape[0] = rows;
    t.shape[1] = cols;
    return t;
}

/* A column window [col, col + cols) of a contiguous 2-D tensor, as a strided view. */
static moira_dtensor_t column_slice(const moira_dtensor_t *t, int64_t col, int64_t cols) {
    moira_dtensor_t s = *t;
    s.offset += (size_t)col * moira_dtype_size(t->dtype);
    s.shape[1] = cols;
    s.row_stride = moira_dtensor_row_stride(t);
    return s;
}

/* Rows [row, row + rows) of a 2-D tensor. */
static moira_dtensor_t row_slice(const moira_dtensor_t *t, int64_t row, int64_t rows) {
    moira_dtensor_t s = *t;
    s.offset += (size_t)(row * moira_dtensor_row_stride(t)) * moira_dtype_size(t->dtype);
    s.shape[0] = rows;
    return s;
}

static const moira_dtensor_t no_operand;

static moira_status_t rmsnorm(moira_queue_t *queue, const moira_model_config_t *config,
                              moira_dtensor_t x, moira_dtensor_t w, moira_dtensor_t y) {
    moira_rmsnorm_params_t p = {.eps = (float)config->rms_norm_eps};
    moira_dtensor_t ops[] = {x, w, y};
    return moira_launch_op(queue, MOIRA_OP_RMSNORM, &p, sizeof(p), 3, ops);
}

static moira_status_t linear(moira_queue_t *queue, moira_dtensor_t x, moira_dtensor_t w,
                             moira_dtensor_t y, float beta) {
    moira_linear_params_t p = {.beta = beta};
    moira_dtensor_t ops[] = {x, w, y};
    return moira_launch_op(queue, MOIRA_OP_LINEAR, &p, sizeof(p), 3, ops);
}

moira_status_t moira_swiglu_enqueue(moira_queue_t *queue, const moira_dtensor_t *x,
                                    const moira_dtensor_t *w1, const moira_dtensor_t *w3,
                                    const moira_dtensor_t *w2, const moira_dtensor_t *y,
                                    float beta) {
    moira_swiglu_params_t p = {.beta = beta};
    moira_dtensor_t ops[] = {*x, *w1, *w3, *w2, *y};
    return moira_launch_op(queue, MOIRA_OP_SWIGLU, &p, sizeof(p), 5, ops);
}

/* Waits for the queue, then frees the scratch whatever happened, keeping the first error. */
static moira_status_t finish(moira_queue_t *queue, scratch_t *scratch, moira_status_t status) {
    moira_status_t done = moira_queue_finish(queue);
    if (!status) {
        status = done;
    } else {
        moira_status_free(done);
    }
    moira_buffer_free(scratch->buffer);
    return status;
}

moira_gate_params_t moira_gate_params_from_config(const moira_model_config_t *config) {
    moira_gate_params_t p = {
        .n_experts = (int32_t)config->n_routed_experts,
        .top_k = (int32_t)config->num_experts_per_tok,
        .n_group = config->n_group > 0 ? (int32_t)config->n_group : 1,
        .topk_group = config->topk_group > 0 ? (int32_t)config->topk_group : 1,
        .scoring = config->scoring_func == MOIRA_SCORING_FUNC_SIGMOID ? MOIRA_SCORING_SIGMOID
                                                                      : MOIRA_SCORING_SOFTMAX,
        .norm_topk_prob = config->norm_topk_prob,
        .routed_scaling_factor = (float)config->routed_scaling_factor,
        .capacity_factor = (float)config->capacity_factor,
    };
    return p;
}

moira_status_t moira_gate_run(moira_queue_t *queue, const moira_model_config_t *config,
                              const moira_device_layer_t *layer, const moira_dtensor_t *x,
                              const moira_dtensor_t *topk_idx, const moira_dtensor_t *topk_weight,
                              const moira_dtensor_t *selection) {
    if (!layer->gate.buffer)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "gate: the layer has no router");
    moira_gate_params_t p = moira_gate_params_from_config(config);
    moira_dtensor_t ops[] = {*x,        layer->gate,  layer->gate_bias,
                             *topk_idx, *topk_weight, selection ? *selection : no_operand};
    MOIRA_RETURN_IF_ERROR(moira_launch_op(queue, MOIRA_OP_GATE, &p, sizeof(p), 6, ops));
    return moira_queue_finish(queue);
}

moira_status_t moira_moe_run(moira_queue_t *queue, const moira_model_config_t *config,
                             const moira_device_layer_t *layer, const moira_dtensor_t *x,
                             const moira_dtensor_t *y, float beta) {
    if (!layer->has_moe)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "moe: the layer has no MoE weights");
    int64_t t = x->shape[0], d = x->shape[1];
    int64_t k = config->num_experts_per_tok, e = config->n_routed_experts;
    size_t bytes = 2 * tensor_bytes(t, k) + moira_moe_workspace_bytes(t, k, e, d);
    scratch_t s;
    MOIRA_RETURN_IF_ERROR(scratch_open(layer->device, bytes, &s));
    moira_dtensor_t idx = scratch_take(&s, MOIRA_DTYPE_I32, t, k);
    moira_dtensor_t weights = scratch_take(&s, MOIRA_DTYPE_F32, t, k);
    moira_moe_workspace_t ws = moira_moe_workspace_at(s.buffer, s.used, t, k, e, d);
    moira_gate_params_t gate = moira_gate_params_from_config(config);
    moira_dtensor_t gate_ops[] = {*x, layer->gate, layer->gate_bias, idx, weights, no_operand};
    moira_status_t status = moira_launch_op(queue, MOIRA_OP_GATE, &gate, sizeof(gate), 6, gate_ops);
    if (!status)
        status = moira_moe_experts_enqueue(queue, &layer->experts_w1, &layer->experts_w3,
                                           &layer->experts_w2, x, &idx, &weights, &ws, y, beta);
    if (!status && layer->shared_w1.buffer)
        status = moira_swiglu_enqueue(queue, x, &layer->shared_w1, &layer->shared_w3,
                                      &layer->shared_w2, y, 1.0f);
    return finish(queue, &s, status);
}

/* The RoPE parameters for every head's rope slice of a [T, heads * head_stride] tensor. */
static moira_status_t rope_params(const moira_model_config_t *config, int32_t n_heads,
                                  int32_t head_stride, int32_t rope_offset,
                                  moira_rope_params_t *out) {
    memset(out, 0, sizeof(*out));
    out->n_heads = n_heads;
    out->head_stride = head_stride;
    out->rope_offset = rope_offset;
    out->rope_dim = (int32_t)config->qk_rope_head_dim;
    if (out->rope_dim / 2 > MOIRA_ROPE_MAX_PAIRS)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "qk_rope_head_dim %d exceeds %d",
                                 out->rope_dim, 2 * MOIRA_ROPE_MAX_PAIRS);
    double scale = 1.0;
    MOIRA_RETURN_IF_ERROR(moira_rope_inv_freq(config, out->inv_freq, &scale));
    out->cos_sin_scale = (float)scale;
    return MOIRA_OK_STATUS;
}

static moira_status_t rope(moira_queue_t *queue, const moira_rope_params_t *p, moira_dtensor_t x,
                           const moira_dtensor_t *positions, moira_dtensor_t y) {
    moira_dtensor_t ops[] = {x, *positions, y};
    return moira_launch_op(queue, MOIRA_OP_ROPE, p, sizeof(*p), 3, ops);
}

static moira_mla_params_t mla_params(const moira_model_config_t *config, int64_t cache_len) {
    moira_mla_params_t p = {
        .n_heads = (int32_t)config->num_attention_heads,
        .nope_dim = (int32_t)config->qk_nope_head_dim,
        .rope_dim = (int32_t)config->qk_rope_head_dim,
        .v_dim = (int32_t)config->v_head_dim,
        .kv_lora_rank = (int32_t)config->kv_lora_rank,
        .cache_len = (int32_t)cache_len,
        .scale = (float)moira_model_config_attention_scale(config),
    };
    return p;
}

/* q = q_b(rmsnorm(q_a x)) or q_proj x, then RoPE on every head's pe slice. */
static moira_status_t mla_query(moira_queue_t *queue, const moira_model_config_t *config,
                                const moira_device_layer_t *layer, const moira_dtensor_t *x,
                                const moira_dtensor_t *positions, scratch_t *s,
                                moira_dtensor_t *out_q) {
    int64_t t = x->shape[0], h = config->num_attention_heads;
    int64_t qk = config->qk_nope_head_dim + config->qk_rope_head_dim;
    *out_q = scratch_take(s, MOIRA_DTYPE_F32, t, h * qk);
    if (config->q_lora_rank > 0) {
        moira_dtensor_t qa = scratch_take(s, MOIRA_DTYPE_F32, t, config->q_lora_rank);
        MOIRA_RETURN_IF_ERROR(linear(queue, *x, layer->q_a_proj, qa, 0.0f));
        MOIRA_RETURN_IF_ERROR(rmsnorm(queue, config, qa, layer->q_a_norm, qa));
        MOIRA_RETURN_IF_ERROR(linear(queue, qa, layer->q_b_proj, *out_q, 0.0f));
    } else {
        MOIRA_RETURN_IF_ERROR(linear(queue, *x, layer->q_proj, *out_q, 0.0f));
    }
    moira_rope_params_t rp;
    MOIRA_RETURN_IF_ERROR(
        rope_params(config, (int32_t)h, (int32_t)qk, (int32_t)config->qk_nope_head_dim, &rp));
    return rope(queue, &rp, *out_q, positions, *out_q);
}

static size_t mla_scratch_bytes(const moira_model_config_t *config, int64_t t) {
    int64_t h = config->num_attention_heads, l = config->kv_lora_rank;
    int64_t qk = config->qk_nope_head_dim + config->qk_rope_head_dim;
    int64_t kv = config->qk_nope_head_dim + config->v_head_dim;
    return tensor_bytes(t, h * qk) + tensor_bytes(t, config->q_lora_rank) +
           tensor_bytes(t, l + config->qk_rope_head_dim) + tensor_bytes(t, h * kv) +
           2 * tensor_bytes(t, h * l) + tensor_bytes(t, h * config->v_head_dim) +
           tensor_bytes(t, l);
}

/* Naive form: expand c through kv_b_proj into per-head k_nope and v, attend over these tokens. */
static moira_status_t mla_prefill(moira_queue_t *queue, const moira_model_config_t *config,
                                  const moira_device_layer_t *layer,
                                  const moira_dtensor_t *positions, moira_dtensor_t q,
                                  moira_dtensor_t kv_a, scratch_t *s, moira_dtensor_t attn) {
    int64_t t = q.shape[0], l = config->kv_lora_rank, r = config->qk_rope_head_dim;
    int64_t h = config->num_attention_heads;
    moira_dtensor_t c = scratch_take(s, MOIRA_DTYPE_F32, t, l);
    MOIRA_RETURN_IF_ERROR(rmsnorm(queue, config, column_slice(&kv_a, 0, l), layer->kv_a_norm, c));
    moira_rope_params_t rp;
    MOIRA_RETURN_IF_ERROR(rope_params(config, 1, (int32_t)r, 0, &rp));
    moira_dtensor_t k_pe = column_slice(&kv_a, l, r);
    MOIRA_RETURN_IF_ERROR(rope(queue, &rp, k_pe, positions, k_pe));
    moira_dtensor_t kv =
        scratch_take(s, MOIRA_DTYPE_F32, t, h * (config->qk_nope_head_dim + config->v_head_dim));
    MOIRA_RETURN_IF_ERROR(linear(queue, c, layer->kv_b_proj, kv, 0.0f));
    moira_mla_params_t p = mla_params(config, t);
    moira_dtensor_t ops[] = {q, kv, k_pe, *positions, attn};
    return moira_launch_op(queue, MOIRA_OP_MLA_ATTENTION, &p, sizeof(p), 5, ops);
}

/* Absorbed form: append the tokens' c and roped k_pe to the cache, fold kv_b_proj into the query
 * and the output, attend over the whole latent cache. */
static moira_status_t mla_decode(moira_queue_t *queue, const moira_model_config_t *config,
                                 const moira_device_layer_t *layer,
                                 const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                                 moira_dtensor_t q, moira_dtensor_t kv_a, scratch_t *s,
                                 moira_dtensor_t attn) {
    int64_t t = q.shape[0], l = config->kv_lora_rank, r = config->qk_rope_head_dim;
    int64_t h = config->num_attention_heads;
    if (cache->length + t > cache->capacity)
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT,
            "mla: %lld tokens do not fit a latent cache of %lld with %lld used", (long long)t,
            (long long)cache->capacity, (long long)cache->length);
    moira_dtensor_t c_rows = row_slice(&cache->c, cache->length, t);
    moira_dtensor_t pe_rows = row_slice(&cache->k_pe, cache->length, t);
    MOIRA_RETURN_IF_ERROR(
        rmsnorm(queue, config, column_slice(&kv_a, 0, l), layer->kv_a_norm, c_rows));
    moira_rope_params_t rp;
    MOIRA_RETURN_IF_ERROR(rope_params(config, 1, (int32_t)r, 0, &rp));
    MOIRA_RETURN_IF_ERROR(rope(queue, &rp, column_slice(&kv_a, l, r), positions, pe_rows));
    int64_t len = cache->length + t;
    moira_mla_params_t p = mla_params(config, len);
    moira_dtensor_t q_lat = scratch_take(s, MOIRA_DTYPE_F32, t, h * l);
    moira_dtensor_t o_lat = scratch_take(s, MOIRA_DTYPE_F32, t, h * l);
    moira_dtensor_t absorb_q[] = {q, layer->kv_b_proj, q_lat};
    MOIRA_RETURN_IF_ERROR(
        moira_launch_op(queue, MOIRA_OP_MLA_ABSORB_Q, &p, sizeof(p), 3, absorb_q));
    moira_dtensor_t attend[] = {
        q_lat, q, row_slice(&cache->c, 0, len), row_slice(&cache->k_pe, 0, len), *positions, o_lat};
    MOIRA_RETURN_IF_ERROR(
        moira_launch_op(queue, MOIRA_OP_MLA_DECODE_ATTENTION, &p, sizeof(p), 6, attend));
    moira_dtensor_t absorb_out[] = {o_lat, layer->kv_b_proj, attn};
    MOIRA_RETURN_IF_ERROR(
        moira_launch_op(queue, MOIRA_OP_MLA_ABSORB_OUT, &p, sizeof(p), 3, absorb_out));
    cache->length = len;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_mla_run(moira_queue_t *queue, const moira_model_config_t *config,
                             const moira_device_layer_t *layer, const moira_dtensor_t *x,
                             const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                             const moira_dtensor_t *y, float beta) {
    if (!layer->has_mla)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "mla: the layer has no attention");
    int64_t t = x->shape[0], h = config->num_attention_heads;
    scratch_t s;
    MOIRA_RETURN_IF_ERROR(scratch_open(layer->device, mla_scratch_bytes(config, t), &s));
    moira_dtensor_t q;
    moira_status_t status = mla_query(queue, config, layer, x, positions, &s, &q);
    moira_dtensor_t kv_a =
        scratch_take(&s, MOIRA_DTYPE_F32, t, config->kv_lora_rank + config->qk_rope_head_dim);
    moira_dtensor_t attn = scratch_take(&s, MOIRA_DTYPE_F32, t, h * config->v_head_dim);
    if (!status) status = linear(queue, *x, layer->kv_a_proj, kv_a, 0.0f);
    if (!status && cache)
        status = mla_decode(queue, config, layer, positions, cache, q, kv_a, &s, attn);
    else if (!status)
        status = mla_prefill(queue, config, layer, positions, q, kv_a, &s, attn);
    if (!status) status = linear(queue, attn, layer->o_proj, *y, beta);
    return finish(queue, &s, status);
}

moira_status_t moira_layer_attention_run(moira_queue_t *queue, const moira_model_config_t *config,
                                         const moira_device_layer_t *layer,
                                         const moira_dtensor_t *x, const moira_dtensor_t *positions,
                                         moira_mla_cache_t *cache, const moira_dtensor_t *h,
                                         const moira_dtensor_t *normed) {
    if (!layer->has_norms)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "layer: the layer has no norms");
    size_t bytes = (size_t)(x->shape[0] * x->shape[1]) * sizeof(float);
    /* h = x + mla(rmsnorm(x)): the residual rides on beta = 1; `normed` holds rmsnorm(x) first. */
    moira_status_t status = rmsnorm(queue, config, *x, layer->input_norm, *normed);
    if (!status)
        status = moira_queue_copy(queue, x->buffer, x->offset, h->buffer, h->offset, bytes);
    if (!status) status = moira_mla_run(queue, config, layer, normed, positions, cache, h, 1.0f);
    if (!status) status = rmsnorm(queue, config, *h, layer->post_norm, *normed);
    moira_status_t done = moira_queue_finish(queue);
    if (status) {
        moira_status_free(done);
        return status;
    }
    return done;
}

moira_status_t moira_layer_run(moira_queue_t *queue, const moira_model_config_t *config,
                               int64_t layer_index, const moira_device_layer_t *layer,
                               const moira_dtensor_t *x, const moira_dtensor_t *positions,
                               moira_mla_cache_t *cache, const moira_dtensor_t *out) {
    if (!layer->has_norms)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "layer: the layer has no norms");
    int64_t t = x->shape[0], d = x->shape[1];
    scratch_t s;
    MOIRA_RETURN_IF_ERROR(scratch_open(layer->device, 2 * tensor_bytes(t, d), &s));
    moira_dtensor_t normed = scratch_take(&s, MOIRA_DTYPE_F32, t, d);
    moira_dtensor_t h = scratch_take(&s, MOIRA_DTYPE_F32, t, d);
    size_t bytes = (size_t)(t * d) * sizeof(float);
    /* out = h + mlp(rmsnorm(h)): the residual rides on beta = 1. */
    moira_status_t status =
        moira_layer_attention_run(queue, config, layer, x, positions, cache, &h, &normed);
    if (!status)
        status = moira_queue_copy(queue, h.buffer, h.offset, out->buffer, out->offset, bytes);
    if (!status && moira_model_config_is_moe_layer(config, layer_index))
        status = moira_moe_run(queue, config, layer, &normed, out, 1.0f);
    else if (!status)
        status = moira_swiglu_enqueue(queue, &normed, &layer->mlp_w1, &layer->mlp_w3,
                                      &layer->mlp_w2, out, 1.0f);
    return finish(queue, &s, status);
}

moira_status_t moira_decode_tokens(moira_queue_t *queue, const moira_model_config_t *config,
                                   int64_t layer_index, const moira_device_layer_t *layer,
                                   bool whole_layer, const moira_dtensor_t *x,
                                   const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                                   const moira_dtensor_t *out) {
    for (int64_t i = 0; i < x->shape[0]; i++) {
        moira_dtensor_t xi = row_slice(x, i, 1), yi = row_slice(out, i, 1);
        moira_dtensor_t pi = *positions;
        pi.offset += (size_t)i * sizeof(int32_t);
        pi.shape[0] = 1;
        if (whole_layer)
            MOIRA_RETURN_IF_ERROR(
                moira_layer_run(queue, config, layer_index, layer, &xi, &pi, cache, &yi));
        else
            MOIRA_RETURN_IF_ERROR(moira_mla_run(queue, config, layer, &xi, &pi, cache, &yi, 0.0f));
    }
    return MOIRA_OK_STATUS;
}

/* Uploading one layer's host weights into a single device buffer (ops/device_layer.h). */
#include <stdlib.h>
#include <string.h>

#include "ops/device_layer.h"

#define UPLOAD_ALIGN 256

/* Lays tensors out in a staging image of the device buffer. The same code runs twice: once with
 * no staging memory to measure, once to fill, so layout and copy can never disagree. */
typedef struct upload {
    unsigned char *staging; /* NULL while measuring */
    size_t used;
    int weight_dtype; /* MOIRA_WEIGHT_DTYPE_AS_STORED or a moira_dtype_t */
} upload_t;

static size_t upload_reserve(upload_t *u, size_t bytes) {
    size_t offset = (u->used + UPLOAD_ALIGN - 1) / UPLOAD_ALIGN * UPLOAD_ALIGN;
    u->used = offset + bytes;
    return offset;
}

static int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

/* Writes one host matrix as `dtype` at `dst` (and its fp8 scales at `scales`). */
static moira_status_t fill_matrix(const moira_tensor_t *src, moira_dtype_t dtype, void *dst,
                                  float *scales) {
    int64_t rows = src->shape[0], cols = src->shape[1];
    size_t n_scales = (size_t)(ceil_div(rows, MOIRA_FP8_BLOCK) * ceil_div(cols, MOIRA_FP8_BLOCK));
    if (src->dtype == dtype) {
        memcpy(dst, src->data, moira_tensor_nbytes(src));
        if (dtype == MOIRA_DTYPE_F8_E4M3) {
            for (size_t i = 0; i < n_scales; i++)
                scales[i] = src->scale ? ((const float *)src->scale->data)[i] : 1.0f;
        }
        return MOIRA_OK_STATUS;
    }
    moira_tensor_t converted, scale;
    MOIRA_RETURN_IF_ERROR(moira_tensor_convert(src, dtype, &converted, &scale));
    memcpy(dst, converted.data, moira_tensor_nbytes(&converted));
    if (dtype == MOIRA_DTYPE_F8_E4M3) memcpy(scales, scale.data, n_scales * sizeof(float));
    moira_tensor_release(&converted);
    moira_tensor_release(&scale);
    return MOIRA_OK_STATUS;
}

/* Places `count` matrices of one shape as one [count, N, K] tensor (or [N, K] when count is 1
 * and `stack` is false). fp8 block scales follow the matrices. */
static moira_status_t place_matrices(upload_t *u, const moira_tensor_t *const *mats, int64_t count,
                                     bool stack, moira_dtensor_t *out) {
    const moira_tensor_t *first = mats[0];
    moira_dtype_t dtype = u->weight_dtype < 0 ? first->dtype : (moira_dtype_t)u->weight_dtype;
    if (!moira_dtype_is_float(dtype) || first->rank != 2)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "weights must be 2-D float matrices");
    int64_t rows = first->shape[0], cols = first->shape[1];
    size_t matrix_bytes = (size_t)(rows * cols) * moira_dtype_size(dtype);
    size_t scales_per = (size_t)(ceil_div(rows, MOIRA_FP8_BLOCK) * ceil_div(cols, MOIRA_FP8_BLOCK));
    memset(out, 0, sizeof(*out));
    out->dtype = dtype;
    out->offset = upload_reserve(u, matrix_bytes * (size_t)count);
    if (dtype == MOIRA_DTYPE_F8_E4M3)
        out->scale_offset = upload_reserve(u, scales_per * sizeof(float) * (size_t)count);
    out->rank = stack ? 3 : 2;
    int64_t shape3[3] = {count, rows, cols};
    memcpy(out->shape, stack ? shape3 : shape3 + 1, sizeof(int64_t) * (size_t)out->rank);
    if (!u->staging) return MOIRA_OK_STATUS;
    for (int64_t e = 0; e < count; e++) {
        if (mats[e]->rank != 2 || mats[e]->shape[0] != rows || mats[e]->shape[1] != cols)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "stacked expert matrices differ in shape");
        float *scales = dtype == MOIRA_DTYPE_F8_E4M3
                            ? (float *)(u->staging + out->scale_offset) + (size_t)e * scales_per
                            : NULL;
        MOIRA_RETURN_IF_ERROR(fill_matrix(
            mats[e], dtype, u->staging + out->offset + (size_t)e * matrix_bytes, scales));
    }
    return MOIRA_OK_STATUS;
}

static moira_status_t place_matrix(upload_t *u, const moira_tensor_t *mat, moira_dtensor_t *out) {
    if (!mat) {
        memset(out, 0, sizeof(*out));
        return MOIRA_OK_STATUS;
    }
    return place_matrices(u, &mat, 1, false, out);
}

/* Norm weights and biases are always f32 on the device. */
static moira_status_t place_vector(upload_t *u, const moira_tensor_t *vec, moira_dtensor_t *out) {
    memset(out, 0, sizeof(*out));
    if (!vec) return MOIRA_OK_STATUS;
    int64_t n = moira_tensor_numel(vec);
    out->dtype = MOIRA_DTYPE_F32;
    out->rank = 1;
    out->shape[0] = n;
    out->offset = upload_reserve(u, (size_t)n * sizeof(float));
    if (u->staging)
        moira_convert_to_f32(vec->dtype, vec->data, (float *)(u->staging + out->offset), (size_t)n);
    return MOIRA_OK_STATUS;
}

/* Every weight of the layer, in one order for both passes. */
static moira_status_t place_layer(upload_t *u, const moira_model_config_t *config,
                                  const moira_layer_weights_t *host, moira_device_layer_t *l) {
    l->has_norms = host->input_layernorm && host->post_attention_layernorm;
    MOIRA_RETURN_IF_ERROR(place_vector(u, host->input_layernorm, &l->input_norm));
    MOIRA_RETURN_IF_ERROR(place_vector(u, host->post_attention_layernorm, &l->post_norm));
    const moira_mla_weights_t *mla = &host->mla;
    l->has_mla = mla->kv_b_proj != NULL;
    MOIRA_RETURN_IF_ERROR(place_matrix(u, mla->q_proj, &l->q_proj));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, mla->q_a_proj, &l->q_a_proj));
    MOIRA_RETURN_IF_ERROR(place_vector(u, mla->q_a_layernorm, &l->q_a_norm));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, mla->q_b_proj, &l->q_b_proj));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, mla->kv_a_proj_with_mqa, &l->kv_a_proj));
    MOIRA_RETURN_IF_ERROR(place_vector(u, mla->kv_a_layernorm, &l->kv_a_norm));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, mla->kv_b_proj, &l->kv_b_proj));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, mla->o_proj, &l->o_proj));
    const moira_moe_weights_t *moe = &host->moe;
    /* The router may come alone (moira op gate); the experts never come without it. */
    MOIRA_RETURN_IF_ERROR(place_matrix(u, moe->gate, &l->gate));
    MOIRA_RETURN_IF_ERROR(place_vector(u, moe->e_score_correction_bias, &l->gate_bias));
    l->has_moe = host->is_moe && moe->gate && moe->expert_gate_proj;
    if (l->has_moe) {
        if (moe->n_experts != config->n_routed_experts)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "expert count mismatch");
        MOIRA_RETURN_IF_ERROR(
            place_matrices(u, moe->expert_gate_proj, moe->n_experts, true, &l->experts_w1));
        MOIRA_RETURN_IF_ERROR(
            place_matrices(u, moe->expert_up_proj, moe->n_experts, true, &l->experts_w3));
        MOIRA_RETURN_IF_ERROR(
            place_matrices(u, moe->expert_down_proj, moe->n_experts, true, &l->experts_w2));
        MOIRA_RETURN_IF_ERROR(place_matrix(u, moe->shared.gate_proj, &l->shared_w1));
        MOIRA_RETURN_IF_ERROR(place_matrix(u, moe->shared.up_proj, &l->shared_w3));
        MOIRA_RETURN_IF_ERROR(place_matrix(u, moe->shared.down_proj, &l->shared_w2));
    }
    l->has_dense_mlp = !host->is_moe && host->mlp.gate_proj != NULL;
    MOIRA_RETURN_IF_ERROR(place_matrix(u, host->mlp.gate_proj, &l->mlp_w1));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, host->mlp.up_proj, &l->mlp_w3));
    MOIRA_RETURN_IF_ERROR(place_matrix(u, host->mlp.down_proj, &l->mlp_w2));
    return MOIRA_OK_STATUS;
}

/* Points every placed tensor (non-zero rank) at the device buffer. */
static void bind_buffer(moira_device_layer_t *l) {
    moira_dtensor_t *all[] = {
        &l->input_norm, &l->post_norm,  &l->q_proj,     &l->q_a_proj,  &l->q_a_norm,  &l->q_b_proj,
        &l->kv_a_proj,  &l->kv_a_norm,  &l->kv_b_proj,  &l->o_proj,    &l->gate,      &l->gate_bias,
        &l->experts_w1, &l->experts_w3, &l->experts_w2, &l->shared_w1, &l->shared_w3, &l->shared_w2,
        &l->mlp_w1,     &l->mlp_w3,     &l->mlp_w2};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i]->rank) all[i]->buffer = l->buffer;
}

moira_status_t moira_device_layer_upload(moira_device_t *device, moira_queue_t *queue,
                                         const moira_model_config_t *config,
                                         const moira_layer_weights_t *host, int weight_dtype,
                                         moira_device_layer_t *out_layer) {
    memset(out_layer, 0, sizeof(*out_layer));
    upload_t measure = {.weight_dtype = weight_dtype};
    moira_device_layer_t layout;
    memset(&layout, 0, sizeof(layout));
    MOIRA_RETURN_IF_ERROR(place_layer(&measure, config, host, &layout));
    upload_t fill = {.weight_dtype = weight_dtype};
    fill.staging = calloc(1, measure.used ? measure.used : 1);
    if (!fill.staging)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot stage %zu bytes of weights",
                                 measure.used);
    moira_status_t status = place_layer(&fill, config, host, &layout);
    if (!status) status = moira_buffer_alloc(device, measure.used, -1, &layout.buffer);
    if (!status) status = moira_queue_write(queue, layout.buffer, 0, fill.staging, measure.used);
    if (!status) status = moira_queue_finish(queue);
    free(fill.staging);
    if (status) {
        moira_buffer_free(layout.buffer);
        return status;
    }
    layout.device = device;
    bind_buffer(&layout);
    if (layout.has_moe) {
        /* The device may keep the experts in its own layout too (the cpu packs GEMM panels). */
        moira_dtensor_t experts[3] = {layout.experts_w1, layout.experts_w3, layout.experts_w2};
        status = moira_device_prepare_weights(device, MOIRA_OP_MOE_FFN, experts, 3);
        if (status) {
            moira_buffer_free(layout.buffer);
            return status;
        }
    }
    *out_layer = layout;
    return MOIRA_OK_STATUS;
}

void moira_device_layer_release(moira_device_layer_t *layer) {
    moira_buffer_free(layer->buffer);
    memset(layer, 0, sizeof(*layer));
}

moira_status_t moira_mla_cache_create(moira_device_t *device, const moira_model_config_t *config,
                                      int64_t capacity, moira_mla_cache_t *out_cache) {
    memset(out_cache, 0, sizeof(*out_cache));
    size_t c_bytes = (size_t)(capacity * config->kv_lora_rank) * sizeof(float);
    size_t c_aligned = (c_bytes + UPLOAD_ALIGN - 1) / UPLOAD_ALIGN * UPLOAD_ALIGN;
    size_t pe_bytes = (size_t)(capacity * config->qk_rope_head_dim) * sizeof(float);
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(device, c_aligned + pe_bytes, -1, &out_cache->buffer));
    out_cache->c =
        moira_dtensor_2d(out_cache->buffer, 0, MOIRA_DTYPE_F32, capacity, config->kv_lora_rank);
    out_cache->k_pe = moira_dtensor_2d(out_cache->buffer, c_aligned, MOIRA_DTYPE_F32, capacity,
                                       config->qk_rope_head_dim);
    out_cache->capacity = capacity;
    return MOIRA_OK_STATUS;
}

void moira_mla_cache_release(moira_mla_cache_t *cache) {
    moira_buffer_free(cache->buffer);
    memset(cache, 0, sizeof(*cache));
}

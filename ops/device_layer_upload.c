/* Uploading one layer's host weights into a single device buffer (ops/device_layer.h). */
#include <stdlib.h>
#include <string.h>

#include "ops/device_layer.h"
#include "ops/upload_staging.h"

#define UPLOAD_ALIGN 256

/* What place_layer lays out: a layer's host weights into the descriptors of `layout`. */
typedef struct layer_upload {
    const moira_model_config_t *config;
    const moira_layer_weights_t *host;
    moira_device_layer_t *layout;
} layer_upload_t;

/* Every weight of the layer, in one order for both passes. Shared experts are placed whenever
 * the host has them, even without routed experts: the executor keeps a layer's routed experts on
 * other devices and the rest on its home device. */
static moira_status_t place_layer(moira_staging_t *u, void *context) {
    const layer_upload_t *ctx = context;
    const moira_model_config_t *config = ctx->config;
    const moira_layer_weights_t *host = ctx->host;
    moira_device_layer_t *l = ctx->layout;
    l->has_norms = host->input_layernorm && host->post_attention_layernorm;
    MOIRA_RETURN_IF_ERROR(moira_staging_place_vector(u, host->input_layernorm, &l->input_norm));
    MOIRA_RETURN_IF_ERROR(
        moira_staging_place_vector(u, host->post_attention_layernorm, &l->post_norm));
    const moira_mla_weights_t *mla = &host->mla;
    l->has_mla = mla->kv_b_proj != NULL;
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, mla->q_proj, &l->q_proj));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, mla->q_a_proj, &l->q_a_proj));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_vector(u, mla->q_a_layernorm, &l->q_a_norm));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, mla->q_b_proj, &l->q_b_proj));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, mla->kv_a_proj_with_mqa, &l->kv_a_proj));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_vector(u, mla->kv_a_layernorm, &l->kv_a_norm));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, mla->kv_b_proj, &l->kv_b_proj));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, mla->o_proj, &l->o_proj));
    const moira_moe_weights_t *moe = &host->moe;
    /* The router may come alone (moira op gate); the experts never come without it. */
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, moe->gate, &l->gate));
    MOIRA_RETURN_IF_ERROR(
        moira_staging_place_vector(u, moe->e_score_correction_bias, &l->gate_bias));
    l->has_moe = host->is_moe && moe->gate && moe->expert_gate_proj;
    if (l->has_moe) {
        if (moe->n_experts != config->n_routed_experts)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "expert count mismatch");
        MOIRA_RETURN_IF_ERROR(moira_staging_place_matrices(u, moe->expert_gate_proj, moe->n_experts,
                                                           true, &l->experts_w1));
        MOIRA_RETURN_IF_ERROR(moira_staging_place_matrices(u, moe->expert_up_proj, moe->n_experts,
                                                           true, &l->experts_w3));
        MOIRA_RETURN_IF_ERROR(moira_staging_place_matrices(u, moe->expert_down_proj, moe->n_experts,
                                                           true, &l->experts_w2));
    }
    if (host->is_moe) {
        MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, moe->shared.gate_proj, &l->shared_w1));
        MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, moe->shared.up_proj, &l->shared_w3));
        MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, moe->shared.down_proj, &l->shared_w2));
    }
    l->has_dense_mlp = !host->is_moe && host->mlp.gate_proj != NULL;
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, host->mlp.gate_proj, &l->mlp_w1));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, host->mlp.up_proj, &l->mlp_w3));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrix(u, host->mlp.down_proj, &l->mlp_w2));
    return MOIRA_OK_STATUS;
}

/* Lets the device keep the layer's weights in its own layout too (the cpu packs GEMM panels),
 * so the first token does not pay for it: the experts for MOE_FFN, the attention projections
 * for LINEAR, the shared experts and the dense MLP for SWIGLU. Weights the layer lacks (rank 0)
 * are skipped. */
static moira_status_t prepare_layer(moira_device_t *device, const moira_device_layer_t *l) {
    if (l->has_moe) {
        moira_dtensor_t experts[3] = {l->experts_w1, l->experts_w3, l->experts_w2};
        MOIRA_RETURN_IF_ERROR(moira_device_prepare_weights(device, MOIRA_OP_MOE_FFN, experts, 3));
    }
    const moira_dtensor_t *projections[] = {&l->q_proj,    &l->q_a_proj,  &l->q_b_proj,
                                            &l->kv_a_proj, &l->kv_b_proj, &l->o_proj};
    for (size_t i = 0; i < sizeof(projections) / sizeof(projections[0]); i++)
        if (projections[i]->rank)
            MOIRA_RETURN_IF_ERROR(
                moira_device_prepare_weights(device, MOIRA_OP_LINEAR, projections[i], 1));
    moira_dtensor_t mlps[2][3] = {{l->shared_w1, l->shared_w3, l->shared_w2},
                                  {l->mlp_w1, l->mlp_w3, l->mlp_w2}};
    for (int m = 0; m < 2; m++)
        if (mlps[m][0].rank)
            MOIRA_RETURN_IF_ERROR(
                moira_device_prepare_weights(device, MOIRA_OP_SWIGLU, mlps[m], 3));
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
    moira_device_layer_t layout;
    memset(&layout, 0, sizeof(layout));
    layer_upload_t context = {config, host, &layout};
    MOIRA_RETURN_IF_ERROR(moira_staging_upload(device, queue, -1, weight_dtype, place_layer,
                                               &context, &layout.buffer));
    layout.device = device;
    bind_buffer(&layout);
    moira_status_t status = prepare_layer(device, &layout);
    if (status) {
        moira_buffer_free(layout.buffer);
        return status;
    }
    *out_layer = layout;
    return MOIRA_OK_STATUS;
}

void moira_device_layer_release(moira_device_layer_t *layer) {
    moira_buffer_free(layer->buffer);
    memset(layer, 0, sizeof(*layer));
}

/* c's bytes, rounded so k_pe starts aligned behind it. */
static size_t cache_c_bytes(const moira_model_config_t *config, int64_t capacity,
                            moira_dtype_t dtype) {
    size_t c_bytes = (size_t)(capacity * config->kv_lora_rank) * moira_dtype_size(dtype);
    return (c_bytes + UPLOAD_ALIGN - 1) / UPLOAD_ALIGN * UPLOAD_ALIGN;
}

size_t moira_mla_cache_bytes(const moira_model_config_t *config, int64_t capacity,
                             moira_dtype_t dtype) {
    return cache_c_bytes(config, capacity, dtype) +
           (size_t)(capacity * config->qk_rope_head_dim) * moira_dtype_size(dtype);
}

moira_status_t moira_mla_cache_create(moira_device_t *device, const moira_model_config_t *config,
                                      int64_t capacity, moira_dtype_t dtype,
                                      moira_mla_cache_t *out_cache) {
    memset(out_cache, 0, sizeof(*out_cache));
    size_t c_aligned = cache_c_bytes(config, capacity, dtype);
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(device, moira_mla_cache_bytes(config, capacity, dtype),
                                             -1, &out_cache->buffer));
    out_cache->c = moira_dtensor_2d(out_cache->buffer, 0, dtype, capacity, config->kv_lora_rank);
    out_cache->k_pe =
        moira_dtensor_2d(out_cache->buffer, c_aligned, dtype, capacity, config->qk_rope_head_dim);
    out_cache->capacity = capacity;
    return MOIRA_OK_STATUS;
}

void moira_mla_cache_release(moira_mla_cache_t *cache) {
    moira_buffer_free(cache->buffer);
    memset(cache, 0, sizeof(*cache));
}

/* Rows first .. first+rows-1 of a contiguous 2-D cache tensor. */
static moira_dtensor_t cache_rows(const moira_dtensor_t *t, int64_t first, int64_t rows) {
    moira_dtensor_t out = *t;
    out.offset += (size_t)(first * t->shape[1]) * moira_dtype_size(t->dtype);
    out.shape[0] = rows;
    return out;
}

void moira_mla_cache_window(const moira_mla_cache_t *cache, int64_t first, int64_t rows,
                            moira_dtensor_t *out_c, moira_dtensor_t *out_k_pe) {
    *out_c = cache_rows(&cache->c, first, rows);
    *out_k_pe = cache_rows(&cache->k_pe, first, rows);
}

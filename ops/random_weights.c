#include "ops/random_weights.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void moira_random_fill_uniform(float *dst, size_t n, uint64_t seed, float lo, float hi) {
    /* splitmix64: well mixed from any seed, including 0 and small consecutive ones. */
    uint64_t state = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        dst[i] = lo + (float)((double)(z >> 11) / 9007199254740992.0 * (hi - lo));
    }
}

typedef struct maker {
    moira_random_layer_t *layer;
    uint64_t seed;
    moira_dtype_t weight_dtype;
    int capacity;
} maker_t;

/* A [rows, cols] matrix with variance 1/cols (uniform in +-sqrt(3/cols)) times `gain`, stored as
 * the layer's weight dtype. Returns a pointer the layer owns. */
static moira_status_t make_matrix(maker_t *m, int64_t rows, int64_t cols, float gain,
                                  const moira_tensor_t **out) {
    moira_random_layer_t *l = m->layer;
    if (l->n_tensors == m->capacity)
        return moira_status_make(MOIRA_CODE_INTERNAL, "random layer: too many tensors");
    moira_tensor_t f32;
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(rows, cols, &f32));
    float a = gain * sqrtf(3.0f / (float)cols);
    moira_random_fill_uniform(f32.data, (size_t)(rows * cols), m->seed++, -a, a);
    moira_tensor_t *slot = &l->tensors[l->n_tensors];
    moira_status_t status = MOIRA_OK_STATUS;
    if (m->weight_dtype == MOIRA_DTYPE_F32) {
        *slot = f32;
    } else {
        status = moira_tensor_convert(&f32, m->weight_dtype, slot, &l->scales[l->n_tensors]);
        moira_tensor_release(&f32);
    }
    if (status) return status;
    *out = slot;
    l->n_tensors++;
    return MOIRA_OK_STATUS;
}

/* A norm weight near 1 or a small bias: always f32, as checkpoints store them. */
static moira_status_t make_vector(maker_t *m, int64_t n, float center, float spread,
                                  const moira_tensor_t **out) {
    moira_random_layer_t *l = m->layer;
    if (l->n_tensors == m->capacity)
        return moira_status_make(MOIRA_CODE_INTERNAL, "random layer: too many tensors");
    moira_tensor_t *slot = &l->tensors[l->n_tensors];
    int64_t shape[1] = {n};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_F32, 1, shape, slot));
    moira_random_fill_uniform(slot->data, (size_t)n, m->seed++, center - spread, center + spread);
    *out = slot;
    l->n_tensors++;
    return MOIRA_OK_STATUS;
}

static moira_status_t make_mlp(maker_t *m, int64_t d, int64_t inter, moira_mlp_weights_t *w) {
    MOIRA_RETURN_IF_ERROR(make_matrix(m, inter, d, 1.0f, &w->gate_proj));
    MOIRA_RETURN_IF_ERROR(make_matrix(m, inter, d, 1.0f, &w->up_proj));
    return make_matrix(m, d, inter, 1.0f, &w->down_proj);
}

static moira_status_t make_attention(maker_t *m, const moira_model_config_t *c,
                                     moira_mla_weights_t *w) {
    int64_t d = c->hidden_size, h = c->num_attention_heads;
    int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    if (c->q_lora_rank > 0) {
        MOIRA_RETURN_IF_ERROR(make_matrix(m, c->q_lora_rank, d, 1.0f, &w->q_a_proj));
        MOIRA_RETURN_IF_ERROR(make_vector(m, c->q_lora_rank, 1.0f, 0.1f, &w->q_a_layernorm));
        MOIRA_RETURN_IF_ERROR(make_matrix(m, h * qk, c->q_lora_rank, 1.0f, &w->q_b_proj));
    } else {
        MOIRA_RETURN_IF_ERROR(make_matrix(m, h * qk, d, 1.0f, &w->q_proj));
    }
    MOIRA_RETURN_IF_ERROR(
        make_matrix(m, c->kv_lora_rank + c->qk_rope_head_dim, d, 1.0f, &w->kv_a_proj_with_mqa));
    MOIRA_RETURN_IF_ERROR(make_vector(m, c->kv_lora_rank, 1.0f, 0.1f, &w->kv_a_layernorm));
    MOIRA_RETURN_IF_ERROR(make_matrix(m, h * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                                      1.0f, &w->kv_b_proj));
    return make_matrix(m, d, h * c->v_head_dim, 0.5f, &w->o_proj);
}

static moira_status_t make_moe(maker_t *m, const moira_model_config_t *c, moira_moe_weights_t *w) {
    int64_t d = c->hidden_size, e = c->n_routed_experts, inter = c->moe_intermediate_size;
    /* A wider router spreads scores so top-k choices are far from ties. */
    MOIRA_RETURN_IF_ERROR(make_matrix(m, e, d, 4.0f, &w->gate));
    if (c->scoring_func == MOIRA_SCORING_FUNC_SIGMOID)
        MOIRA_RETURN_IF_ERROR(make_vector(m, e, 0.0f, 0.1f, &w->e_score_correction_bias));
    w->n_experts = e;
    w->expert_gate_proj = m->layer->expert_arrays;
    w->expert_up_proj = m->layer->expert_arrays + e;
    w->expert_down_proj = m->layer->expert_arrays + 2 * e;
    for (int64_t x = 0; x < e; x++) {
        moira_mlp_weights_t expert;
        MOIRA_RETURN_IF_ERROR(make_mlp(m, d, inter, &expert));
        w->expert_gate_proj[x] = expert.gate_proj;
        w->expert_up_proj[x] = expert.up_proj;
        w->expert_down_proj[x] = expert.down_proj;
    }
    if (c->n_shared_experts > 0)
        MOIRA_RETURN_IF_ERROR(make_mlp(m, d, inter * c->n_shared_experts, &w->shared));
    return MOIRA_OK_STATUS;
}

moira_status_t moira_random_layer_create(const moira_model_config_t *config, int64_t layer,
                                         uint64_t seed, moira_dtype_t weight_dtype,
                                         moira_random_layer_t *out_layer) {
    memset(out_layer, 0, sizeof(*out_layer));
    int64_t e = config->n_routed_experts;
    maker_t m = {.layer = out_layer,
                 .seed = seed * 1000003u + (uint64_t)layer * 7919u,
                 .weight_dtype = weight_dtype,
                 .capacity = (int)(3 * e + 20)};
    out_layer->tensors = calloc((size_t)m.capacity, sizeof(moira_tensor_t));
    out_layer->scales = calloc((size_t)m.capacity, sizeof(moira_tensor_t));
    out_layer->expert_arrays = calloc((size_t)(3 * e + 1), sizeof(moira_tensor_t *));
    if (!out_layer->tensors || !out_layer->scales || !out_layer->expert_arrays) {
        moira_random_layer_release(out_layer);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate random weights");
    }
    moira_layer_weights_t *w = &out_layer->weights;
    moira_status_t status = make_vector(&m, config->hidden_size, 1.0f, 0.1f, &w->input_layernorm);
    if (!status)
        status = make_vector(&m, config->hidden_size, 1.0f, 0.1f, &w->post_attention_layernorm);
    if (!status) status = make_attention(&m, config, &w->mla);
    w->is_moe = moira_model_config_is_moe_layer(config, layer);
    if (!status && w->is_moe) status = make_moe(&m, config, &w->moe);
    if (!status && !w->is_moe)
        status = make_mlp(&m, config->hidden_size, config->intermediate_size, &w->mlp);
    if (status) moira_random_layer_release(out_layer);
    return status;
}

void moira_random_layer_release(moira_random_layer_t *layer) {
    for (int i = 0; layer->tensors && i < layer->n_tensors; i++) {
        moira_tensor_release(&layer->tensors[i]);
        moira_tensor_release(&layer->scales[i]);
    }
    free(layer->tensors);
    free(layer->scales);
    free(layer->expert_arrays);
    memset(layer, 0, sizeof(*layer));
}

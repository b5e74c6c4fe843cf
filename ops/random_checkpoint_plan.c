#include "ops/random_checkpoint_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/random_weights.h"
#include "runtime/hash.h"

/* What a tensor is, which decides its storage type and its values. */
typedef enum tensor_kind {
    KIND_EMBEDDING, /* embed_tokens: unit variance, so the first layer sees O(1) activations */
    KIND_HEAD,      /* lm_head, shared_head.head: the logits' spread */
    KIND_MATRIX,    /* a projection or expert matrix: quantised in fp8 checkpoints */
    KIND_PLAIN,     /* a matrix DeepSeek-V3 keeps in bf16 next to fp8 ones (router, eh_proj) */
    KIND_NORM,      /* an RMSNorm weight: near 1 */
    KIND_BIAS,      /* e_score_correction_bias: small, f32 in every DeepSeek-V3 checkpoint */
} tensor_kind_t;

#define DEFAULT_LOGIT_GAIN 8.0f

/* The walk over a model: the spec being listed and the list growing. */
typedef struct lister {
    const moira_random_checkpoint_spec_t *spec;
    moira_ckpt_plan_t *plan;
} lister_t;

/* Storage type of a tensor of `kind`: fp8 checkpoints quantise only the projection and expert
 * matrices and keep the rest in bf16, as DeepSeek-V3 ships. */
static moira_dtype_t kind_dtype(tensor_kind_t kind, moira_dtype_t checkpoint_dtype) {
    if (kind == KIND_BIAS) return MOIRA_DTYPE_F32;
    if (kind == KIND_MATRIX || checkpoint_dtype != MOIRA_DTYPE_F8_E4M3) return checkpoint_dtype;
    return MOIRA_DTYPE_BF16;
}

/* Adds one tensor; `gain` scales a matrix's values to variance gain^2 / fan-in (the last dim). */
static moira_status_t add(lister_t *l, tensor_kind_t kind, float gain, int rank, int64_t d0,
                          int64_t d1, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static moira_status_t add(lister_t *l, tensor_kind_t kind, float gain, int rank, int64_t d0,
                          int64_t d1, const char *fmt, ...) {
    moira_ckpt_plan_t *p = l->plan;
    if (p->count == p->capacity) {
        size_t capacity = p->capacity ? p->capacity * 2 : 64;
        moira_ckpt_tensor_t *grown = realloc(p->tensors, capacity * sizeof(*grown));
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot list tensors");
        p->tensors = grown;
        p->capacity = capacity;
    }
    moira_ckpt_tensor_t *t = &p->tensors[p->count];
    memset(t, 0, sizeof(*t));
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(t->name, sizeof(t->name), fmt, args);
    va_end(args);
    if (n < 0 || (size_t)n >= sizeof(t->name))
        return moira_status_make(MOIRA_CODE_INTERNAL, "tensor name too long");
    t->rank = rank;
    t->shape[0] = d0;
    t->shape[1] = rank == 2 ? d1 : 0;
    t->dtype = kind_dtype(kind, l->spec->dtype);
    switch (kind) {
    case KIND_EMBEDDING:
        t->spread = sqrtf(3.0f); /* uniform with variance 1 */
        break;
    case KIND_NORM:
        t->center = 1.0f;
        t->spread = 0.1f;
        break;
    case KIND_BIAS:
        t->spread = 0.1f;
        break;
    default:
        t->spread = gain * sqrtf(3.0f / (float)d1);
        break;
    }
    p->count++;
    return MOIRA_OK_STATUS;
}

/* q, the latent kv and the output projection of one layer's MLA. */
static moira_status_t add_attention(lister_t *l, const char *p) {
    const moira_model_config_t *c = &l->spec->config;
    int64_t d = c->hidden_size, h = c->num_attention_heads;
    int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    if (c->q_lora_rank > 0) {
        MOIRA_RETURN_IF_ERROR(
            add(l, KIND_MATRIX, 1, 2, c->q_lora_rank, d, "%sself_attn.q_a_proj.weight", p));
        MOIRA_RETURN_IF_ERROR(
            add(l, KIND_NORM, 1, 1, c->q_lora_rank, 0, "%sself_attn.q_a_layernorm.weight", p));
        MOIRA_RETURN_IF_ERROR(
            add(l, KIND_MATRIX, 1, 2, h * qk, c->q_lora_rank, "%sself_attn.q_b_proj.weight", p));
    } else {
        MOIRA_RETURN_IF_ERROR(add(l, KIND_MATRIX, 1, 2, h * qk, d, "%sself_attn.q_proj.weight", p));
    }
    MOIRA_RETURN_IF_ERROR(add(l, KIND_MATRIX, 1, 2, c->kv_lora_rank + c->qk_rope_head_dim, d,
                              "%sself_attn.kv_a_proj_with_mqa.weight", p));
    MOIRA_RETURN_IF_ERROR(
        add(l, KIND_NORM, 1, 1, c->kv_lora_rank, 0, "%sself_attn.kv_a_layernorm.weight", p));
    MOIRA_RETURN_IF_ERROR(add(l, KIND_MATRIX, 1, 2, h * (c->qk_nope_head_dim + c->v_head_dim),
                              c->kv_lora_rank, "%sself_attn.kv_b_proj.weight", p));
    /* Half gain on the output keeps the residual stream from growing layer by layer. */
    return add(l, KIND_MATRIX, 0.5f, 2, d, h * c->v_head_dim, "%sself_attn.o_proj.weight", p);
}

/* A SwiGLU MLP of intermediate size `inter` under `stem` ("mlp", "mlp.experts.3", ...). */
static moira_status_t add_mlp(lister_t *l, const char *p, const char *stem, int64_t inter) {
    int64_t d = l->spec->config.hidden_size;
    MOIRA_RETURN_IF_ERROR(add(l, KIND_MATRIX, 1, 2, inter, d, "%s%s.gate_proj.weight", p, stem));
    MOIRA_RETURN_IF_ERROR(add(l, KIND_MATRIX, 1, 2, inter, d, "%s%s.up_proj.weight", p, stem));
    return add(l, KIND_MATRIX, 1, 2, d, inter, "%s%s.down_proj.weight", p, stem);
}

/* The router, its correction bias (sigmoid scoring, as DeepSeek-V3), the routed and the shared
 * experts. */
static moira_status_t add_moe(lister_t *l, const char *p) {
    const moira_model_config_t *c = &l->spec->config;
    int64_t inter = c->moe_intermediate_size;
    /* A wide router spreads the scores, so top-k choices sit far from ties. */
    MOIRA_RETURN_IF_ERROR(
        add(l, KIND_PLAIN, 4, 2, c->n_routed_experts, c->hidden_size, "%smlp.gate.weight", p));
    if (c->scoring_func == MOIRA_SCORING_FUNC_SIGMOID)
        MOIRA_RETURN_IF_ERROR(add(l, KIND_BIAS, 1, 1, c->n_routed_experts, 0,
                                  "%smlp.gate.e_score_correction_bias", p));
    for (int64_t e = 0; e < c->n_routed_experts; e++) {
        char stem[48];
        snprintf(stem, sizeof(stem), "mlp.experts.%lld", (long long)e);
        MOIRA_RETURN_IF_ERROR(add_mlp(l, p, stem, inter));
    }
    if (c->n_shared_experts > 0)
        MOIRA_RETURN_IF_ERROR(add_mlp(l, p, "mlp.shared_experts", inter * c->n_shared_experts));
    return MOIRA_OK_STATUS;
}

/* Decoder layer `layer` (an MTP layer when layer >= num_hidden_layers: MoE, as in DeepSeek-V3). */
static moira_status_t add_decoder_layer(lister_t *l, int64_t layer) {
    const moira_model_config_t *c = &l->spec->config;
    char p[48];
    snprintf(p, sizeof(p), "model.layers.%lld.", (long long)layer);
    MOIRA_RETURN_IF_ERROR(
        add(l, KIND_NORM, 1, 1, c->hidden_size, 0, "%sinput_layernorm.weight", p));
    MOIRA_RETURN_IF_ERROR(add_attention(l, p));
    MOIRA_RETURN_IF_ERROR(
        add(l, KIND_NORM, 1, 1, c->hidden_size, 0, "%spost_attention_layernorm.weight", p));
    bool moe = layer >= c->num_hidden_layers || moira_model_config_is_moe_layer(c, layer);
    if (moe) return add_moe(l, p);
    return add_mlp(l, p, "mlp", c->intermediate_size);
}

/* An MTP layer as DeepSeek-V3 ships it: its own embedding, enorm/hnorm, eh_proj [D, 2D], a full
 * decoder layer and shared_head (norm and head). A correct engine never reads any of it. */
static moira_status_t add_mtp_layer(lister_t *l, int64_t layer) {
    const moira_model_config_t *c = &l->spec->config;
    int64_t d = c->hidden_size, v = c->vocab_size;
    char p[48];
    snprintf(p, sizeof(p), "model.layers.%lld.", (long long)layer);
    MOIRA_RETURN_IF_ERROR(add(l, KIND_EMBEDDING, 1, 2, v, d, "%sembed_tokens.weight", p));
    MOIRA_RETURN_IF_ERROR(add(l, KIND_NORM, 1, 1, d, 0, "%senorm.weight", p));
    MOIRA_RETURN_IF_ERROR(add(l, KIND_NORM, 1, 1, d, 0, "%shnorm.weight", p));
    MOIRA_RETURN_IF_ERROR(add(l, KIND_PLAIN, 1, 2, d, 2 * d, "%seh_proj.weight", p));
    MOIRA_RETURN_IF_ERROR(add_decoder_layer(l, layer));
    MOIRA_RETURN_IF_ERROR(add(l, KIND_NORM, 1, 1, d, 0, "%sshared_head.norm.weight", p));
    float gain = l->spec->logit_gain > 0 ? (float)l->spec->logit_gain : DEFAULT_LOGIT_GAIN;
    return add(l, KIND_HEAD, gain, 2, v, d, "%sshared_head.head.weight", p);
}

moira_status_t moira_ckpt_plan_make(const moira_random_checkpoint_spec_t *spec,
                                    moira_ckpt_plan_t *out_plan) {
    memset(out_plan, 0, sizeof(*out_plan));
    lister_t l = {.spec = spec, .plan = out_plan};
    const moira_model_config_t *c = &spec->config;
    int64_t d = c->hidden_size, v = c->vocab_size;
    MOIRA_RETURN_IF_ERROR(add(&l, KIND_EMBEDDING, 1, 2, v, d, "model.embed_tokens.weight"));
    for (int64_t layer = 0; layer < c->num_hidden_layers; layer++)
        MOIRA_RETURN_IF_ERROR(add_decoder_layer(&l, layer));
    for (int64_t k = 0; k < spec->mtp_layers; k++)
        MOIRA_RETURN_IF_ERROR(add_mtp_layer(&l, c->num_hidden_layers + k));
    MOIRA_RETURN_IF_ERROR(add(&l, KIND_NORM, 1, 1, d, 0, "model.norm.weight"));
    /* The logits' standard deviation is the gain: rows of variance gain^2 / D against a normed
     * hidden state of unit RMS. */
    float gain = spec->logit_gain > 0 ? (float)spec->logit_gain : DEFAULT_LOGIT_GAIN;
    return add(&l, KIND_HEAD, gain, 2, v, d, "lm_head.weight");
}

void moira_ckpt_plan_free(moira_ckpt_plan_t *plan) {
    free(plan->tensors);
    memset(plan, 0, sizeof(*plan));
}

static int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

size_t moira_ckpt_tensor_bytes(const moira_ckpt_tensor_t *t) {
    int64_t n = t->rank == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
    size_t bytes = (size_t)n * moira_dtype_size(t->dtype);
    if (t->dtype == MOIRA_DTYPE_F8_E4M3)
        bytes += (size_t)(ceil_div(t->shape[0], MOIRA_FP8_BLOCK) *
                          ceil_div(t->shape[1], MOIRA_FP8_BLOCK)) *
                 sizeof(float);
    return bytes;
}

/* The generator seed of one tensor: the checkpoint seed (as little-endian bytes, so every machine
 * agrees) hashed with the name, so values follow the name and not the tensor's place in a file. */
static uint64_t tensor_seed(uint64_t seed, const char *name) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)(seed >> (8 * i));
    uint64_t h = moira_fnv1a64(MOIRA_FNV1A64_BASIS, bytes, sizeof(bytes));
    return moira_fnv1a64(h, name, strlen(name));
}

moira_status_t moira_ckpt_tensor_make(const moira_ckpt_tensor_t *t, uint64_t seed,
                                      moira_tensor_t *out_weight, moira_tensor_t *out_scale) {
    memset(out_weight, 0, sizeof(*out_weight));
    memset(out_scale, 0, sizeof(*out_scale));
    moira_tensor_t f32;
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_F32, t->rank, t->shape, &f32));
    size_t n = (size_t)moira_tensor_numel(&f32);
    moira_random_fill_uniform(f32.data, n, tensor_seed(seed, t->name), t->center - t->spread,
                              t->center + t->spread);
    moira_status_t status = MOIRA_OK_STATUS;
    if (t->dtype == MOIRA_DTYPE_F32) {
        *out_weight = f32;
        return MOIRA_OK_STATUS;
    }
    if (t->dtype == MOIRA_DTYPE_F8_E4M3) {
        status = moira_tensor_convert(&f32, t->dtype, out_weight, out_scale);
    } else {
        /* Straight into the narrow type: no second f32 copy of a vocabulary-sized matrix. */
        status = moira_tensor_alloc(t->dtype, t->rank, t->shape, out_weight);
        if (!status) moira_convert_from_f32(t->dtype, f32.data, out_weight->data, n);
    }
    moira_tensor_release(&f32);
    if (status) status = moira_status_annotate(status, "making random tensor %s", t->name);
    return status;
}

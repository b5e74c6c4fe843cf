/* The decoder layer recorded once and replayed (ops/layer_program.h). */
#include "ops/layer_program.h"

#include <stdlib.h>
#include <string.h>

#include "ops/device_experts.h"
#include "ops/rope.h"

/* How a recorded operand becomes the operand of one replay. */
typedef enum bind {
    BIND_FIXED = 0, /* weights, norm weights, expert offsets: as recorded */
    BIND_TOKENS,    /* recorded with shape[0] = rows per token; replayed with that times T */
    BIND_SEQUENCE,  /* a batch tensor cut to one sequence's rows */
    BIND_CACHE_C_NEW,
    BIND_CACHE_PE_NEW, /* the cache rows a sequence appends: past .. past+rows-1 */
    BIND_CACHE_C_ALL,
    BIND_CACHE_PE_ALL, /* the cache rows it attends over: 0 .. past+rows-1 */
} bind_t;

/* Which attention form a launch belongs to; a sequence with a cache runs the absorbed one. */
typedef enum form { FORM_ANY = 0, FORM_NAIVE, FORM_ABSORBED } form_t;

typedef struct step {
    int op;
    unsigned part;
    form_t form;
    bool per_sequence;
    bool sets_cache_len; /* mla params: cache_len is patched per sequence */
    int n_operands;
    size_t params_size;
    moira_dtensor_t operands[MOIRA_OP_MAX_OPERANDS];
    unsigned char bind[MOIRA_OP_MAX_OPERANDS];
    _Alignas(8) unsigned char params[MOIRA_OP_MAX_PARAMS_BYTES];
} step_t;

/* A tensor while recording: where it is and how it is bound. */
typedef struct operand {
    moira_dtensor_t t;
    bind_t bind;
} operand_t;

#define MAX_STEPS 40
#define WORKSPACE_ALIGN 256

struct moira_layer_program {
    int n_steps;
    step_t steps[MAX_STEPS];
    moira_dtensor_t normed, topk_idx, topk_weight; /* bound to tokens, shape[0] per token */
};

/* Recording state: the workspace being carved and the program being filled. */
typedef struct recorder {
    const moira_model_config_t *config;
    const moira_device_layer_t *layer;
    moira_layer_program_t *program;
    moira_buffer_t *workspace; /* NULL while only measuring */
    size_t offset;
    int64_t max_tokens;
    unsigned part;
    form_t form;
} recorder_t;

static size_t round_up(size_t bytes) {
    return (bytes + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN;
}

/* A [per_token * T, cols] workspace tensor, laid out for max_tokens. */
static operand_t take(recorder_t *r, moira_dtype_t dtype, int64_t per_token, int64_t cols) {
    operand_t o = {.bind = BIND_TOKENS};
    o.t = moira_dtensor_2d(r->workspace, r->offset, dtype, per_token, cols);
    r->offset += round_up((size_t)(per_token * r->max_tokens * cols) * moira_dtype_size(dtype));
    return o;
}

static operand_t fixed(moira_dtensor_t t) {
    operand_t o = {.t = t, .bind = BIND_FIXED};
    return o;
}

static operand_t per_token(moira_dtensor_t t) {
    t.shape[0] = 1;
    operand_t o = {.t = t, .bind = BIND_TOKENS};
    return o;
}

/* A column window [col, col + cols) of a 2-D tensor, as a strided view. */
static operand_t columns(operand_t o, int64_t col, int64_t cols) {
    o.t.row_stride = moira_dtensor_row_stride(&o.t);
    o.t.offset += (size_t)col * moira_dtype_size(o.t.dtype);
    o.t.shape[1] = cols;
    return o;
}

static operand_t rebind(operand_t o, bind_t bind) {
    o.bind = bind;
    return o;
}

static const operand_t absent;

/* Appends one launch; while measuring only the workspace is counted. */
static moira_status_t emit(recorder_t *r, int op, const void *params, size_t params_size,
                           bool per_sequence, int n, const operand_t *operands) {
    if (!r->program) return MOIRA_OK_STATUS;
    moira_layer_program_t *p = r->program;
    if (p->n_steps == MAX_STEPS || params_size > MOIRA_OP_MAX_PARAMS_BYTES ||
        n > MOIRA_OP_MAX_OPERANDS)
        return moira_status_make(MOIRA_CODE_INTERNAL, "layer program: too many launches");
    step_t *s = &p->steps[p->n_steps++];
    memset(s, 0, sizeof(*s));
    s->op = op;
    s->part = r->part;
    s->form = r->form;
    s->per_sequence = per_sequence;
    s->sets_cache_len = op == MOIRA_OP_MLA_ATTENTION || op == MOIRA_OP_MLA_DECODE_ATTENTION;
    s->n_operands = n;
    s->params_size = params_size;
    memcpy(s->params, params, params_size);
    for (int i = 0; i < n; i++) {
        s->operands[i] = operands[i].t;
        s->bind[i] = (unsigned char)operands[i].bind;
    }
    return MOIRA_OK_STATUS;
}

static moira_status_t rmsnorm(recorder_t *r, operand_t x, moira_dtensor_t w, operand_t y,
                              bool per_sequence) {
    moira_rmsnorm_params_t p = {.eps = (float)r->config->rms_norm_eps};
    operand_t ops[] = {x, fixed(w), y};
    return emit(r, MOIRA_OP_RMSNORM, &p, sizeof(p), per_sequence, 3, ops);
}

static moira_status_t linear(recorder_t *r, operand_t x, moira_dtensor_t w, operand_t y,
                             float beta) {
    moira_linear_params_t p = {.beta = beta};
    operand_t ops[] = {x, fixed(w), y};
    return emit(r, MOIRA_OP_LINEAR, &p, sizeof(p), false, 3, ops);
}

static moira_status_t swiglu(recorder_t *r, operand_t x, moira_dtensor_t w1, moira_dtensor_t w3,
                             moira_dtensor_t w2, operand_t y, float beta) {
    moira_swiglu_params_t p = {.beta = beta};
    operand_t ops[] = {x, fixed(w1), fixed(w3), fixed(w2), y};
    return emit(r, MOIRA_OP_SWIGLU, &p, sizeof(p), false, 5, ops);
}

/* RoPE over every head's rope slice of a [T, heads * head_stride] tensor. */
static moira_status_t rope(recorder_t *r, int32_t n_heads, int32_t head_stride, int32_t offset,
                           operand_t x, operand_t positions, operand_t y, bool per_sequence) {
    const moira_model_config_t *config = r->config;
    moira_rope_params_t p;
    memset(&p, 0, sizeof(p));
    p.n_heads = n_heads;
    p.head_stride = head_stride;
    p.rope_offset = offset;
    p.rope_dim = (int32_t)config->qk_rope_head_dim;
    if (p.rope_dim / 2 > MOIRA_ROPE_MAX_PAIRS)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "qk_rope_head_dim %d exceeds %d",
                                 p.rope_dim, 2 * MOIRA_ROPE_MAX_PAIRS);
    double scale = 1.0;
    MOIRA_RETURN_IF_ERROR(moira_rope_inv_freq(config, p.inv_freq, &scale));
    p.cos_sin_scale = (float)scale;
    operand_t ops[] = {x, positions, y};
    return emit(r, MOIRA_OP_ROPE, &p, sizeof(p), per_sequence, 3, ops);
}

static moira_mla_params_t mla_params(const moira_model_config_t *config) {
    moira_mla_params_t p = {
        .n_heads = (int32_t)config->num_attention_heads,
        .nope_dim = (int32_t)config->qk_nope_head_dim,
        .rope_dim = (int32_t)config->qk_rope_head_dim,
        .v_dim = (int32_t)config->v_head_dim,
        .kv_lora_rank = (int32_t)config->kv_lora_rank,
        .scale = (float)moira_model_config_attention_scale(config),
    };
    return p;
}

/* Naive form: c through kv_b_proj into per-head k_nope and v, attention over the sequence. */
static moira_status_t record_mla_naive(recorder_t *r, operand_t q, operand_t kv_a,
                                       operand_t positions, operand_t attn) {
    const moira_model_config_t *c = r->config;
    int64_t l = c->kv_lora_rank, rope_dim = c->qk_rope_head_dim, h = c->num_attention_heads;
    r->form = FORM_NAIVE;
    operand_t latent = take(r, MOIRA_DTYPE_F32, 1, l);
    MOIRA_RETURN_IF_ERROR(rmsnorm(r, columns(kv_a, 0, l), r->layer->kv_a_norm, latent, false));
    /* Roped into its own tensor: kv_a stays unroped for sequences of the absorbed form. */
    operand_t k_pe = take(r, MOIRA_DTYPE_F32, 1, rope_dim);
    MOIRA_RETURN_IF_ERROR(
        rope(r, 1, (int32_t)rope_dim, 0, columns(kv_a, l, rope_dim), positions, k_pe, false));
    operand_t kv = take(r, MOIRA_DTYPE_F32, 1, h * (c->qk_nope_head_dim + c->v_head_dim));
    MOIRA_RETURN_IF_ERROR(linear(r, latent, r->layer->kv_b_proj, kv, 0.0f));
    moira_mla_params_t p = mla_params(c);
    operand_t ops[] = {rebind(q, BIND_SEQUENCE), rebind(kv, BIND_SEQUENCE),
                       rebind(k_pe, BIND_SEQUENCE), rebind(positions, BIND_SEQUENCE),
                       rebind(attn, BIND_SEQUENCE)};
    MOIRA_RETURN_IF_ERROR(emit(r, MOIRA_OP_MLA_ATTENTION, &p, sizeof(p), true, 5, ops));
    r->form = FORM_ANY;
    return MOIRA_OK_STATUS;
}

/* Absorbed form: each sequence appends its normalised c and roped k_pe to its cache; kv_b_proj's
 * k part is folded into the query and its v part into the output. */
static moira_status_t record_mla_absorbed(recorder_t *r, operand_t q, operand_t kv_a,
                                          operand_t positions, operand_t attn) {
    const moira_model_config_t *c = r->config;
    int64_t l = c->kv_lora_rank, rope_dim = c->qk_rope_head_dim, h = c->num_attention_heads;
    r->form = FORM_ABSORBED;
    operand_t c_new = {.bind = BIND_CACHE_C_NEW}, pe_new = {.bind = BIND_CACHE_PE_NEW};
    operand_t c_all = {.bind = BIND_CACHE_C_ALL}, pe_all = {.bind = BIND_CACHE_PE_ALL};
    MOIRA_RETURN_IF_ERROR(
        rmsnorm(r, rebind(columns(kv_a, 0, l), BIND_SEQUENCE), r->layer->kv_a_norm, c_new, true));
    MOIRA_RETURN_IF_ERROR(rope(r, 1, (int32_t)rope_dim, 0,
                               rebind(columns(kv_a, l, rope_dim), BIND_SEQUENCE),
                               rebind(positions, BIND_SEQUENCE), pe_new, true));
    moira_mla_params_t p = mla_params(c);
    operand_t q_lat = take(r, MOIRA_DTYPE_F32, 1, h * l);
    operand_t o_lat = take(r, MOIRA_DTYPE_F32, 1, h * l);
    operand_t absorb_q[] = {q, fixed(r->layer->kv_b_proj), q_lat};
    MOIRA_RETURN_IF_ERROR(emit(r, MOIRA_OP_MLA_ABSORB_Q, &p, sizeof(p), false, 3, absorb_q));
    operand_t attend[] = {
        rebind(q_lat, BIND_SEQUENCE),     rebind(q, BIND_SEQUENCE),    c_all, pe_all,
        rebind(positions, BIND_SEQUENCE), rebind(o_lat, BIND_SEQUENCE)};
    MOIRA_RETURN_IF_ERROR(emit(r, MOIRA_OP_MLA_DECODE_ATTENTION, &p, sizeof(p), true, 6, attend));
    operand_t absorb_out[] = {o_lat, fixed(r->layer->kv_b_proj), attn};
    MOIRA_RETURN_IF_ERROR(emit(r, MOIRA_OP_MLA_ABSORB_OUT, &p, sizeof(p), false, 3, absorb_out));
    r->form = FORM_ANY;
    return MOIRA_OK_STATUS;
}

/* y = beta * y + mla(x): the query (q_a, its norm and q_b, or q_proj) with RoPE, kv_a, either
 * attention form, o_proj. */
static moira_status_t record_mla(recorder_t *r, operand_t x, operand_t positions, operand_t y,
                                 float beta) {
    const moira_model_config_t *c = r->config;
    const moira_device_layer_t *w = r->layer;
    int64_t h = c->num_attention_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    operand_t q = take(r, MOIRA_DTYPE_F32, 1, h * qk);
    if (c->q_lora_rank > 0) {
        operand_t qa = take(r, MOIRA_DTYPE_F32, 1, c->q_lora_rank);
        MOIRA_RETURN_IF_ERROR(linear(r, x, w->q_a_proj, qa, 0.0f));
        MOIRA_RETURN_IF_ERROR(rmsnorm(r, qa, w->q_a_norm, qa, false));
        MOIRA_RETURN_IF_ERROR(linear(r, qa, w->q_b_proj, q, 0.0f));
    } else {
        MOIRA_RETURN_IF_ERROR(linear(r, x, w->q_proj, q, 0.0f));
    }
    MOIRA_RETURN_IF_ERROR(
        rope(r, (int32_t)h, (int32_t)qk, (int32_t)c->qk_nope_head_dim, q, positions, q, false));
    operand_t kv_a = take(r, MOIRA_DTYPE_F32, 1, c->kv_lora_rank + c->qk_rope_head_dim);
    MOIRA_RETURN_IF_ERROR(linear(r, x, w->kv_a_proj, kv_a, 0.0f));
    operand_t attn = take(r, MOIRA_DTYPE_F32, 1, h * c->v_head_dim);
    MOIRA_RETURN_IF_ERROR(record_mla_naive(r, q, kv_a, positions, attn));
    MOIRA_RETURN_IF_ERROR(record_mla_absorbed(r, q, kv_a, positions, attn));
    return linear(r, attn, w->o_proj, y, beta);
}

static moira_status_t record_router(recorder_t *r, operand_t x, operand_t idx, operand_t weight) {
    moira_gate_params_t p = moira_gate_params_from_config(r->config);
    operand_t ops[] = {x, fixed(r->layer->gate), fixed(r->layer->gate_bias), idx, weight, absent};
    return emit(r, MOIRA_OP_GATE, &p, sizeof(p), false, 6, ops);
}

/* Dispatch, one grouped FFN over every expert, combine into y with beta. */
static moira_status_t record_experts(recorder_t *r, operand_t x, operand_t idx, operand_t weight,
                                     operand_t y, float beta) {
    const moira_model_config_t *c = r->config;
    int64_t k = c->num_experts_per_tok, e = r->layer->experts_w1.shape[0];
    operand_t offsets = take(r, MOIRA_DTYPE_I32, 1, e + 1);
    offsets.bind = BIND_FIXED;
    offsets.t.rank = 1;
    offsets.t.shape[0] = e + 1;
    operand_t sorted = take(r, MOIRA_DTYPE_I32, k, 1);
    sorted.t.rank = 1;
    operand_t positions = take(r, MOIRA_DTYPE_I32, 1, k);
    operand_t flat_positions = positions; /* dispatch sees [T*k], combine [T, k] */
    flat_positions.t.rank = 1;
    flat_positions.t.shape[0] = k;
    operand_t ys = take(r, MOIRA_DTYPE_F32, k, c->hidden_size);
    moira_moe_dispatch_params_t dispatch = {.n_experts = (int32_t)e};
    moira_moe_ffn_params_t ffn = {.top_k = (int32_t)k};
    moira_moe_combine_params_t combine = {.beta = beta};
    const moira_device_layer_t *w = r->layer;
    operand_t dispatch_ops[] = {idx, offsets, sorted, flat_positions};
    operand_t ffn_ops[] = {
        x, fixed(w->experts_w1), fixed(w->experts_w3), fixed(w->experts_w2), offsets, sorted, ys};
    operand_t combine_ops[] = {ys, positions, weight, y};
    MOIRA_RETURN_IF_ERROR(
        emit(r, MOIRA_OP_MOE_DISPATCH, &dispatch, sizeof(dispatch), false, 4, dispatch_ops));
    MOIRA_RETURN_IF_ERROR(emit(r, MOIRA_OP_MOE_FFN, &ffn, sizeof(ffn), false, 7, ffn_ops));
    return emit(r, MOIRA_OP_MOE_COMBINE, &combine, sizeof(combine), false, 4, combine_ops);
}

/* Router, routed experts and shared experts of an MoE block: y = beta * y + moe(x). */
static moira_status_t record_moe(recorder_t *r, operand_t x, operand_t y, float beta) {
    int64_t k = r->config->num_experts_per_tok;
    moira_layer_program_t *p = r->program;
    operand_t idx = take(r, MOIRA_DTYPE_I32, 1, k);
    operand_t weight = take(r, MOIRA_DTYPE_F32, 1, k);
    if (p) {
        p->topk_idx = idx.t;
        p->topk_weight = weight.t;
    }
    r->part = MOIRA_LAYER_ROUTER;
    MOIRA_RETURN_IF_ERROR(record_router(r, x, idx, weight));
    /* A home device without the routed experts (the executor puts them elsewhere) records the
     * rest of the block; measuring counts the experts' workspace all the same. */
    r->part = MOIRA_LAYER_EXPERTS;
    if (!r->workspace || r->layer->experts_w1.buffer)
        MOIRA_RETURN_IF_ERROR(record_experts(r, x, idx, weight, y, beta));
    r->part = MOIRA_LAYER_SHARED;
    const moira_device_layer_t *w = r->layer;
    if (!w->shared_w1.buffer) return MOIRA_OK_STATUS;
    return swiglu(r, x, w->shared_w1, w->shared_w3, w->shared_w2, y, 1.0f);
}

/* The decoder layer of the header's picture, over x in place. */
static moira_status_t record_layer(recorder_t *r, int64_t layer_index, operand_t x,
                                   operand_t positions) {
    const moira_device_layer_t *w = r->layer;
    operand_t normed = take(r, MOIRA_DTYPE_F32, 1, r->config->hidden_size);
    if (r->program) r->program->normed = normed.t;
    r->part = MOIRA_LAYER_ATTENTION;
    MOIRA_RETURN_IF_ERROR(rmsnorm(r, x, w->input_norm, normed, false));
    MOIRA_RETURN_IF_ERROR(record_mla(r, normed, positions, x, 1.0f));
    MOIRA_RETURN_IF_ERROR(rmsnorm(r, x, w->post_norm, normed, false));
    if (moira_model_config_is_moe_layer(r->config, layer_index))
        return record_moe(r, normed, x, 1.0f);
    r->part = MOIRA_LAYER_SHARED;
    return swiglu(r, normed, w->mlp_w1, w->mlp_w3, w->mlp_w2, x, 1.0f);
}

/* The layer's weights must hold what the kind needs; a missing part is a caller's error. */
static moira_status_t check_layer(const moira_model_config_t *config, moira_program_kind_t kind,
                                  int64_t layer_index, const moira_device_layer_t *layer) {
    bool moe = moira_model_config_is_moe_layer(config, layer_index);
    const char *missing = NULL;
    if (kind != MOIRA_PROGRAM_MOE && !layer->has_mla) missing = "attention";
    if (kind == MOIRA_PROGRAM_DECODER_LAYER && !layer->has_norms) missing = "norms";
    if (kind == MOIRA_PROGRAM_MOE && !layer->has_moe) missing = "MoE weights";
    if (kind == MOIRA_PROGRAM_DECODER_LAYER && moe && !layer->gate.buffer) missing = "router";
    if (kind == MOIRA_PROGRAM_DECODER_LAYER && !moe && !layer->has_dense_mlp) missing = "dense MLP";
    if (!missing) return MOIRA_OK_STATUS;
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "layer %lld: the layer has no %s",
                             (long long)layer_index, missing);
}

/* Runs the recipe of `kind` through the recorder: measuring when r->program is NULL. */
static moira_status_t record(recorder_t *r, moira_program_kind_t kind, int64_t layer_index,
                             const moira_program_io_t *io) {
    operand_t x = per_token(io->x), positions = per_token(io->positions);
    positions.t.rank = 1;
    switch (kind) {
    case MOIRA_PROGRAM_DECODER_LAYER:
        return record_layer(r, layer_index, x, positions);
    case MOIRA_PROGRAM_MLA:
        r->part = MOIRA_LAYER_ATTENTION;
        return record_mla(r, x, positions, per_token(io->y), io->beta);
    case MOIRA_PROGRAM_MOE:
        return record_moe(r, x, per_token(io->y), io->beta);
    }
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "layer program: unknown kind %d", kind);
}

size_t moira_layer_program_workspace_bytes(const moira_model_config_t *config,
                                           moira_program_kind_t kind, int64_t layer_index,
                                           int64_t max_tokens) {
    moira_device_layer_t shape;
    memset(&shape, 0, sizeof(shape));
    shape.experts_w1.shape[0] = config->n_routed_experts;
    recorder_t r = {.config = config, .layer = &shape, .max_tokens = max_tokens};
    moira_program_io_t io;
    memset(&io, 0, sizeof(io));
    moira_status_t status = record(&r, kind, layer_index, &io);
    moira_status_free(status); /* measuring cannot fail but for a bad rope dim, caught later */
    return r.offset;
}

size_t moira_layer_programs_workspace_bytes(const moira_model_config_t *config,
                                            int64_t max_tokens) {
    size_t most = 0;
    for (int64_t l = 0; l < config->num_hidden_layers; l++) {
        size_t bytes =
            moira_layer_program_workspace_bytes(config, MOIRA_PROGRAM_DECODER_LAYER, l, max_tokens);
        if (bytes > most) most = bytes;
    }
    return most;
}

moira_status_t moira_layer_program_record(const moira_model_config_t *config,
                                          moira_program_kind_t kind, int64_t layer_index,
                                          const moira_device_layer_t *layer,
                                          const moira_program_io_t *io, moira_buffer_t *workspace,
                                          size_t workspace_offset, int64_t max_tokens,
                                          moira_layer_program_t **out) {
    *out = NULL;
    MOIRA_RETURN_IF_ERROR(check_layer(config, kind, layer_index, layer));
    size_t need = moira_layer_program_workspace_bytes(config, kind, layer_index, max_tokens);
    if (!workspace || workspace_offset > workspace->size ||
        need > workspace->size - workspace_offset)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "layer program: the workspace holds less than the %zu bytes "
                                 "%lld tokens need",
                                 need, (long long)max_tokens);
    moira_layer_program_t *program = calloc(1, sizeof(*program));
    if (!program)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "layer program: out of memory");
    recorder_t r = {.config = config,
                    .layer = layer,
                    .program = program,
                    .workspace = workspace,
                    .offset = workspace_offset,
                    .max_tokens = max_tokens};
    moira_status_t status = record(&r, kind, layer_index, io);
    if (status) {
        free(program);
        return status;
    }
    *out = program;
    return MOIRA_OK_STATUS;
}

void moira_layer_program_free(moira_layer_program_t *program) {
    free(program);
}

/* Bytes between rows of a tensor (its elements for rank 1). */
static size_t row_bytes(const moira_dtensor_t *t) {
    int64_t stride = t->rank == 1 ? 1 : moira_dtensor_row_stride(t);
    return (size_t)stride * moira_dtype_size(t->dtype);
}

static moira_dtensor_t cache_rows(const moira_dtensor_t *cache, int64_t first, int64_t rows) {
    moira_dtensor_t t = *cache;
    t.offset += (size_t)first * row_bytes(cache);
    t.shape[0] = rows;
    return t;
}

/* The recorded operand as this replay (and, for per-sequence launches, this sequence) sees it. */
static moira_dtensor_t resolve(const moira_dtensor_t *t, bind_t bind, int64_t tokens,
                               const moira_program_sequence_t *s) {
    moira_dtensor_t out = *t;
    switch (bind) {
    case BIND_FIXED:
        break;
    case BIND_TOKENS:
        out.shape[0] = t->shape[0] * tokens;
        break;
    case BIND_SEQUENCE:
        out.offset += (size_t)s->first_row * row_bytes(t);
        out.shape[0] = s->rows;
        break;
    case BIND_CACHE_C_NEW:
        return cache_rows(&s->cache_c, s->past, s->rows);
    case BIND_CACHE_PE_NEW:
        return cache_rows(&s->cache_pe, s->past, s->rows);
    case BIND_CACHE_C_ALL:
        return cache_rows(&s->cache_c, 0, s->past + s->rows);
    case BIND_CACHE_PE_ALL:
        return cache_rows(&s->cache_pe, 0, s->past + s->rows);
    }
    return out;
}

/* One launch of a step, its operands and cache length resolved. */
static moira_status_t launch_step(moira_queue_t *queue, const step_t *step, int64_t tokens,
                                  const moira_program_sequence_t *s) {
    moira_op_launch_t launch;
    launch.op = step->op;
    launch.n_operands = step->n_operands;
    launch.params_size = step->params_size;
    for (int i = 0; i < step->n_operands; i++)
        launch.operands[i] = resolve(&step->operands[i], (bind_t)step->bind[i], tokens, s);
    moira_mla_params_t mla;
    launch.params = step->params;
    if (step->sets_cache_len) {
        memcpy(&mla, step->params, sizeof(mla));
        mla.cache_len = (int32_t)(step->form == FORM_ABSORBED ? s->past + s->rows : s->rows);
        launch.params = &mla;
    }
    return moira_queue_launch(queue, &launch);
}

/* Sequences must tile rows 0..tokens-1 and fit their caches. */
static moira_status_t check_batch(int64_t tokens, const moira_program_sequence_t *sequences,
                                  int n_sequences) {
    int64_t next = 0;
    for (int i = 0; i < n_sequences; i++) {
        const moira_program_sequence_t *s = &sequences[i];
        bool fits =
            !s->cache_c.buffer || (s->past >= 0 && s->past + s->rows <= s->cache_c.shape[0]);
        if (s->first_row != next || s->rows < 1 || !fits)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "layer program: sequence %d (rows %lld+%lld, %lld cached) "
                                     "does not continue the batch or fit its cache",
                                     i, (long long)s->first_row, (long long)s->rows,
                                     (long long)s->past);
        next += s->rows;
    }
    if (next != tokens || tokens < 1)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "layer program: %d sequences cover %lld of %lld rows", n_sequences,
                                 (long long)next, (long long)tokens);
    return MOIRA_OK_STATUS;
}

/* Whether any sequence of the batch runs attention in `form`. */
static bool form_used(form_t form, const moira_program_sequence_t *sequences, int n_sequences) {
    for (int i = 0; i < n_sequences; i++)
        if ((sequences[i].cache_c.buffer ? FORM_ABSORBED : FORM_NAIVE) == form) return true;
    return false;
}

moira_status_t moira_layer_program_replay(const moira_layer_program_t *program,
                                          moira_queue_t *queue, unsigned parts, int64_t tokens,
                                          const moira_program_sequence_t *sequences,
                                          int n_sequences) {
    MOIRA_RETURN_IF_ERROR(check_batch(tokens, sequences, n_sequences));
    for (int i = 0; i < program->n_steps; i++) {
        const step_t *step = &program->steps[i];
        if (!(step->part & parts)) continue;
        if (!step->per_sequence) {
            /* Batch-wide launches of one attention form run when any sequence uses it. */
            if (step->form == FORM_ANY || form_used(step->form, sequences, n_sequences))
                MOIRA_RETURN_IF_ERROR(launch_step(queue, step, tokens, &sequences[0]));
            continue;
        }
        for (int q = 0; q < n_sequences; q++) {
            const moira_program_sequence_t *s = &sequences[q];
            if (step->form != FORM_ANY && !form_used(step->form, s, 1)) continue;
            MOIRA_RETURN_IF_ERROR(launch_step(queue, step, tokens, s));
        }
    }
    return MOIRA_OK_STATUS;
}

static moira_dtensor_t rows_of(moira_dtensor_t t, int64_t tokens) {
    t.shape[0] *= tokens;
    return t;
}

void moira_layer_program_routing(const moira_layer_program_t *program, int64_t tokens,
                                 moira_dtensor_t *normed, moira_dtensor_t *topk_idx,
                                 moira_dtensor_t *topk_weight) {
    *normed = rows_of(program->normed, tokens);
    *topk_idx = rows_of(program->topk_idx, tokens);
    *topk_weight = rows_of(program->topk_weight, tokens);
}

int moira_layer_program_launches(const moira_layer_program_t *program) {
    return program->n_steps;
}

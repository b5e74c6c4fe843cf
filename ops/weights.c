#include "ops/weights.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_NAME_MAX 128
#define MISSING_NAMES_SHOWN 8

/* One tensor a layer needs: its Hugging Face name (without the layer prefix), where its pointer
 * lives in the weight set, and the shape the config implies. The loader fills the slots; the
 * hand-built checks read them. One list serves both, so they cannot disagree. */
typedef struct weight_request {
    char name[WEIGHT_NAME_MAX];
    const moira_tensor_t **slot; /* borrowed: points into a weight set */
    int rank;
    int64_t shape[2];
    bool optional;
} weight_request_t;

typedef struct request_list {
    weight_request_t *items; /* owned */
    size_t count;
    size_t capacity;
} request_list_t;

/* Requests are added one at a time while walking the layer's structure; growing by doubling keeps
 * that simple for any number of experts. */
static moira_status_t request_add(request_list_t *list, const moira_tensor_t **slot, int rank,
                                  int64_t d0, int64_t d1, bool optional, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static moira_status_t request_add(request_list_t *list, const moira_tensor_t **slot, int rank,
                                  int64_t d0, int64_t d1, bool optional, const char *fmt, ...) {
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 32;
        weight_request_t *items = realloc(list->items, capacity * sizeof(*items));
        if (!items)
            return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate weight list");
        list->items = items;
        list->capacity = capacity;
    }
    weight_request_t *r = &list->items[list->count++];
    memset(r, 0, sizeof(*r));
    va_list args;
    va_start(args, fmt);
    vsnprintf(r->name, sizeof(r->name), fmt, args);
    va_end(args);
    r->slot = slot;
    r->rank = rank;
    r->shape[0] = d0;
    r->shape[1] = d1;
    r->optional = optional;
    return MOIRA_OK_STATUS;
}

/* A config with a zero or negative size would make every later shape check meaningless, so the
 * sizes the weights depend on are checked first, with the key's name. */
static moira_status_t check_positive(const char *key, int64_t value) {
    if (value <= 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "model config: %s must be positive, got %lld", key,
                                 (long long)value);
    return MOIRA_OK_STATUS;
}

static moira_status_t check_mla_config(const moira_model_config_t *c) {
    if (c->attention != MOIRA_ATTENTION_MLA)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "model config: attention is not MLA; Moira computes only MLA");
    MOIRA_RETURN_IF_ERROR(check_positive("hidden_size", c->hidden_size));
    MOIRA_RETURN_IF_ERROR(check_positive("num_attention_heads", c->num_attention_heads));
    MOIRA_RETURN_IF_ERROR(check_positive("kv_lora_rank", c->kv_lora_rank));
    MOIRA_RETURN_IF_ERROR(check_positive("qk_nope_head_dim", c->qk_nope_head_dim));
    MOIRA_RETURN_IF_ERROR(check_positive("qk_rope_head_dim", c->qk_rope_head_dim));
    MOIRA_RETURN_IF_ERROR(check_positive("v_head_dim", c->v_head_dim));
    if (c->q_lora_rank < 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "model config: q_lora_rank must not be negative");
    return MOIRA_OK_STATUS;
}

static moira_status_t check_moe_config(const moira_model_config_t *c) {
    MOIRA_RETURN_IF_ERROR(check_positive("hidden_size", c->hidden_size));
    MOIRA_RETURN_IF_ERROR(check_positive("n_routed_experts", c->n_routed_experts));
    MOIRA_RETURN_IF_ERROR(check_positive("moe_intermediate_size", c->moe_intermediate_size));
    if (c->n_shared_experts < 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "model config: n_shared_experts must not be negative");
    return MOIRA_OK_STATUS;
}

static moira_status_t add_mla_requests(const moira_model_config_t *c, moira_mla_weights_t *w,
                                       request_list_t *list) {
    MOIRA_RETURN_IF_ERROR(check_mla_config(c));
    int64_t d = c->hidden_size, h = c->num_attention_heads;
    int64_t q_dim = h * (c->qk_nope_head_dim + c->qk_rope_head_dim);
    if (c->q_lora_rank > 0) {
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->q_a_proj, 2, c->q_lora_rank, d, false,
                                          "self_attn.q_a_proj.weight"));
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->q_a_layernorm, 1, c->q_lora_rank, 0, false,
                                          "self_attn.q_a_layernorm.weight"));
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->q_b_proj, 2, q_dim, c->q_lora_rank, false,
                                          "self_attn.q_b_proj.weight"));
    } else {
        MOIRA_RETURN_IF_ERROR(
            request_add(list, &w->q_proj, 2, q_dim, d, false, "self_attn.q_proj.weight"));
    }
    MOIRA_RETURN_IF_ERROR(request_add(list, &w->kv_a_proj_with_mqa, 2,
                                      c->kv_lora_rank + c->qk_rope_head_dim, d, false,
                                      "self_attn.kv_a_proj_with_mqa.weight"));
    MOIRA_RETURN_IF_ERROR(request_add(list, &w->kv_a_layernorm, 1, c->kv_lora_rank, 0, false,
                                      "self_attn.kv_a_layernorm.weight"));
    MOIRA_RETURN_IF_ERROR(request_add(list, &w->kv_b_proj, 2,
                                      h * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                                      false, "self_attn.kv_b_proj.weight"));
    MOIRA_RETURN_IF_ERROR(
        request_add(list, &w->o_proj, 2, d, h * c->v_head_dim, false, "self_attn.o_proj.weight"));
    return MOIRA_OK_STATUS;
}

/* `stem` is "mlp", "mlp.shared_experts" or "mlp.experts.E". */
static moira_status_t add_mlp_requests(int64_t d, int64_t inter, const char *stem,
                                       moira_mlp_weights_t *w, request_list_t *list) {
    MOIRA_RETURN_IF_ERROR(
        request_add(list, &w->gate_proj, 2, inter, d, false, "%s.gate_proj.weight", stem));
    MOIRA_RETURN_IF_ERROR(
        request_add(list, &w->up_proj, 2, inter, d, false, "%s.up_proj.weight", stem));
    MOIRA_RETURN_IF_ERROR(
        request_add(list, &w->down_proj, 2, d, inter, false, "%s.down_proj.weight", stem));
    return MOIRA_OK_STATUS;
}

/* The expert arrays must already hold n_routed_experts entries. */
static moira_status_t add_moe_requests(const moira_model_config_t *c, moira_moe_weights_t *w,
                                       bool bias_optional, request_list_t *list) {
    MOIRA_RETURN_IF_ERROR(check_moe_config(c));
    int64_t d = c->hidden_size, e_count = c->n_routed_experts, inter = c->moe_intermediate_size;
    MOIRA_RETURN_IF_ERROR(request_add(list, &w->gate, 2, e_count, d, false, "mlp.gate.weight"));
    if (bias_optional || w->e_score_correction_bias)
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->e_score_correction_bias, 1, e_count, 0, true,
                                          "mlp.gate.e_score_correction_bias"));
    if (!w->expert_gate_proj) return MOIRA_OK_STATUS; /* the router alone */
    for (int64_t e = 0; e < e_count; e++) {
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->expert_gate_proj[e], 2, inter, d, false,
                                          "mlp.experts.%lld.gate_proj.weight", (long long)e));
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->expert_up_proj[e], 2, inter, d, false,
                                          "mlp.experts.%lld.up_proj.weight", (long long)e));
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->expert_down_proj[e], 2, d, inter, false,
                                          "mlp.experts.%lld.down_proj.weight", (long long)e));
    }
    if (c->n_shared_experts > 0) {
        moira_mlp_weights_t *s = &w->shared;
        MOIRA_RETURN_IF_ERROR(
            add_mlp_requests(d, inter * c->n_shared_experts, "mlp.shared_experts", s, list));
    }
    return MOIRA_OK_STATUS;
}

/* Compares one tensor with its request. `path` is NULL for hand-built sets, whose errors are the
 * caller's (INVALID_ARGUMENT); with a path they are the file's (INVALID_INPUT). */
static moira_status_t check_request(const weight_request_t *r, const moira_tensor_t *t,
                                    const char *path, const char *prefix) {
    moira_code_t code = path ? MOIRA_CODE_INVALID_INPUT : MOIRA_CODE_INVALID_ARGUMENT;
    const char *where = path ? path : "weights";
    /* Matrices may be quantised (MXFP4, INT8 with their scales); vectors are plain floats. */
    bool accepted = r->rank == 2 ? moira_dtype_is_weight(t->dtype) : moira_dtype_is_float(t->dtype);
    if (!accepted)
        return moira_status_make(code, "%s: tensor %s%s: dtype %s is not a %s", where, prefix,
                                 r->name, moira_dtype_name(t->dtype),
                                 r->rank == 2 ? "weight format" : "float type");
    bool same = t->rank == r->rank;
    for (int i = 0; same && i < r->rank; i++)
        same = t->shape[i] == r->shape[i];
    if (!same) {
        moira_tensor_t expected = {.rank = r->rank, .shape = {r->shape[0], r->shape[1]}};
        char want[64], got[64];
        return moira_status_make(code, "%s: tensor %s%s: expected shape %s, got %s", where, prefix,
                                 r->name, moira_tensor_shape_str(&expected, want, sizeof(want)),
                                 moira_tensor_shape_str(t, got, sizeof(got)));
    }
    return MOIRA_OK_STATUS;
}

/* Hand-built sets: every required slot must be set and every set slot must match. */
static moira_status_t check_requests(const request_list_t *list) {
    for (size_t i = 0; i < list->count; i++) {
        const weight_request_t *r = &list->items[i];
        const moira_tensor_t *t = *r->slot;
        if (!t) {
            if (r->optional) continue;
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "weights: %s is missing",
                                     r->name);
        }
        MOIRA_RETURN_IF_ERROR(check_request(r, t, NULL, ""));
    }
    return MOIRA_OK_STATUS;
}

/* The checks build their request list over a copy of the caller's set, so nothing is written
 * through the caller's pointers. */
moira_status_t moira_mla_weights_check(const moira_model_config_t *config,
                                       const moira_mla_weights_t *weights) {
    moira_mla_weights_t copy = *weights;
    request_list_t list = {0};
    moira_status_t status = add_mla_requests(config, &copy, &list);
    if (!status) status = check_requests(&list);
    free(list.items);
    return status;
}

moira_status_t moira_moe_weights_check(const moira_model_config_t *config,
                                       const moira_moe_weights_t *weights) {
    MOIRA_RETURN_IF_ERROR(check_moe_config(config));
    if (weights->n_experts != config->n_routed_experts)
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT, "weights: %lld routed experts, the config has %lld",
            (long long)weights->n_experts, (long long)config->n_routed_experts);
    if (!weights->expert_gate_proj || !weights->expert_up_proj || !weights->expert_down_proj)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "weights: expert arrays missing");
    moira_moe_weights_t copy = *weights;
    request_list_t list = {0};
    moira_status_t status = add_moe_requests(config, &copy, false, &list);
    if (!status) status = check_requests(&list);
    free(list.items);
    if (!status && config->n_shared_experts == 0 &&
        (weights->shared.gate_proj || weights->shared.up_proj || weights->shared.down_proj))
        status = moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                   "weights: shared experts given, the config has none");
    return status;
}

moira_status_t moira_mlp_weights_check(const moira_model_config_t *config, int64_t intermediate,
                                       const moira_mlp_weights_t *weights) {
    MOIRA_RETURN_IF_ERROR(check_positive("hidden_size", config->hidden_size));
    MOIRA_RETURN_IF_ERROR(check_positive("intermediate size", intermediate));
    moira_mlp_weights_t copy = *weights;
    request_list_t list = {0};
    moira_status_t status =
        add_mlp_requests(config->hidden_size, intermediate, "mlp", &copy, &list);
    if (!status) status = check_requests(&list);
    free(list.items);
    return status;
}

/* A user fixing a checkpoint wants every missing name at once, not one per run; the list is cut
 * after a few names so an empty file does not produce a page of text. */
static moira_status_t missing_error(const moira_safetensors_t *file, const char *prefix,
                                    const request_list_t *list, size_t n_missing) {
    char names[MISSING_NAMES_SHOWN * (WEIGHT_NAME_MAX + 64)];
    size_t used = 0, shown = 0;
    names[0] = '\0';
    for (size_t i = 0; i < list->count && shown < MISSING_NAMES_SHOWN; i++) {
        const weight_request_t *r = &list->items[i];
        if (r->optional || *r->slot) continue;
        int n = snprintf(names + used, sizeof(names) - used, "%s%s%s", shown ? ", " : "", prefix,
                         r->name);
        if (n > 0) used += (size_t)n < sizeof(names) - used ? (size_t)n : sizeof(names) - used - 1;
        shown++;
    }
    if (n_missing > shown)
        return moira_status_make(MOIRA_CODE_NOT_FOUND, "%s: missing %zu tensors: %s and %zu more",
                                 moira_safetensors_path(file), n_missing, names, n_missing - shown);
    return moira_status_make(MOIRA_CODE_NOT_FOUND, "%s: missing tensor%s: %s",
                             moira_safetensors_path(file), n_missing == 1 ? "" : "s", names);
}

/* Looks up every request; slots of absent tensors stay NULL. Returns the number of required
 * tensors that are absent. */
static moira_status_t find_requests(const moira_safetensors_t *file, const char *prefix,
                                    request_list_t *list, size_t *out_missing) {
    char full[2 * WEIGHT_NAME_MAX + 256];
    size_t missing = 0;
    for (size_t i = 0; i < list->count; i++) {
        weight_request_t *r = &list->items[i];
        *r->slot = NULL;
        int n = snprintf(full, sizeof(full), "%s%s", prefix, r->name);
        if (n < 0 || (size_t)n >= sizeof(full))
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "weight prefix too long: %s",
                                     prefix);
        if (!moira_safetensors_has(file, full)) {
            if (!r->optional) missing++;
            continue;
        }
        MOIRA_RETURN_IF_ERROR(moira_safetensors_find(file, full, r->slot));
    }
    *out_missing = missing;
    return MOIRA_OK_STATUS;
}

static moira_status_t alloc_expert_arrays(moira_moe_weights_t *moe, int64_t n_experts) {
    size_t n = (size_t)n_experts;
    moe->n_experts = n_experts;
    moe->owns_arrays = true;
    moe->expert_gate_proj = calloc(n, sizeof(*moe->expert_gate_proj));
    moe->expert_up_proj = calloc(n, sizeof(*moe->expert_up_proj));
    moe->expert_down_proj = calloc(n, sizeof(*moe->expert_down_proj));
    if (!moe->expert_gate_proj || !moe->expert_up_proj || !moe->expert_down_proj)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate %lld expert slots",
                                 (long long)n_experts);
    return MOIRA_OK_STATUS;
}

/* Builds the whole request list for the asked parts, finds everything, reports all missing
 * names together, then checks shapes in a fixed order so the first bad tensor is named. */
static moira_status_t find_layer(const moira_safetensors_t *file, const char *prefix,
                                 const moira_model_config_t *config, int64_t layer, unsigned parts,
                                 moira_layer_weights_t *w, request_list_t *list) {
    if (parts & MOIRA_WEIGHTS_NORMS) {
        MOIRA_RETURN_IF_ERROR(check_positive("hidden_size", config->hidden_size));
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->input_layernorm, 1, config->hidden_size, 0,
                                          false, "input_layernorm.weight"));
        MOIRA_RETURN_IF_ERROR(request_add(list, &w->post_attention_layernorm, 1,
                                          config->hidden_size, 0, false,
                                          "post_attention_layernorm.weight"));
    }
    if (parts & MOIRA_WEIGHTS_MLA) MOIRA_RETURN_IF_ERROR(add_mla_requests(config, &w->mla, list));
    if (parts & MOIRA_WEIGHTS_MOE) {
        w->is_moe = moira_model_config_is_moe_layer(config, layer);
        if (w->is_moe) {
            MOIRA_RETURN_IF_ERROR(check_moe_config(config));
            MOIRA_RETURN_IF_ERROR(alloc_expert_arrays(&w->moe, config->n_routed_experts));
            MOIRA_RETURN_IF_ERROR(add_moe_requests(config, &w->moe, true, list));
        } else {
            MOIRA_RETURN_IF_ERROR(check_positive("hidden_size", config->hidden_size));
            MOIRA_RETURN_IF_ERROR(check_positive("intermediate_size", config->intermediate_size));
            MOIRA_RETURN_IF_ERROR(add_mlp_requests(config->hidden_size, config->intermediate_size,
                                                   "mlp", &w->mlp, list));
        }
    } else if (parts & MOIRA_WEIGHTS_GATE) {
        w->is_moe = true;
        w->moe.n_experts = config->n_routed_experts;
        MOIRA_RETURN_IF_ERROR(add_moe_requests(config, &w->moe, true, list));
    }
    size_t missing = 0;
    MOIRA_RETURN_IF_ERROR(find_requests(file, prefix, list, &missing));
    if (missing) return missing_error(file, prefix, list, missing);
    for (size_t i = 0; i < list->count; i++) {
        const weight_request_t *r = &list->items[i];
        if (*r->slot)
            MOIRA_RETURN_IF_ERROR(check_request(r, *r->slot, moira_safetensors_path(file), prefix));
    }
    return MOIRA_OK_STATUS;
}

moira_status_t moira_layer_weights_find(const moira_safetensors_t *file, const char *prefix,
                                        const moira_model_config_t *config, int64_t layer,
                                        unsigned parts, moira_layer_weights_t *out_weights) {
    memset(out_weights, 0, sizeof(*out_weights));
    if (!file || !config)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "weights: no file or config");
    if (!prefix) prefix = "";
    if (config->num_hidden_layers > 0 && (layer < 0 || layer >= config->num_hidden_layers))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "layer %lld out of range: the model has %lld layers",
                                 (long long)layer, (long long)config->num_hidden_layers);
    request_list_t list = {0};
    moira_status_t status = find_layer(file, prefix, config, layer, parts, out_weights, &list);
    free(list.items);
    if (status) {
        moira_layer_weights_free(out_weights);
        return moira_status_annotate(status, "layer %lld", (long long)layer);
    }
    return MOIRA_OK_STATUS;
}

void moira_layer_weights_free(moira_layer_weights_t *weights) {
    if (!weights) return;
    if (weights->moe.owns_arrays) {
        free(weights->moe.expert_gate_proj);
        free(weights->moe.expert_up_proj);
        free(weights->moe.expert_down_proj);
    }
    memset(weights, 0, sizeof(*weights));
}

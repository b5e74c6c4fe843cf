/* What `moira quantize` makes of a checkpoint's tensors (quantize.h): the plan. */
#include <stdlib.h>
#include <string.h>

#include "runtime/cli/quantize.h"
#include "runtime/weight_format.h"

/* The names Hugging Face DeepSeek checkpoints give routed experts; shared experts
 * (mlp.shared_experts.*) and the router (mlp.gate.weight) are not among them. */
bool quantize_is_expert_weight(const char *name) {
    const char *experts = strstr(name, ".mlp.experts.");
    if (strncmp(name, "model.layers.", 13) != 0 || !experts) return false;
    const char *p = experts + 13;
    if (*p < '0' || *p > '9') return false;
    while (*p >= '0' && *p <= '9')
        p++;
    return !strcmp(p, ".gate_proj.weight") || !strcmp(p, ".up_proj.weight") ||
           !strcmp(p, ".down_proj.weight");
}

/* Whether `name` is a dense projection `moira quantize` quantises without --experts-only: the
 * attention projections but kv_b_proj (the absorbed decode reads it by head slices), the shared
 * experts and a dense layer's MLP. The router (mlp.gate.weight), norms, embeddings and lm_head
 * are kept, as DeepSeek-V4 keeps them. */
bool quantize_is_projection_weight(const char *name) {
    static const char *const suffixes[] = {".self_attn.q_proj.weight",
                                           ".self_attn.q_a_proj.weight",
                                           ".self_attn.q_b_proj.weight",
                                           ".self_attn.kv_a_proj_with_mqa.weight",
                                           ".self_attn.o_proj.weight",
                                           ".mlp.shared_experts.gate_proj.weight",
                                           ".mlp.shared_experts.up_proj.weight",
                                           ".mlp.shared_experts.down_proj.weight",
                                           ".mlp.gate_proj.weight",
                                           ".mlp.up_proj.weight",
                                           ".mlp.down_proj.weight"};
    if (strncmp(name, "model.layers.", 13) != 0) return false;
    const char *p = name + 13;
    if (*p < '0' || *p > '9') return false;
    while (*p >= '0' && *p <= '9')
        p++;
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++)
        if (!strcmp(p, suffixes[i])) return true;
    return false;
}

/* Whether the run quantises `name`: a routed expert always, a projection unless experts_only. */
static bool quantized_here(const char *name, bool experts_only) {
    return quantize_is_expert_weight(name) ||
           (!experts_only && quantize_is_projection_weight(name));
}

/* "model.layers.N." gives N; -1 for any other name. */
static int layer_of(const char *name) {
    if (strncmp(name, "model.layers.", 13) != 0) return -1;
    char *end = NULL;
    long n = strtol(name + 13, &end, 10);
    return end != name + 13 && *end == '.' && n >= 0 && n < 1 << 20 ? (int)n : -1;
}

/* X.weight -> X.scale (MXFP4, DeepSeek-V4's name) or X.weight_scale (INT8). */
static char *scale_name(const char *name, moira_dtype_t dtype) {
    size_t len = strlen(name);
    char *out = malloc(len + 16);
    if (!out) return NULL;
    if (dtype == MOIRA_DTYPE_MXFP4)
        snprintf(out, len + 16, "%.*s.scale", (int)(len - 7), name);
    else
        snprintf(out, len + 16, "%s_scale", name);
    return out;
}

/* The entries of one quantised weight: the weight in the format and its scales (MXFP4: E8M0
 * [out, in/32] as X.scale; INT8: F32 [out] as X.weight_scale), described, not yet made. */
static moira_status_t plan_quantized(quantize_plan_t *q, const char *name,
                                     const moira_tensor_t *src, moira_dtype_t dtype,
                                     const char *path) {
    if (src->rank != 2 || !moira_weight_shape_fits(dtype, src->shape[0], src->shape[1]))
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "tensor %s: a [%lld, %lld] weight cannot be %s (rows must be a "
                               "multiple of 32 inputs)",
                               name, (long long)src->shape[0],
                               (long long)(src->rank > 1 ? src->shape[1] : 0),
                               moira_weight_format(dtype)->name);
    char *sname = scale_name(name, dtype);
    if (!sname) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    q->names[q->n_names++] = sname;
    bool mx = dtype == MOIRA_DTYPE_MXFP4;
    int64_t scale_shape[2] = {src->shape[0], src->shape[1] / 32};
    int layer = layer_of(name) < 0 ? 0 : layer_of(name);
    q->entries[q->n_entries++] = (quantize_entry_t){
        name, src, moira_tensor_view(dtype, 2, src->shape, NULL), QUANTIZE_WEIGHT, layer};
    q->entries[q->n_entries++] = (quantize_entry_t){
        sname, src,
        moira_tensor_view(mx ? MOIRA_DTYPE_E8M0 : MOIRA_DTYPE_F32, mx ? 2 : 1, scale_shape, NULL),
        QUANTIZE_SCALE, layer};
    if (layer + 1 > q->n_layers) q->n_layers = layer + 1;
    q->n_quantized++;
    return MOIRA_OK_STATUS;
}

/* Whether `name` is X.weight_scale_inv of a weight being quantised (dropped with it). */
static bool is_quantized_scale_inv(const moira_safetensors_t *source, const char *name,
                                   moira_dtype_t dtype, bool experts_only) {
    size_t len = strlen(name);
    if (len < 11 || strcmp(name + len - 10, "_scale_inv") != 0) return false;
    char *weight = strndup(name, len - 10);
    const moira_tensor_t *t = NULL;
    bool dropped = weight && quantized_here(weight, experts_only) &&
                   (quantize_is_expert_weight(weight) ||
                    (!moira_safetensors_find(source, weight, &t) && t->rank == 2 &&
                     moira_weight_shape_fits(dtype, t->shape[0], t->shape[1])));
    free(weight);
    return dropped;
}

moira_status_t quantize_plan_make(const moira_safetensors_t *source, moira_dtype_t dtype,
                                  bool experts_only, quantize_plan_t *out) {
    memset(out, 0, sizeof(*out));
    const char *path = moira_safetensors_path(source);
    if (moira_safetensors_other_count(source)) {
        const moira_safetensors_other_t *o = moira_safetensors_other(source, 0);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "holds %zu tensor(s) of dtypes Moira does not quantise from "
                               "(first: %s, %s); it takes f32, f16, bf16 and fp8 checkpoints",
                               moira_safetensors_other_count(source), o->name, o->dtype);
    }
    size_t n = moira_safetensors_count(source);
    out->entries = calloc(2 * n + 1, sizeof(*out->entries));
    out->names = calloc(n + 1, sizeof(*out->names));
    if (!out->entries || !out->names)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    int experts = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = moira_safetensors_name(source, i);
        const moira_tensor_t *t = NULL;
        MOIRA_RETURN_IF_ERROR(moira_safetensors_find(source, name, &t));
        if (is_quantized_scale_inv(source, name, dtype, experts_only)) continue;
        bool expert = quantize_is_expert_weight(name);
        /* A projection the format cannot store (MXFP4 inputs not a multiple of 32) is kept. */
        bool fits = t->rank == 2 && moira_weight_shape_fits(dtype, t->shape[0], t->shape[1]);
        if (quantized_here(name, experts_only) && (expert || fits)) {
            MOIRA_RETURN_IF_ERROR(plan_quantized(out, name, t, dtype, path));
            out->n_projections += !expert;
            experts += expert;
            continue;
        }
        out->n_kept += quantized_here(name, experts_only);
        out->entries[out->n_entries++] = (quantize_entry_t){name, t, *t, QUANTIZE_AS_IS, 0};
    }
    if (!experts)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "has no routed expert weights (model.layers.N.mlp.experts.E."
                               "{gate,up,down}_proj.weight) to quantise");
    return MOIRA_OK_STATUS;
}

void quantize_plan_release(quantize_plan_t *plan) {
    for (size_t i = 0; i < plan->n_names; i++)
        free(plan->names[i]);
    free(plan->names);
    free(plan->entries);
    memset(plan, 0, sizeof(*plan));
}

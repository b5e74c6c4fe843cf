#include "runtime/model_config.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "runtime/log.h"
#include "runtime/read_file.h"
#include "runtime/suggest.h"
#include "runtime/weight_format.h"
#include "runtime/yaml_text.h"

/* Where each value's mark is kept in moira_model_config_t.marks. The names are the config keys,
 * so the key table below can be written with one macro per key. */
enum slot {
    SLOT_top = 0, /* the top-level mapping: where "missing required key" points */
    SLOT_name,
    SLOT_hidden_size,
    SLOT_moe_intermediate_size,
    SLOT_intermediate_size,
    SLOT_n_routed_experts,
    SLOT_n_shared_experts,
    SLOT_num_experts_per_tok,
    SLOT_n_group,
    SLOT_topk_group,
    SLOT_num_hidden_layers,
    SLOT_first_k_dense_replace,
    SLOT_moe_layer_freq,
    SLOT_num_attention_heads,
    SLOT_q_lora_rank,
    SLOT_kv_lora_rank,
    SLOT_qk_nope_head_dim,
    SLOT_qk_rope_head_dim,
    SLOT_v_head_dim,
    SLOT_num_key_value_heads,
    SLOT_head_dim,
    SLOT_max_position_embeddings,
    SLOT_vocab_size,
    SLOT_attention,
    SLOT_scoring_func,
    SLOT_norm_topk_prob,
    SLOT_routed_scaling_factor,
    SLOT_rope_theta,
    SLOT_rms_norm_eps,
    SLOT_capacity_factor,
    SLOT_rope_scaling,
    SLOT_weight_dtype,
    SLOT_quantization_config,
    SLOT_torch_dtype,
    SLOT_model_type,
    /* Inside rope_scaling. */
    SLOT_rope_type,
    SLOT_factor,
    SLOT_original_max_position_embeddings,
    SLOT_beta_fast,
    SLOT_beta_slow,
    SLOT_mscale,
    SLOT_mscale_all_dim,
    SLOT_COUNT,
};

_Static_assert(SLOT_COUNT <= MOIRA_MODEL_CONFIG_MARK_SLOTS,
               "moira_model_config_t.marks is too small for the keys Moira reads");

/* Sizes beyond these are typing mistakes or hostile files; bounding them keeps every product the
 * runtime forms from them (I * D * 3 bytes, experts * layers, ...) far inside int64_t. */
#define MAX_DIMENSION ((int64_t)1 << 24)
#define MAX_POSITIONS ((int64_t)1 << 40)

/* Config files are a few kilobytes; anything this large is not one. */
#define MAX_CONFIG_BYTES ((size_t)16 << 20)

typedef enum value_kind {
    KIND_INT,          /* non-negative integer; null leaves the default */
    KIND_DOUBLE,       /* finite number; null leaves the default */
    KIND_BOOL,         /* true or false */
    KIND_SCORING,      /* softmax | sigmoid */
    KIND_ATTENTION,    /* mla | gqa */
    KIND_WEIGHT_DTYPE, /* f32 | f16 | bf16 | fp8_e4m3 */
    KIND_NAME,         /* the model's name */
    KIND_MODEL_TYPE,   /* Hugging Face model_type: only a fallback name */
    KIND_TORCH_DTYPE,  /* Hugging Face torch_dtype / dtype: a fallback weight_dtype */
    KIND_ROPE_SCALING,
    KIND_QUANTIZATION,
    KIND_ROPE_TYPE, /* inside rope_scaling */
} value_kind_t;

typedef struct key_spec {
    const char *key;
    value_kind_t kind;
    size_t offset; /* into moira_model_config_t; unused by kinds the parser handles itself */
    enum slot slot;
} key_spec_t;

#define CFG_KEY(key, kind)                                                                         \
    { #key, kind, offsetof(moira_model_config_t, key), SLOT_##key }
#define ALIAS_KEY(alias, key, kind)                                                                \
    { #alias, kind, offsetof(moira_model_config_t, key), SLOT_##key }
#define ROPE_OFFSET(key)                                                                           \
    (offsetof(moira_model_config_t, rope_scaling) + offsetof(moira_rope_scaling_t, key))
#define ROPE_KEY(key, kind)                                                                        \
    { #key, kind, ROPE_OFFSET(key), SLOT_##key }

/* The top-level keys Moira reads. The aliases are Qwen3-MoE's names for the same things, so that
 * its config.json loads as is. */
static const key_spec_t top_keys[] = {
    CFG_KEY(name, KIND_NAME),
    CFG_KEY(hidden_size, KIND_INT),
    CFG_KEY(moe_intermediate_size, KIND_INT),
    CFG_KEY(intermediate_size, KIND_INT),
    CFG_KEY(n_routed_experts, KIND_INT),
    ALIAS_KEY(num_experts, n_routed_experts, KIND_INT),
    CFG_KEY(n_shared_experts, KIND_INT),
    CFG_KEY(num_experts_per_tok, KIND_INT),
    CFG_KEY(n_group, KIND_INT),
    CFG_KEY(topk_group, KIND_INT),
    CFG_KEY(num_hidden_layers, KIND_INT),
    CFG_KEY(first_k_dense_replace, KIND_INT),
    CFG_KEY(moe_layer_freq, KIND_INT),
    ALIAS_KEY(decoder_sparse_step, moe_layer_freq, KIND_INT),
    CFG_KEY(num_attention_heads, KIND_INT),
    CFG_KEY(q_lora_rank, KIND_INT),
    CFG_KEY(kv_lora_rank, KIND_INT),
    CFG_KEY(qk_nope_head_dim, KIND_INT),
    CFG_KEY(qk_rope_head_dim, KIND_INT),
    CFG_KEY(v_head_dim, KIND_INT),
    CFG_KEY(num_key_value_heads, KIND_INT),
    CFG_KEY(head_dim, KIND_INT),
    CFG_KEY(max_position_embeddings, KIND_INT),
    CFG_KEY(vocab_size, KIND_INT),
    CFG_KEY(attention, KIND_ATTENTION),
    CFG_KEY(scoring_func, KIND_SCORING),
    CFG_KEY(norm_topk_prob, KIND_BOOL),
    CFG_KEY(routed_scaling_factor, KIND_DOUBLE),
    CFG_KEY(rope_theta, KIND_DOUBLE),
    CFG_KEY(rms_norm_eps, KIND_DOUBLE),
    CFG_KEY(capacity_factor, KIND_DOUBLE),
    CFG_KEY(rope_scaling, KIND_ROPE_SCALING),
    CFG_KEY(weight_dtype, KIND_WEIGHT_DTYPE),
    {"quantization_config", KIND_QUANTIZATION, 0, SLOT_quantization_config},
    {"torch_dtype", KIND_TORCH_DTYPE, 0, SLOT_torch_dtype},
    {"dtype", KIND_TORCH_DTYPE, 0, SLOT_torch_dtype},
    {"model_type", KIND_MODEL_TYPE, 0, SLOT_model_type},
};

/* The keys of rope_scaling; newer Hugging Face configs spell `type` as `rope_type`. */
static const key_spec_t rope_keys[] = {
    {"type", KIND_ROPE_TYPE, 0, SLOT_rope_type},
    {"rope_type", KIND_ROPE_TYPE, 0, SLOT_rope_type},
    ROPE_KEY(factor, KIND_DOUBLE),
    ROPE_KEY(original_max_position_embeddings, KIND_INT),
    ROPE_KEY(beta_fast, KIND_DOUBLE),
    ROPE_KEY(beta_slow, KIND_DOUBLE),
    ROPE_KEY(mscale, KIND_DOUBLE),
    ROPE_KEY(mscale_all_dim, KIND_DOUBLE),
};

/* Hugging Face config.json keys that do not change what Moira computes. A JSON config may carry
 * any key (Hugging Face's schema is open); a YAML config is Moira's own schema, where an unknown
 * key is an error so that a typo cannot silently fall back to a default, except these, so that a
 * config.json pasted into YAML still loads. */
static const char *const ignored_hf_keys[] = {
    "architectures",
    "attention_bias",
    "attention_dropout",
    "auto_map",
    "aux_loss_alpha",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "ep_size",
    "hidden_act",
    "initializer_range",
    "max_window_layers",
    "mlp_only_layers",
    "num_nextn_predict_layers",
    "output_router_logits",
    "pretraining_tp",
    "router_aux_loss_coef",
    "seq_aux",
    "sliding_window",
    "tie_word_embeddings",
    "topk_method",
    "transformers_version",
    "use_cache",
    "use_sliding_window",
    NULL,
};

/* JSON keys Moira does not read but that look like a misspelling of one it does: warned about
 * once the whole mapping is read, when the key they resemble is absent. */
#define MAX_NEAR_MISSES 8

typedef struct near_miss {
    yaml_mark_t mark;
    const key_spec_t *meant;
    char key[48];
} near_miss_t;

/* State of one parse. Everything it points at is borrowed. */
typedef struct parse_ctx {
    const char *file; /* for messages */
    const char *text;
    size_t len;
    bool json; /* the text is JSON (a Hugging Face config.json): unknown keys are allowed */
    near_miss_t near_misses[MAX_NEAR_MISSES];
    int n_near_misses;
    yaml_document_t *doc;
    moira_model_config_t *cfg;
    bool present[SLOT_COUNT]; /* given with a non-null value */
    char model_type[MOIRA_MODEL_CONFIG_NAME_MAX];
    bool have_torch_dtype;
    moira_dtype_t torch_dtype;
    /* quantization_config, resolved once the whole file is read (weight_dtype may follow it). */
    bool have_quant;
    yaml_mark_t quant_mark;
    char quant_method[32];
    yaml_mark_t quant_method_mark;
    bool have_quant_fmt;
    char quant_fmt[16];
    yaml_mark_t quant_fmt_mark;
    int64_t block[2];
    int block_count; /* -1 when weight_block_size is absent */
    yaml_mark_t block_mark;
    /* rope_scaling's type as first given, under either spelling ("type", "rope_type"). */
    const char *rope_type_key;
    const yaml_node_t *rope_type_value;
} parse_ctx_t;

static moira_config_mark_t mark_of(yaml_mark_t mark) {
    moira_config_mark_t m = {(int32_t)(mark.line + 1), (int32_t)(mark.column + 1)};
    if (mark.line >= INT32_MAX || mark.column >= INT32_MAX) m.line = m.column = 0;
    return m;
}

/* Formats the message first because moira_status_at has no va_list form. */
static moira_status_t fail_at_mark(const char *file, moira_config_mark_t mark, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static moira_status_t fail_at_mark(const char *file, moira_config_mark_t mark, const char *fmt,
                                   ...) {
    char message[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    return moira_status_at(MOIRA_CODE_INVALID_INPUT, file, mark.line, mark.column, "%s", message);
}

#define FAIL_AT(ctx, yaml_mark, ...) fail_at_mark((ctx)->file, mark_of(yaml_mark), __VA_ARGS__)

static bool is_null(const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)node->data.scalar.value;
    return node->data.scalar.length == 0 || !strcmp(v, "null") || !strcmp(v, "Null") ||
           !strcmp(v, "NULL") || !strcmp(v, "~");
}

/* A short description of a value for "expected X, got Y" messages. */
static const char *describe(const yaml_node_t *node, char *buf, size_t size) {
    if (node->type == YAML_MAPPING_NODE) return "a mapping";
    if (node->type == YAML_SEQUENCE_NODE) return "a list";
    if (is_null(node)) return "null";
    size_t n = node->data.scalar.length;
    const char *v = (const char *)node->data.scalar.value;
    char shown[48];
    size_t keep = n < 40 ? n : 40;
    size_t j = 0;
    for (size_t i = 0; i < keep && j + 1 < sizeof(shown); i++)
        shown[j++] = (v[i] >= 0x20 && v[i] != 0x7f) || (v[i] & 0x80) ? v[i] : '?';
    shown[j] = '\0';
    snprintf(buf, size, "%s\"%s%s\"",
             node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "" : "the string ", shown,
             n > keep ? "..." : "");
    return buf;
}

static bool is_plain_scalar(const yaml_node_t *node) {
    return node->type == YAML_SCALAR_NODE && node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* Scalars from libyaml are NUL-terminated, but may hold a NUL of their own ("\0" in quotes);
 * such a value can match no keyword. */
static const char *scalar_text(const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE) return NULL;
    const char *v = (const char *)node->data.scalar.value;
    return strlen(v) == node->data.scalar.length ? v : NULL;
}

static moira_status_t parse_int(parse_ctx_t *ctx, const char *key, const yaml_node_t *node,
                                int64_t *out) {
    char buf[96];
    const char *v = is_plain_scalar(node) ? scalar_text(node) : NULL;
    bool ok = v != NULL && *v != '\0';
    if (ok) {
        const char *p = v + (*v == '-' || *v == '+');
        ok = *p != '\0';
        for (; *p && ok; p++)
            ok = *p >= '0' && *p <= '9';
    }
    if (!ok)
        return FAIL_AT(ctx, node->start_mark, "%s: expected an integer, got %s", key,
                       describe(node, buf, sizeof(buf)));
    errno = 0;
    long long value = strtoll(v, NULL, 10);
    if (errno == ERANGE) return FAIL_AT(ctx, node->start_mark, "%s: %s is out of range", key, v);
    if (value < 0)
        return FAIL_AT(ctx, node->start_mark, "%s: must not be negative, got %lld", key, value);
    *out = value;
    return MOIRA_OK_STATUS;
}

static moira_status_t parse_double(parse_ctx_t *ctx, const char *key, const yaml_node_t *node,
                                   double *out) {
    char buf[96];
    const char *v = is_plain_scalar(node) ? scalar_text(node) : NULL;
    char *end = NULL;
    double value = 0;
    if (v && *v) {
        errno = 0;
        value = strtod(v, &end);
    }
    /* ERANGE with a finite result is an underflow (1e-320 is a subnormal, 1e-400 rounds to 0):
     * a number all the same, which the validator judges; only overflow is not a number. */
    if (!v || !*v || *end != '\0' || !isfinite(value))
        return FAIL_AT(ctx, node->start_mark, "%s: expected a finite number, got %s", key,
                       describe(node, buf, sizeof(buf)));
    *out = value;
    return MOIRA_OK_STATUS;
}

static moira_status_t parse_bool(parse_ctx_t *ctx, const char *key, const yaml_node_t *node,
                                 bool *out) {
    char buf[96];
    const char *v = is_plain_scalar(node) ? scalar_text(node) : NULL;
    if (v && (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "TRUE"))) {
        *out = true;
        return MOIRA_OK_STATUS;
    }
    if (v && (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "FALSE"))) {
        *out = false;
        return MOIRA_OK_STATUS;
    }
    return FAIL_AT(ctx, node->start_mark, "%s: expected true or false, got %s", key,
                   describe(node, buf, sizeof(buf)));
}

/* A keyword or name: any scalar style, since JSON quotes every string. */
static moira_status_t parse_text(parse_ctx_t *ctx, const char *key, const yaml_node_t *node,
                                 const char **out) {
    char buf[96];
    const char *v = scalar_text(node);
    if (!v || is_null(node))
        return FAIL_AT(ctx, node->start_mark, "%s: expected a string, got %s", key,
                       describe(node, buf, sizeof(buf)));
    *out = v;
    return MOIRA_OK_STATUS;
}

static bool torch_dtype_from_name(const char *name, moira_dtype_t *out) {
    if (!strcmp(name, "bfloat16"))
        *out = MOIRA_DTYPE_BF16;
    else if (!strcmp(name, "float16") || !strcmp(name, "half"))
        *out = MOIRA_DTYPE_F16;
    else if (!strcmp(name, "float32") || !strcmp(name, "float"))
        *out = MOIRA_DTYPE_F32;
    else
        return false;
    return true;
}

static const key_spec_t *find_key(const key_spec_t *table, size_t count, const char *key) {
    for (size_t i = 0; i < count; i++)
        if (!strcmp(table[i].key, key)) return &table[i];
    return NULL;
}

/* The key of `table` that `key` is most likely a misspelling of, or NULL. */
static const key_spec_t *suggest_key(const key_spec_t *table, size_t count, const char *key) {
    const char *names[64];
    size_t n = 0;
    for (size_t i = 0; i < count && n + 1 < sizeof(names) / sizeof(names[0]); i++)
        names[n++] = table[i].key;
    names[n] = NULL;
    const char *meant = moira_suggest(key, names);
    return meant ? find_key(table, count, meant) : NULL;
}

/* A key no table knows. YAML: an error naming the key it resembles (Hugging Face keys that do
 * not change the math excepted). JSON: allowed, remembered when it resembles a key Moira reads. */
static moira_status_t unknown_key(parse_ctx_t *ctx, const yaml_node_t *key, const char *k,
                                  const key_spec_t *table, size_t count, const char *prefix) {
    const key_spec_t *meant = suggest_key(table, count, k);
    if (ctx->json) {
        if (meant && ctx->n_near_misses < MAX_NEAR_MISSES && strlen(k) < 48) {
            near_miss_t *miss = &ctx->near_misses[ctx->n_near_misses++];
            miss->mark = key->start_mark;
            miss->meant = meant;
            snprintf(miss->key, sizeof(miss->key), "%s", k);
        }
        return MOIRA_OK_STATUS;
    }
    if (!prefix) {
        for (const char *const *hf = ignored_hf_keys; *hf; hf++)
            if (!strcmp(*hf, k)) return MOIRA_OK_STATUS;
    }
    char buf[96];
    if (meant)
        return FAIL_AT(ctx, key->start_mark, "unknown key %s%s%s (did you mean \"%s\"?)",
                       describe(key, buf, sizeof(buf)), prefix ? " in " : "", prefix ? prefix : "",
                       meant->key);
    return FAIL_AT(ctx, key->start_mark,
                   "unknown key %s%s%s (a model config takes the Hugging Face DeepSeek names; "
                   "see docs/formats.md)",
                   describe(key, buf, sizeof(buf)), prefix ? " in " : "", prefix ? prefix : "");
}

/* Warns about JSON keys that resemble a key Moira reads which the file does not give: Moira
 * ignores them and uses the default, which is probably not what the author meant. */
static void warn_near_misses(const parse_ctx_t *ctx) {
    for (int i = 0; i < ctx->n_near_misses; i++) {
        const near_miss_t *miss = &ctx->near_misses[i];
        if (ctx->cfg->marks[miss->meant->slot].line != 0) continue;
        moira_config_mark_t at = mark_of(miss->mark);
        MOIRA_LOG_W("%s:%d:%d: key \"%s\" is not one Moira reads (did you mean \"%s\"?); "
                    "%s keeps its default",
                    ctx->file, at.line, at.column, miss->key, miss->meant->key, miss->meant->key);
    }
}

static moira_status_t parse_mapping(parse_ctx_t *ctx, const yaml_node_t *mapping,
                                    const key_spec_t *table, size_t count, const char *prefix);

static moira_status_t parse_quantization(parse_ctx_t *ctx, const yaml_node_t *node) {
    char buf[96];
    if (is_null(node)) return MOIRA_OK_STATUS;
    if (node->type != YAML_MAPPING_NODE)
        return FAIL_AT(ctx, node->start_mark, "quantization_config: expected a mapping, got %s",
                       describe(node, buf, sizeof(buf)));
    ctx->have_quant = true;
    ctx->quant_mark = node->start_mark;
    ctx->block_count = -1;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(ctx->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(ctx->doc, pair->value);
        const char *k = key ? scalar_text(key) : NULL;
        if (!k || !value) continue;
        if (!strcmp(k, "quant_method") || !strcmp(k, "fmt")) {
            const char *text = NULL;
            bool is_method = k[0] == 'q';
            MOIRA_RETURN_IF_ERROR(parse_text(
                ctx, is_method ? "quantization_config.quant_method" : "quantization_config.fmt",
                value, &text));
            if (is_method) {
                snprintf(ctx->quant_method, sizeof(ctx->quant_method), "%s", text);
                ctx->quant_method_mark = value->start_mark;
            } else {
                snprintf(ctx->quant_fmt, sizeof(ctx->quant_fmt), "%s", text);
                ctx->quant_fmt_mark = value->start_mark;
                ctx->have_quant_fmt = true;
            }
        } else if (!strcmp(k, "weight_block_size") && !is_null(value)) {
            ctx->block_mark = value->start_mark;
            if (value->type != YAML_SEQUENCE_NODE)
                return FAIL_AT(ctx, value->start_mark,
                               "quantization_config.weight_block_size: expected a list, got %s",
                               describe(value, buf, sizeof(buf)));
            ctx->block_count = 0;
            for (yaml_node_item_t *item = value->data.sequence.items.start;
                 item < value->data.sequence.items.top; item++) {
                yaml_node_t *element = yaml_document_get_node(ctx->doc, *item);
                int64_t v = 0;
                if (!element) continue;
                MOIRA_RETURN_IF_ERROR(
                    parse_int(ctx, "quantization_config.weight_block_size", element, &v));
                if (ctx->block_count < 2) ctx->block[ctx->block_count] = v;
                if (ctx->block_count < INT_MAX) ctx->block_count++;
            }
        }
    }
    return MOIRA_OK_STATUS;
}

static moira_status_t parse_value(parse_ctx_t *ctx, const key_spec_t *spec, const char *key,
                                  const yaml_node_t *node) {
    char buf[96];
    moira_model_config_t *cfg = ctx->cfg;
    void *field = (char *)cfg + spec->offset;
    const char *text = NULL;
    bool null = is_null(node);
    switch (spec->kind) {
    case KIND_INT:
        if (null) return MOIRA_OK_STATUS;
        MOIRA_RETURN_IF_ERROR(parse_int(ctx, key, node, (int64_t *)field));
        break;
    case KIND_DOUBLE:
        if (null) return MOIRA_OK_STATUS;
        MOIRA_RETURN_IF_ERROR(parse_double(ctx, key, node, (double *)field));
        break;
    case KIND_BOOL:
        if (null) return MOIRA_OK_STATUS;
        MOIRA_RETURN_IF_ERROR(parse_bool(ctx, key, node, (bool *)field));
        break;
    case KIND_SCORING:
        if (null) return MOIRA_OK_STATUS;
        MOIRA_RETURN_IF_ERROR(parse_text(ctx, key, node, &text));
        if (!strcmp(text, "softmax"))
            cfg->scoring_func = MOIRA_SCORING_FUNC_SOFTMAX;
        else if (!strcmp(text, "sigmoid"))
            cfg->scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
        else
            return FAIL_AT(ctx, node->start_mark,
                           "%s: unknown scoring function %s (expected softmax or sigmoid)", key,
                           describe(node, buf, sizeof(buf)));
        break;
    case KIND_ATTENTION:
        if (null) return MOIRA_OK_STATUS;
        MOIRA_RETURN_IF_ERROR(parse_text(ctx, key, node, &text));
        if (!strcmp(text, "mla"))
            cfg->attention = MOIRA_ATTENTION_MLA;
        else if (!strcmp(text, "gqa"))
            cfg->attention = MOIRA_ATTENTION_GQA;
        else
            return FAIL_AT(ctx, node->start_mark, "%s: unknown attention %s (expected mla or gqa)",
                           key, describe(node, buf, sizeof(buf)));
        break;
    case KIND_WEIGHT_DTYPE: {
        moira_dtype_t dtype;
        if (null) return MOIRA_OK_STATUS;
        MOIRA_RETURN_IF_ERROR(parse_text(ctx, key, node, &text));
        if (!moira_dtype_from_config_name(text, &dtype) || !moira_dtype_is_float(dtype))
            return FAIL_AT(ctx, node->start_mark,
                           "%s: expected one of f32, f16, bf16, fp8_e4m3, got %s", key,
                           describe(node, buf, sizeof(buf)));
        cfg->weight_dtype = dtype;
        break;
    }
    case KIND_NAME:
        MOIRA_RETURN_IF_ERROR(parse_text(ctx, key, node, &text));
        if (!*text || strlen(text) >= sizeof(cfg->name))
            return FAIL_AT(ctx, node->start_mark, "%s: must be 1 to %d characters long", key,
                           (int)sizeof(cfg->name) - 1);
        snprintf(cfg->name, sizeof(cfg->name), "%s", text);
        break;
    case KIND_MODEL_TYPE:
        if (null || !scalar_text(node)) return MOIRA_OK_STATUS;
        snprintf(ctx->model_type, sizeof(ctx->model_type), "%s", scalar_text(node));
        break;
    case KIND_TORCH_DTYPE:
        /* Only a hint; a value Moira does not know ("auto") leaves the default. */
        if (!null && scalar_text(node))
            ctx->have_torch_dtype = torch_dtype_from_name(scalar_text(node), &ctx->torch_dtype);
        break;
    case KIND_ROPE_SCALING:
        if (null) return MOIRA_OK_STATUS;
        if (node->type != YAML_MAPPING_NODE)
            return FAIL_AT(ctx, node->start_mark, "%s: expected a mapping, got %s", key,
                           describe(node, buf, sizeof(buf)));
        MOIRA_RETURN_IF_ERROR(
            parse_mapping(ctx, node, rope_keys, sizeof(rope_keys) / sizeof(rope_keys[0]), key));
        if (!ctx->present[SLOT_rope_type])
            return FAIL_AT(ctx, node->start_mark, "%s: missing required key type", key);
        if (cfg->rope_scaling.enabled) {
            if (!ctx->present[SLOT_factor])
                return FAIL_AT(ctx, node->start_mark, "%s: missing required key factor", key);
            if (!ctx->present[SLOT_original_max_position_embeddings])
                return FAIL_AT(ctx, node->start_mark,
                               "%s: missing required key original_max_position_embeddings", key);
        }
        break;
    case KIND_ROPE_TYPE:
        MOIRA_RETURN_IF_ERROR(parse_text(ctx, key, node, &text));
        /* "default" is how newer Hugging Face configs say "no scaling". */
        if (!strcmp(text, "yarn"))
            cfg->rope_scaling.enabled = true;
        else if (strcmp(text, "default") != 0)
            return FAIL_AT(ctx, node->start_mark, "rope_scaling type %s is not implemented",
                           describe(node, buf, sizeof(buf)));
        break;
    case KIND_QUANTIZATION:
        MOIRA_RETURN_IF_ERROR(parse_quantization(ctx, node));
        break;
    }
    ctx->present[spec->slot] = !null;
    return MOIRA_OK_STATUS;
}

/* Reads the keys of one mapping that `table` knows and skips the rest. A key given twice (or
 * under two spellings) is an error rather than "last one wins", so that a pasted-in duplicate
 * cannot silently change the model. */
static moira_status_t parse_mapping(parse_ctx_t *ctx, const yaml_node_t *mapping,
                                    const key_spec_t *table, size_t count, const char *prefix) {
    char buf[96];
    for (yaml_node_pair_t *pair = mapping->data.mapping.pairs.start;
         pair < mapping->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(ctx->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(ctx->doc, pair->value);
        if (!key || !value) continue;
        const char *k = scalar_text(key);
        if (!k)
            return FAIL_AT(ctx, key->start_mark, "keys must be plain strings, got %s",
                           describe(key, buf, sizeof(buf)));
        const key_spec_t *spec = find_key(table, count, k);
        if (!spec) {
            MOIRA_RETURN_IF_ERROR(unknown_key(ctx, key, k, table, count, prefix));
            continue;
        }
        char full[96];
        if (prefix)
            snprintf(full, sizeof(full), "%s.%s", prefix, k);
        else
            snprintf(full, sizeof(full), "%s", k);
        moira_config_mark_t *seen = &ctx->cfg->marks[spec->slot];
        /* transformers writes rope_scaling's type under both spellings when it re-saves a
         * config; that is one key said twice, fine while both say the same. */
        if (seen->line != 0 && spec->slot == SLOT_rope_type && ctx->rope_type_key &&
            strcmp(ctx->rope_type_key, k) != 0) {
            const char *first = scalar_text(ctx->rope_type_value), *second = scalar_text(value);
            if (first && second && !strcmp(first, second)) continue;
            return FAIL_AT(ctx, key->start_mark,
                           "%s \"%s\" disagrees with %s.%s \"%s\" given at %d:%d", full,
                           second ? second : "?", prefix ? prefix : "", ctx->rope_type_key,
                           first ? first : "?", seen->line, seen->column);
        }
        if (seen->line != 0)
            return FAIL_AT(ctx, key->start_mark, "duplicate key %s (first given at %d:%d)", full,
                           seen->line, seen->column);
        if (spec->slot == SLOT_rope_type) {
            ctx->rope_type_key = spec->key;
            ctx->rope_type_value = value;
        }
        *seen = mark_of(value->start_mark);
        MOIRA_RETURN_IF_ERROR(parse_value(ctx, spec, full, value));
    }
    return MOIRA_OK_STATUS;
}

/* Picks weight_dtype when the file does not give it; see moira_model_config_load. */
static moira_status_t resolve_weight_dtype(parse_ctx_t *ctx) {
    moira_model_config_t *cfg = ctx->cfg;
    if (ctx->present[SLOT_weight_dtype]) return MOIRA_OK_STATUS;
    bool own_quant = ctx->have_quant &&
                     (!strcmp(ctx->quant_method, "mxfp4") || !strcmp(ctx->quant_method, "int8"));
    if (own_quant) {
        /* `moira quantize`'s own: the quantised tensors say their format themselves (the reader
         * pairs them with their scales); weight_dtype stays the dtype of the rest. */
        cfg->weight_dtype = ctx->have_torch_dtype ? ctx->torch_dtype : MOIRA_DTYPE_F32;
        cfg->experts_quantized = true;
        cfg->expert_dtype = ctx->quant_method[0] == 'm' ? MOIRA_DTYPE_MXFP4 : MOIRA_DTYPE_INT8;
    } else if (ctx->have_quant && ctx->quant_method[0]) {
        if (strcmp(ctx->quant_method, "fp8") != 0)
            return FAIL_AT(ctx, ctx->quant_method_mark,
                           "quantization_config quant_method \"%s\" is not supported (Moira "
                           "reads fp8 with 128x128 blocks, and mxfp4 and int8 as moira quantize "
                           "writes them); set weight_dtype to override",
                           ctx->quant_method);
        if (ctx->have_quant_fmt && strcmp(ctx->quant_fmt, "e4m3") != 0)
            return FAIL_AT(ctx, ctx->quant_fmt_mark,
                           "quantization_config fmt \"%s\" is not supported (only e4m3)",
                           ctx->quant_fmt);
        if (ctx->block_count != 2 || ctx->block[0] != 128 || ctx->block[1] != 128)
            return FAIL_AT(ctx, ctx->block_count < 0 ? ctx->quant_mark : ctx->block_mark,
                           "quantization_config: fp8 needs weight_block_size [128, 128], the "
                           "only block size Moira reads");
        cfg->weight_dtype = MOIRA_DTYPE_F8_E4M3;
    } else if (ctx->have_torch_dtype) {
        cfg->weight_dtype = ctx->torch_dtype;
    } else {
        cfg->weight_dtype = MOIRA_DTYPE_F32;
    }
    return MOIRA_OK_STATUS;
}

/* Copies `len` bytes of `src` as a name, cut to fit. */
static void set_name(moira_model_config_t *cfg, const char *src, size_t len) {
    if (len >= sizeof(cfg->name)) len = sizeof(cfg->name) - 1;
    memcpy(cfg->name, src, len);
    cfg->name[len] = '\0';
}

/* The name of a model without a `name:` key: the file's basename without extension, or for a
 * Hugging Face checkout (".../DeepSeek-V3/config.json") the folder's name, or model_type. */
static void resolve_name(parse_ctx_t *ctx, const char *display_name) {
    moira_model_config_t *cfg = ctx->cfg;
    if (ctx->present[SLOT_name]) return;
    if (display_name && *display_name) {
        size_t end = strlen(display_name);
        while (end > 1 && display_name[end - 1] == '/')
            end--;
        size_t start = end;
        while (start > 0 && display_name[start - 1] != '/')
            start--;
        size_t stem_end = end;
        for (size_t i = end; i > start + 1; i--) {
            if (display_name[i - 1] == '.') {
                stem_end = i - 1;
                break;
            }
        }
        const char *stem = display_name + start;
        size_t stem_len = stem_end - start;
        if (!(stem_len == 6 && !strncmp(stem, "config", 6)) && stem_len > 0) {
            set_name(cfg, stem, stem_len);
            return;
        }
        /* config.json: use the folder it sits in, when the path names one. */
        size_t dir_end = start;
        while (dir_end > 0 && display_name[dir_end - 1] == '/')
            dir_end--;
        size_t dir_start = dir_end;
        while (dir_start > 0 && display_name[dir_start - 1] != '/')
            dir_start--;
        size_t dir_len = dir_end - dir_start;
        const char *dir = display_name + dir_start;
        if (dir_len > 0 && !(dir_len == 1 && dir[0] == '.') &&
            !(dir_len == 2 && dir[0] == '.' && dir[1] == '.')) {
            set_name(cfg, dir, dir_len);
            return;
        }
    }
    if (ctx->model_type[0])
        set_name(cfg, ctx->model_type, strlen(ctx->model_type));
    else if (display_name && *display_name)
        set_name(cfg, "config", 6);
    else
        set_name(cfg, "model", 5);
}

/* Required keys: without them there is no model to run. A key given as null counts as missing
 * but is located at its value. */
static moira_status_t check_required(parse_ctx_t *ctx) {
    moira_model_config_t *cfg = ctx->cfg;
    static const struct {
        const char *key;
        enum slot slot;
        int when; /* 0 always, 1 MLA only, 3 when the model has dense layers */
    } required[] = {
        {"hidden_size", SLOT_hidden_size, 0},
        {"num_hidden_layers", SLOT_num_hidden_layers, 0},
        {"num_attention_heads", SLOT_num_attention_heads, 0},
        {"n_routed_experts", SLOT_n_routed_experts, 0},
        {"moe_intermediate_size", SLOT_moe_intermediate_size, 0},
        {"num_experts_per_tok", SLOT_num_experts_per_tok, 0},
        {"kv_lora_rank", SLOT_kv_lora_rank, 1},
        {"qk_nope_head_dim", SLOT_qk_nope_head_dim, 1},
        {"qk_rope_head_dim", SLOT_qk_rope_head_dim, 1},
        {"v_head_dim", SLOT_v_head_dim, 1},
        {"intermediate_size", SLOT_intermediate_size, 3},
    };
    bool dense_layers =
        cfg->first_k_dense_replace > 0 || (cfg->moe_layer_freq > 1 && cfg->num_hidden_layers > 1);
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (required[i].when == 1 && cfg->attention != MOIRA_ATTENTION_MLA) continue;
        if (required[i].when == 3 && !dense_layers) continue;
        if (ctx->present[required[i].slot]) continue;
        moira_config_mark_t at = cfg->marks[required[i].slot];
        if (at.line != 0)
            return fail_at_mark(ctx->file, at, "%s: expected an integer, got null",
                                required[i].key);
        return fail_at_mark(ctx->file, cfg->marks[SLOT_top], "missing required key %s%s",
                            required[i].key,
                            required[i].when == 3 ? " (the model has dense layers)" : "");
    }
    return MOIRA_OK_STATUS;
}

/* JSON forbids a comma before '}' or ']', YAML allows it, and libyaml reads JSON as YAML. A
 * config.json with one would be rejected by every JSON tool, so when the text is JSON (it opens
 * with '{' or '[') Moira rejects it too rather than accept a file its users' tools refuse. */
static moira_status_t check_json_trailing_commas(parse_ctx_t *ctx) {
    if (!ctx->json) return MOIRA_OK_STATUS;

    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot start the YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx->text, ctx->len);
    moira_status_t status = MOIRA_OK_STATUS;
    bool after_comma = false;
    yaml_mark_t comma_mark = {0, 0, 0};
    for (;;) {
        yaml_token_t token;
        if (!yaml_parser_scan(&parser, &token)) break; /* the loader reports scanner errors */
        yaml_token_type_t type = token.type;
        if (after_comma &&
            (type == YAML_FLOW_MAPPING_END_TOKEN || type == YAML_FLOW_SEQUENCE_END_TOKEN)) {
            status = FAIL_AT(ctx, comma_mark, "trailing comma before '%c' is not valid JSON",
                             type == YAML_FLOW_MAPPING_END_TOKEN ? '}' : ']');
        }
        after_comma = type == YAML_FLOW_ENTRY_TOKEN;
        if (after_comma) comma_mark = token.start_mark;
        yaml_token_delete(&token);
        if (status || type == YAML_STREAM_END_TOKEN) break;
    }
    yaml_parser_delete(&parser);
    return status;
}

/* Whether the text is JSON: its first character (after a byte-order mark and white space) opens
 * an object or array. YAML configs never start so. */
static bool looks_like_json(const char *text, size_t len) {
    size_t i = 0;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) i = 3;
    while (i < len && text[i] && strchr(" \t\r\n", text[i]))
        i++;
    return i < len && (text[i] == '{' || text[i] == '[');
}

/* Turns a libyaml failure into a located status. Reader errors (bad encoding, control
 * characters) carry only a byte offset, so the line and column are counted from the text. */
static moira_status_t yaml_failure(parse_ctx_t *ctx, const yaml_parser_t *parser) {
    if (parser->error == YAML_MEMORY_ERROR)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory while parsing",
                                 ctx->file);
    const char *problem = parser->problem ? parser->problem : "malformed YAML";
    const char *hint = moira_yaml_hint(parser, ctx->text, ctx->len);
    if (parser->error == YAML_READER_ERROR) {
        moira_config_mark_t at = {1, 1};
        for (size_t i = 0; i < parser->problem_offset && i < ctx->len; i++) {
            if (ctx->text[i] == '\n') {
                at.line++;
                at.column = 1;
            } else if (((unsigned char)ctx->text[i] & 0xC0) != 0x80) {
                at.column++;
            }
        }
        return fail_at_mark(ctx->file, at, "%s", problem);
    }
    if (parser->context) {
        moira_config_mark_t context_at = mark_of(parser->context_mark);
        return FAIL_AT(ctx, parser->problem_mark, "%s (%s started at %d:%d)%s", problem,
                       parser->context, context_at.line, context_at.column, hint);
    }
    return FAIL_AT(ctx, parser->problem_mark, "%s%s", problem, hint);
}

static void set_defaults(moira_model_config_t *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->n_group = 1;
    cfg->topk_group = 1;
    cfg->moe_layer_freq = 1;
    cfg->max_position_embeddings = 2048;
    cfg->attention = MOIRA_ATTENTION_MLA;
    cfg->scoring_func = MOIRA_SCORING_FUNC_SOFTMAX;
    cfg->routed_scaling_factor = 1.0;
    cfg->rope_theta = 10000.0;
    cfg->rms_norm_eps = 1e-6;
    cfg->rope_scaling.factor = 1.0;
    cfg->rope_scaling.beta_fast = 32.0;
    cfg->rope_scaling.beta_slow = 1.0;
    cfg->rope_scaling.mscale = 1.0;
    cfg->rope_scaling.mscale_all_dim = 0.0;
    cfg->weight_dtype = MOIRA_DTYPE_F32;
}

static moira_status_t parse_document(parse_ctx_t *ctx, yaml_parser_t *parser,
                                     const char *display_name) {
    moira_model_config_t *cfg = ctx->cfg;
    char buf[96];
    yaml_node_t *root = yaml_document_get_root_node(ctx->doc);
    if (!root)
        return fail_at_mark(ctx->file, (moira_config_mark_t){1, 1},
                            "empty model config (expected a mapping of model settings)");
    if (root->type != YAML_MAPPING_NODE)
        return FAIL_AT(ctx, root->start_mark,
                       "the top level must be a mapping of model settings, got %s",
                       describe(root, buf, sizeof(buf)));
    cfg->marks[SLOT_top] = mark_of(root->start_mark);

    /* A second document would be silently ignored by the loader; say so instead. */
    yaml_document_t next;
    if (!yaml_parser_load(parser, &next)) return yaml_failure(ctx, parser);
    yaml_node_t *next_root = yaml_document_get_root_node(&next);
    yaml_mark_t next_mark = next_root ? next_root->start_mark : next.start_mark;
    yaml_document_delete(&next);
    if (next_root)
        return FAIL_AT(ctx, next_mark, "a model config holds one YAML document, found a second");

    MOIRA_RETURN_IF_ERROR(
        parse_mapping(ctx, root, top_keys, sizeof(top_keys) / sizeof(top_keys[0]), NULL));
    warn_near_misses(ctx);

    /* Hugging Face GQA models (Qwen3-MoE) have key/value heads and no latent rank. */
    if (!ctx->present[SLOT_attention] && ctx->present[SLOT_num_key_value_heads] &&
        !ctx->present[SLOT_kv_lora_rank])
        cfg->attention = MOIRA_ATTENTION_GQA;
    if (!ctx->present[SLOT_topk_group]) cfg->topk_group = cfg->n_group;
    if (!ctx->present[SLOT_num_key_value_heads])
        cfg->num_key_value_heads = cfg->num_attention_heads;
    if (!ctx->present[SLOT_head_dim] && cfg->attention == MOIRA_ATTENTION_GQA &&
        cfg->num_attention_heads > 0)
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;

    MOIRA_RETURN_IF_ERROR(check_required(ctx));
    MOIRA_RETURN_IF_ERROR(resolve_weight_dtype(ctx));
    resolve_name(ctx, display_name);
    return moira_model_config_validate(cfg, ctx->file);
}

moira_status_t moira_model_config_parse_string(const char *text, size_t len,
                                               const char *display_name,
                                               moira_model_config_t *out_config) {
    if (!out_config || (!text && len > 0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "moira_model_config_parse_string: null argument");
    parse_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.file = display_name ? display_name : "<input>";
    ctx.text = text ? text : "";
    ctx.len = len;
    ctx.cfg = out_config;
    ctx.block_count = -1;
    set_defaults(out_config);
    ctx.json = looks_like_json(ctx.text, ctx.len);

    MOIRA_RETURN_IF_ERROR(moira_yaml_check_depth(ctx.text, ctx.len, ctx.file));
    MOIRA_RETURN_IF_ERROR(check_json_trailing_commas(&ctx));

    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot start the YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx.text, ctx.len);
    yaml_document_t doc;
    moira_status_t status;
    if (!yaml_parser_load(&parser, &doc)) {
        status = yaml_failure(&ctx, &parser);
    } else {
        ctx.doc = &doc;
        status = parse_document(&ctx, &parser, display_name);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    return status;
}

moira_status_t moira_model_config_load(const char *path, moira_model_config_t *out_config) {
    if (!path || !out_config)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "moira_model_config_load: null argument");
    /* A downloaded Hugging Face model is a folder; its config is config.json inside. */
    char *joined = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path);
        joined = malloc(n + sizeof("/config.json"));
        if (!joined) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
        memcpy(joined, path, n);
        memcpy(joined + n, (n > 0 && path[n - 1] == '/') ? "config.json" : "/config.json",
               sizeof("/config.json"));
        path = joined;
    }
    char *text = NULL;
    size_t len = 0;
    moira_status_t status = moira_read_file(path, "model config", MAX_CONFIG_BYTES, &text, &len);
    if (!status) status = moira_model_config_parse_string(text, len, path, out_config);
    free(text);
    free(joined);
    return status;
}

void moira_model_config_default(moira_model_config_t *out_config) {
    moira_model_config_t *c = out_config;
    set_defaults(c);
    snprintf(c->name, sizeof(c->name), "moira-tiny");
    c->hidden_size = 256;
    c->moe_intermediate_size = 128;
    c->intermediate_size = 512;
    c->n_routed_experts = 32;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 4;
    c->n_group = 4;
    c->topk_group = 2;
    c->num_hidden_layers = 4;
    c->first_k_dense_replace = 1;
    c->moe_layer_freq = 1;
    c->num_attention_heads = 4;
    c->q_lora_rank = 96;
    c->kv_lora_rank = 64;
    c->qk_nope_head_dim = 32;
    c->qk_rope_head_dim = 16;
    c->v_head_dim = 32;
    c->num_key_value_heads = 4;
    c->head_dim = 0;
    c->max_position_embeddings = 16384;
    c->vocab_size = 0;
    c->attention = MOIRA_ATTENTION_MLA;
    c->scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
    c->norm_topk_prob = true;
    c->routed_scaling_factor = 2.5;
    c->rope_theta = 10000.0;
    c->rms_norm_eps = 1e-6;
    c->capacity_factor = 0.0;
    c->rope_scaling.enabled = true;
    c->rope_scaling.factor = 4.0;
    c->rope_scaling.original_max_position_embeddings = 4096;
    c->rope_scaling.beta_fast = 32.0;
    c->rope_scaling.beta_slow = 1.0;
    c->rope_scaling.mscale = 1.0;
    c->rope_scaling.mscale_all_dim = 1.0;
    c->weight_dtype = MOIRA_DTYPE_BF16;
}

/* DESIGN.md §4's ym(f, m): YaRN's attention-temperature correction. */
static double yarn_mscale(double factor, double mscale) {
    return factor <= 1 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

/* The location of the first of two fields that came from the file, else of the top mapping,
 * else none (a config built in code). */
static moira_config_mark_t locate(const moira_model_config_t *c, enum slot a, enum slot b) {
    if (c->marks[a].line) return c->marks[a];
    if (c->marks[b].line) return c->marks[b];
    return c->marks[SLOT_top];
}

#define INVALID(a, b, ...) fail_at_mark(path, locate(c, a, b), __VA_ARGS__)

moira_status_t moira_model_config_validate(const moira_model_config_t *c, const char *path) {
    if (!c)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "moira_model_config_validate: null config");
    if (!path) path = "<model config>";
    if (!memchr(c->name, '\0', sizeof(c->name)) || !c->name[0])
        return INVALID(SLOT_name, SLOT_top, "name must be 1 to %d characters long",
                       (int)sizeof(c->name) - 1);

    /* Integer fields: lowest allowed value, and whether they matter for this attention kind. */
    const struct {
        const char *key;
        int64_t value;
        enum slot slot;
        int64_t min;
        int64_t max;
        int only; /* 0 always, 1 MLA only, 2 GQA only */
    } ints[] = {
        {"hidden_size", c->hidden_size, SLOT_hidden_size, 1, MAX_DIMENSION, 0},
        {"moe_intermediate_size", c->moe_intermediate_size, SLOT_moe_intermediate_size, 1,
         MAX_DIMENSION, 0},
        {"intermediate_size", c->intermediate_size, SLOT_intermediate_size, 0, MAX_DIMENSION, 0},
        {"n_routed_experts", c->n_routed_experts, SLOT_n_routed_experts, 1, MAX_DIMENSION, 0},
        {"n_shared_experts", c->n_shared_experts, SLOT_n_shared_experts, 0, MAX_DIMENSION, 0},
        {"num_experts_per_tok", c->num_experts_per_tok, SLOT_num_experts_per_tok, 1, MAX_DIMENSION,
         0},
        {"n_group", c->n_group, SLOT_n_group, 1, MAX_DIMENSION, 0},
        {"topk_group", c->topk_group, SLOT_topk_group, 1, MAX_DIMENSION, 0},
        {"num_hidden_layers", c->num_hidden_layers, SLOT_num_hidden_layers, 1, MAX_DIMENSION, 0},
        {"first_k_dense_replace", c->first_k_dense_replace, SLOT_first_k_dense_replace, 0,
         MAX_DIMENSION, 0},
        {"moe_layer_freq", c->moe_layer_freq, SLOT_moe_layer_freq, 1, MAX_DIMENSION, 0},
        {"num_attention_heads", c->num_attention_heads, SLOT_num_attention_heads, 1, MAX_DIMENSION,
         0},
        {"max_position_embeddings", c->max_position_embeddings, SLOT_max_position_embeddings, 1,
         MAX_POSITIONS, 0},
        {"vocab_size", c->vocab_size, SLOT_vocab_size, 0, MAX_DIMENSION, 0},
        {"q_lora_rank", c->q_lora_rank, SLOT_q_lora_rank, 0, MAX_DIMENSION, 1},
        {"kv_lora_rank", c->kv_lora_rank, SLOT_kv_lora_rank, 1, MAX_DIMENSION, 1},
        {"qk_nope_head_dim", c->qk_nope_head_dim, SLOT_qk_nope_head_dim, 1, MAX_DIMENSION, 1},
        {"qk_rope_head_dim", c->qk_rope_head_dim, SLOT_qk_rope_head_dim, 1, MAX_DIMENSION, 1},
        {"v_head_dim", c->v_head_dim, SLOT_v_head_dim, 1, MAX_DIMENSION, 1},
        {"num_key_value_heads", c->num_key_value_heads, SLOT_num_key_value_heads, 1, MAX_DIMENSION,
         2},
        {"head_dim", c->head_dim, SLOT_head_dim, 1, MAX_DIMENSION, 2},
    };
    if (c->attention != MOIRA_ATTENTION_MLA && c->attention != MOIRA_ATTENTION_GQA)
        return INVALID(SLOT_attention, SLOT_top, "attention: unknown kind %d (expected mla or gqa)",
                       (int)c->attention);
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        if (ints[i].only == 1 && c->attention != MOIRA_ATTENTION_MLA) continue;
        if (ints[i].only == 2 && c->attention != MOIRA_ATTENTION_GQA) continue;
        if (ints[i].value < ints[i].min)
            return INVALID(ints[i].slot, SLOT_top, "%s must be %s, got %lld", ints[i].key,
                           ints[i].min > 0 ? "positive" : "non-negative", (long long)ints[i].value);
        if (ints[i].value > ints[i].max)
            return INVALID(ints[i].slot, SLOT_top, "%s must be at most %lld, got %lld", ints[i].key,
                           (long long)ints[i].max, (long long)ints[i].value);
    }

    if (c->first_k_dense_replace > c->num_hidden_layers)
        return INVALID(SLOT_first_k_dense_replace, SLOT_top,
                       "first_k_dense_replace (%lld) must not exceed num_hidden_layers (%lld)",
                       (long long)c->first_k_dense_replace, (long long)c->num_hidden_layers);
    bool dense_layers =
        c->first_k_dense_replace > 0 || (c->moe_layer_freq > 1 && c->num_hidden_layers > 1);
    if (dense_layers && c->intermediate_size <= 0)
        return INVALID(SLOT_intermediate_size, SLOT_first_k_dense_replace,
                       "intermediate_size must be positive: the model has dense layers");

    /* Routing. */
    if (c->scoring_func != MOIRA_SCORING_FUNC_SOFTMAX &&
        c->scoring_func != MOIRA_SCORING_FUNC_SIGMOID)
        return INVALID(SLOT_scoring_func, SLOT_top,
                       "scoring_func: unknown scoring function %d (expected softmax or sigmoid)",
                       (int)c->scoring_func);
    if (c->n_routed_experts % c->n_group != 0)
        return INVALID(SLOT_n_group, SLOT_n_routed_experts,
                       "n_routed_experts (%lld) must be divisible by n_group (%lld)",
                       (long long)c->n_routed_experts, (long long)c->n_group);
    if (c->topk_group > c->n_group)
        return INVALID(SLOT_topk_group, SLOT_n_group,
                       "topk_group (%lld) must not exceed n_group (%lld)", (long long)c->topk_group,
                       (long long)c->n_group);
    if (c->num_experts_per_tok > c->n_routed_experts)
        return INVALID(SLOT_num_experts_per_tok, SLOT_n_routed_experts,
                       "num_experts_per_tok (%lld) must not exceed n_routed_experts (%lld)",
                       (long long)c->num_experts_per_tok, (long long)c->n_routed_experts);
    int64_t per_group = c->n_routed_experts / c->n_group;
    if (c->n_group > 1 && c->num_experts_per_tok > c->topk_group * per_group)
        return INVALID(SLOT_num_experts_per_tok, SLOT_topk_group,
                       "num_experts_per_tok (%lld) exceeds the %lld experts in the %lld kept "
                       "groups (topk_group) of %lld",
                       (long long)c->num_experts_per_tok, (long long)(c->topk_group * per_group),
                       (long long)c->topk_group, (long long)per_group);
    if (c->n_group > 1 && c->scoring_func == MOIRA_SCORING_FUNC_SIGMOID && per_group < 2)
        return INVALID(SLOT_n_group, SLOT_n_routed_experts,
                       "with sigmoid scoring and groups, each group needs at least 2 experts (a "
                       "group's score is the sum of its 2 best), got %lld per group",
                       (long long)per_group);
    /* Devices take these as f32: a value past FLT_MAX would become infinity there. */
    if (!(c->routed_scaling_factor > 0) || !(c->routed_scaling_factor <= FLT_MAX))
        return INVALID(SLOT_routed_scaling_factor, SLOT_top,
                       "routed_scaling_factor must be a positive number at most %g (an f32), got "
                       "%g",
                       (double)FLT_MAX, c->routed_scaling_factor);
    if (!(c->capacity_factor >= 0))
        return INVALID(SLOT_capacity_factor, SLOT_top,
                       "capacity_factor must be 0 (unlimited) or positive, got %g",
                       c->capacity_factor);
    if (c->capacity_factor > 0 && (float)c->capacity_factor == 0)
        return INVALID(SLOT_capacity_factor, SLOT_top,
                       "capacity_factor %g is 0 as an f32, which would mean unlimited; give 0 "
                       "for unlimited or at least %g",
                       c->capacity_factor, (double)FLT_TRUE_MIN);
    if (!(c->capacity_factor <= FLT_MAX))
        return INVALID(SLOT_capacity_factor, SLOT_top,
                       "capacity_factor must be at most %g (an f32), got %g", (double)FLT_MAX,
                       c->capacity_factor);

    /* Attention and normalisation. */
    if (c->attention == MOIRA_ATTENTION_MLA && c->qk_rope_head_dim % 2 != 0)
        return INVALID(SLOT_qk_rope_head_dim, SLOT_top,
                       "qk_rope_head_dim must be even (RoPE rotates pairs), got %lld",
                       (long long)c->qk_rope_head_dim);
    if (c->attention == MOIRA_ATTENTION_GQA) {
        if (c->head_dim % 2 != 0)
            return INVALID(SLOT_head_dim, SLOT_top,
                           "head_dim must be even (RoPE rotates pairs), got %lld",
                           (long long)c->head_dim);
        if (c->num_attention_heads % c->num_key_value_heads != 0)
            return INVALID(SLOT_num_key_value_heads, SLOT_num_attention_heads,
                           "num_attention_heads (%lld) must be a multiple of "
                           "num_key_value_heads (%lld)",
                           (long long)c->num_attention_heads, (long long)c->num_key_value_heads);
    }
    if (!(c->rms_norm_eps > 0) || !(c->rms_norm_eps <= FLT_MAX))
        return INVALID(SLOT_rms_norm_eps, SLOT_top,
                       "rms_norm_eps must be positive and at most %g (an f32), got %g",
                       (double)FLT_MAX, c->rms_norm_eps);
    /* RoPE's frequencies are theta^(-2i/d): theta 1 or less makes every position look alike. */
    if (!(c->rope_theta > 1) || !isfinite(c->rope_theta))
        return INVALID(SLOT_rope_theta, SLOT_top, "rope_theta must be above 1, got %g",
                       c->rope_theta);

    const moira_rope_scaling_t *r = &c->rope_scaling;
    if (r->enabled) {
        if (!(r->factor > 0) || !isfinite(r->factor))
            return INVALID(SLOT_factor, SLOT_rope_scaling,
                           "rope_scaling.factor must be positive, got %g", r->factor);
        if (r->original_max_position_embeddings < 1 ||
            r->original_max_position_embeddings > MAX_POSITIONS)
            return INVALID(SLOT_original_max_position_embeddings, SLOT_rope_scaling,
                           "rope_scaling.original_max_position_embeddings must be 1 to %lld, "
                           "got %lld",
                           (long long)MAX_POSITIONS,
                           (long long)r->original_max_position_embeddings);
        /* YaRN's ramp takes ln(L0 / (2 pi beta)), so both betas must be positive, and the
         * fast one the larger for the ramp to run the right way. */
        if (!(r->beta_slow > 0) || !isfinite(r->beta_slow))
            return INVALID(SLOT_beta_slow, SLOT_rope_scaling,
                           "rope_scaling.beta_slow must be positive, got %g", r->beta_slow);
        if (!(r->beta_fast > r->beta_slow) || !isfinite(r->beta_fast))
            return INVALID(SLOT_beta_fast, SLOT_rope_scaling,
                           "rope_scaling.beta_fast (%g) must exceed beta_slow (%g)", r->beta_fast,
                           r->beta_slow);
        if (!isfinite(r->mscale) || !isfinite(r->mscale_all_dim))
            return INVALID(SLOT_mscale, SLOT_rope_scaling,
                           "rope_scaling.mscale and mscale_all_dim must be finite");
        /* The kernels multiply cos and sin by ym(f, mscale) / ym(f, mscale_all_dim) and the
         * softmax scale by ym(f, mscale_all_dim)^2: each must be a positive, finite number. */
        double m = yarn_mscale(r->factor, r->mscale);
        double m_all = yarn_mscale(r->factor, r->mscale_all_dim);
        double ratio = m / m_all, squared = m_all * m_all;
        if (!(m > 0) || !isfinite(m) || !(m_all > 0) || !isfinite(ratio) || !(ratio > 0) ||
            !isfinite(squared) || !(squared > 0))
            return INVALID(r->mscale_all_dim != 0 ? SLOT_mscale_all_dim : SLOT_mscale,
                           SLOT_rope_scaling,
                           "rope_scaling.mscale (%g) and mscale_all_dim (%g) with factor %g give "
                           "YaRN corrections 0.1 * m * ln(factor) + 1 of %g and %g; both must "
                           "be positive and their ratio and squares finite",
                           r->mscale, r->mscale_all_dim, r->factor, m, m_all);
    }

    if ((int)c->weight_dtype < 0 || (int)c->weight_dtype >= (int)MOIRA_DTYPE_COUNT ||
        !moira_dtype_is_float(c->weight_dtype))
        return INVALID(SLOT_weight_dtype, SLOT_top,
                       "weight_dtype must be one of f32, f16, bf16, fp8_e4m3");
    return MOIRA_OK_STATUS;
}

bool moira_model_config_equal(const moira_model_config_t *a, const moira_model_config_t *b) {
    const moira_rope_scaling_t *ra = &a->rope_scaling, *rb = &b->rope_scaling;
    return !strncmp(a->name, b->name, sizeof(a->name)) && a->hidden_size == b->hidden_size &&
           a->moe_intermediate_size == b->moe_intermediate_size &&
           a->intermediate_size == b->intermediate_size &&
           a->n_routed_experts == b->n_routed_experts &&
           a->n_shared_experts == b->n_shared_experts &&
           a->num_experts_per_tok == b->num_experts_per_tok && a->n_group == b->n_group &&
           a->topk_group == b->topk_group && a->num_hidden_layers == b->num_hidden_layers &&
           a->first_k_dense_replace == b->first_k_dense_replace &&
           a->moe_layer_freq == b->moe_layer_freq &&
           a->num_attention_heads == b->num_attention_heads && a->q_lora_rank == b->q_lora_rank &&
           a->kv_lora_rank == b->kv_lora_rank && a->qk_nope_head_dim == b->qk_nope_head_dim &&
           a->qk_rope_head_dim == b->qk_rope_head_dim && a->v_head_dim == b->v_head_dim &&
           a->num_key_value_heads == b->num_key_value_heads && a->head_dim == b->head_dim &&
           a->max_position_embeddings == b->max_position_embeddings &&
           a->vocab_size == b->vocab_size && a->attention == b->attention &&
           a->scoring_func == b->scoring_func && a->norm_topk_prob == b->norm_topk_prob &&
           a->routed_scaling_factor == b->routed_scaling_factor && a->rope_theta == b->rope_theta &&
           a->rms_norm_eps == b->rms_norm_eps && a->capacity_factor == b->capacity_factor &&
           ra->enabled == rb->enabled && ra->factor == rb->factor &&
           ra->original_max_position_embeddings == rb->original_max_position_embeddings &&
           ra->beta_fast == rb->beta_fast && ra->beta_slow == rb->beta_slow &&
           ra->mscale == rb->mscale && ra->mscale_all_dim == rb->mscale_all_dim &&
           a->weight_dtype == b->weight_dtype &&
           moira_model_config_expert_dtype(a) == moira_model_config_expert_dtype(b);
}

moira_dtype_t moira_model_config_expert_dtype(const moira_model_config_t *config) {
    return config->experts_quantized ? config->expert_dtype : config->weight_dtype;
}

int64_t moira_model_config_expert_bytes(const moira_model_config_t *config, moira_dtype_t dtype) {
    int64_t i = config->moe_intermediate_size, d = config->hidden_size;
    if (i <= 0 || d <= 0 || i > MAX_DIMENSION || d > MAX_DIMENSION) return 0;
    /* gate and up [I, D], down [D, I], each with its scales (runtime/weight_format.h). */
    int64_t in = i * (int64_t)moira_weight_row_bytes(dtype, d) +
                 (int64_t)moira_weight_scale_bytes(dtype, i, d);
    int64_t out = d * (int64_t)moira_weight_row_bytes(dtype, i) +
                  (int64_t)moira_weight_scale_bytes(dtype, d, i);
    return 2 * in + out;
}

bool moira_model_config_is_moe_layer(const moira_model_config_t *config, int64_t layer) {
    if (layer < 0 || layer >= config->num_hidden_layers) return false;
    if (config->n_routed_experts <= 0 || config->moe_layer_freq <= 0) return false;
    return layer >= config->first_k_dense_replace && layer % config->moe_layer_freq == 0;
}

int64_t moira_model_config_moe_layer_count(const moira_model_config_t *config) {
    int64_t first = config->first_k_dense_replace, end = config->num_hidden_layers;
    int64_t freq = config->moe_layer_freq;
    if (config->n_routed_experts <= 0 || freq <= 0 || first < 0 || end <= first) return 0;
    /* Multiples of freq in [first, end). */
    return (end + freq - 1) / freq - (first + freq - 1) / freq;
}

double moira_model_config_attention_scale(const moira_model_config_t *config) {
    if (config->attention == MOIRA_ATTENTION_GQA)
        return config->head_dim > 0 ? 1.0 / sqrt((double)config->head_dim) : 0.0;
    int64_t d = config->qk_nope_head_dim + config->qk_rope_head_dim;
    if (d <= 0) return 0.0;
    double scale = 1.0 / sqrt((double)d);
    const moira_rope_scaling_t *r = &config->rope_scaling;
    if (r->enabled && r->mscale_all_dim != 0) {
        double m = yarn_mscale(r->factor, r->mscale_all_dim);
        scale *= m * m;
    }
    return scale;
}

const char *moira_scoring_func_name(moira_scoring_func_t scoring_func) {
    switch (scoring_func) {
    case MOIRA_SCORING_FUNC_SOFTMAX:
        return "softmax";
    case MOIRA_SCORING_FUNC_SIGMOID:
        return "sigmoid";
    }
    return "unknown";
}

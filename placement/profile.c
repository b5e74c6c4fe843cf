#include "placement/profile.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/yaml_doc.h"

void moira_profile_free(moira_profile_t *profile) {
    free(profile->layers);
    free(profile->load);
    free(profile->speeds);
    memset(profile, 0, sizeof(*profile));
}

moira_status_t moira_profile_from_totals(const moira_model_config_t *model, const double *totals,
                                         moira_profile_t *out) {
    memset(out, 0, sizeof(*out));
    int64_t layers = model->num_hidden_layers, experts = model->n_routed_experts;
    out->experts = experts;
    out->layers = calloc((size_t)layers + 1, sizeof(int64_t));
    out->load = calloc((size_t)(layers * experts) + 1, sizeof(double));
    if (!out->layers || !out->load) {
        moira_profile_free(out);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "profile: out of memory");
    }
    for (int64_t l = 0; l < layers; l++) {
        if (!moira_model_config_is_moe_layer(model, l)) continue;
        memcpy(out->load + (size_t)out->n_layers * (size_t)experts, totals + l * experts,
               (size_t)experts * sizeof(double));
        out->layers[out->n_layers++] = l;
    }
    return MOIRA_OK_STATUS;
}

/* The array grows by one: a run has a handful of devices. */
moira_status_t moira_profile_add_speed(moira_profile_t *profile, const char *device, double busy_us,
                                       double predicted_us) {
    if (!(busy_us > 0 && predicted_us > 0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "profile: %s's busy and predicted times must be positive", device);
    moira_profile_speed_t *grown =
        realloc(profile->speeds, (size_t)(profile->n_speeds + 1) * sizeof(*grown));
    if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "profile: out of memory");
    profile->speeds = grown;
    moira_profile_speed_t *speed = &grown[profile->n_speeds++];
    snprintf(speed->device, sizeof(speed->device), "%s", device);
    speed->busy_us = busy_us;
    speed->predicted_us = predicted_us;
    return MOIRA_OK_STATUS;
}

const double *moira_profile_layer_load(const moira_profile_t *profile, int64_t layer) {
    for (int i = 0; i < profile->n_layers; i++)
        if (profile->layers[i] == layer) return profile->load + (size_t)i * profile->experts;
    return NULL;
}

/* Allocates one row per MoE layer of the model, in layer order. */
static moira_status_t allocate_for_model(const moira_model_config_t *model, moira_profile_t *out) {
    memset(out, 0, sizeof(*out));
    int64_t n = moira_model_config_moe_layer_count(model);
    out->experts = model->n_routed_experts;
    out->layers = calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
    out->load = calloc((size_t)(n > 0 ? n : 1) * (size_t)out->experts, sizeof(double));
    if (!out->layers || !out->load) {
        moira_profile_free(out);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "profile: out of memory");
    }
    for (int64_t l = 0; l < model->num_hidden_layers; l++)
        if (moira_model_config_is_moe_layer(model, l)) out->layers[out->n_layers++] = l;
    return MOIRA_OK_STATUS;
}

typedef struct parse_ctx {
    moira_yaml_doc_t *doc;
    const moira_model_config_t *model;
    moira_profile_t *profile;
    unsigned char *seen; /* per profile row: given by the file */
} parse_ctx_t;

/* The profile row holding model layer `layer`, or -1. */
static int row_of_layer(const moira_profile_t *profile, int64_t layer) {
    for (int i = 0; i < profile->n_layers; i++)
        if (profile->layers[i] == layer) return i;
    return -1;
}

/* One `{layer, load}` entry: an MoE layer of the model, given once, one count per expert. */
static moira_status_t parse_layer(parse_ctx_t *ctx, const yaml_node_t *node) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"layer", "load", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a profile layer"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
    yaml_node_t *v = NULL, *load = NULL;
    int64_t layer = 0;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "layer", "a profile layer", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "layer", 0, INT32_MAX, &layer));
    int row = row_of_layer(ctx->profile, layer);
    if (row < 0)
        return moira_yaml_fail(doc, v, "layer %lld is not an MoE layer of model \"%s\"",
                               (long long)layer, ctx->model->name);
    if (ctx->seen[row]) return moira_yaml_fail(doc, v, "layer %lld given twice", (long long)layer);
    ctx->seen[row] = 1;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "load", "a profile layer", &load));
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, load, "load"));
    if (moira_yaml_length(load) != ctx->profile->experts)
        return moira_yaml_fail(doc, load, "load has %d counts; the model has %lld experts",
                               moira_yaml_length(load), (long long)ctx->profile->experts);
    double *dst = ctx->profile->load + (size_t)row * ctx->profile->experts;
    for (int e = 0; e < moira_yaml_length(load); e++)
        MOIRA_RETURN_IF_ERROR(moira_yaml_number_range(
            doc, moira_yaml_item(doc, load, e), "a load count", 0, MOIRA_MAX_TOKEN_COUNT, &dst[e]));
    return MOIRA_OK_STATUS;
}

/* Layers the file omits take the mean of those it gives. */
static void fill_missing_layers(parse_ctx_t *ctx, int given) {
    moira_profile_t *p = ctx->profile;
    for (int64_t e = 0; e < p->experts; e++) {
        double sum = 0;
        for (int r = 0; r < p->n_layers; r++)
            if (ctx->seen[r]) sum += p->load[(size_t)r * p->experts + e];
        for (int r = 0; r < p->n_layers; r++)
            if (!ctx->seen[r]) p->load[(size_t)r * p->experts + e] = sum / given;
    }
}

/* `speeds: [{device: NAME, busy_us: X, predicted_us: Y}, ...]`: each entry a mapping with the
 * three keys, the times positive. */
static moira_status_t parse_speeds(parse_ctx_t *ctx, const yaml_node_t *speeds) {
    moira_yaml_doc_t *doc = ctx->doc;
    static const char *const keys[] = {"device", "busy_us", "predicted_us", NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, speeds, "speeds"));
    for (int i = 0; i < moira_yaml_length(speeds); i++) {
        yaml_node_t *node = moira_yaml_item(doc, speeds, i), *v = NULL;
        MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, node, "a speed"));
        MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, node, keys));
        char device[MOIRA_PROFILE_DEVICE_NAME_MAX];
        double times[2] = {0, 0};
        MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, "device", "a speed", &v));
        MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "device", device, sizeof(device)));
        for (int k = 0; k < 2; k++) {
            MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, node, keys[k + 1], "a speed", &v));
            MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, v, keys[k + 1], 0, &times[k]));
            if (!(times[k] > 0)) return moira_yaml_fail(doc, v, "%s must be positive", keys[k + 1]);
        }
        MOIRA_RETURN_IF_ERROR(moira_profile_add_speed(ctx->profile, device, times[0], times[1]));
    }
    return MOIRA_OK_STATUS;
}

/* The whole document: format version, expert count matching the model, then the layers. */
static moira_status_t parse_profile(parse_ctx_t *ctx) {
    moira_yaml_doc_t *doc = ctx->doc;
    yaml_node_t *root = moira_yaml_root(doc), *v = NULL, *layers = NULL;
    static const char *const keys[] = {"moira_profile", "experts", "layers",
                                       "model",         "speeds",  NULL};
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_mapping(doc, root, "a profile"));
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_keys(doc, root, keys));
    int64_t version = 0, experts = 0;
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "moira_profile", "a profile", &v));
    MOIRA_RETURN_IF_ERROR(
        moira_yaml_int(doc, v, "moira_profile (the format version)", 1, 1, &version));
    if ((v = moira_yaml_get(doc, root, "model"))) {
        char name[MOIRA_MODEL_CONFIG_NAME_MAX];
        MOIRA_RETURN_IF_ERROR(moira_yaml_string(doc, v, "model", name, sizeof(name)));
        if (strcmp(name, ctx->model->name))
            return moira_yaml_fail(doc, v, "the profile was recorded for model \"%s\", not \"%s\"",
                                   name, ctx->model->name);
    }
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "experts", "a profile", &v));
    MOIRA_RETURN_IF_ERROR(moira_yaml_int(doc, v, "experts", 1, 1 << 20, &experts));
    if (experts != ctx->model->n_routed_experts)
        return moira_yaml_fail(doc, v, "experts is %lld but model \"%s\" has %lld routed experts",
                               (long long)experts, ctx->model->name,
                               (long long)ctx->model->n_routed_experts);
    MOIRA_RETURN_IF_ERROR(moira_yaml_require(doc, root, "layers", "a profile", &layers));
    MOIRA_RETURN_IF_ERROR(moira_yaml_expect_sequence(doc, layers, "layers"));
    int n = moira_yaml_length(layers);
    if (n == 0) return moira_yaml_fail(doc, layers, "a profile needs at least one layer");
    for (int i = 0; i < n; i++)
        MOIRA_RETURN_IF_ERROR(parse_layer(ctx, moira_yaml_item(doc, layers, i)));
    fill_missing_layers(ctx, n);
    yaml_node_t *speeds = moira_yaml_get(doc, root, "speeds");
    return speeds ? parse_speeds(ctx, speeds) : MOIRA_OK_STATUS;
}

/* Shared tail of _load and _parse. */
static moira_status_t finish_parse(moira_yaml_doc_t *doc, const moira_model_config_t *model,
                                   moira_profile_t *out) {
    moira_status_t status = allocate_for_model(model, out);
    parse_ctx_t ctx = {doc, model, out, NULL};
    if (!status) {
        ctx.seen = calloc((size_t)out->n_layers + 1, 1);
        status = ctx.seen ? parse_profile(&ctx)
                          : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "profile: out of memory");
    }
    free(ctx.seen);
    moira_yaml_doc_free(doc);
    if (status) moira_profile_free(out);
    return status;
}

moira_status_t moira_profile_load(const char *path, const moira_model_config_t *model,
                                  moira_profile_t *out) {
    moira_yaml_doc_t doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_doc_load(path, "profile", &doc));
    return finish_parse(&doc, model, out);
}

moira_status_t moira_profile_parse(const char *text, size_t len, const char *display_name,
                                   const moira_model_config_t *model, moira_profile_t *out) {
    moira_yaml_doc_t doc;
    MOIRA_RETURN_IF_ERROR(moira_yaml_doc_parse(text, len, display_name, "profile", &doc));
    return finish_parse(&doc, model, out);
}

/* splitmix64: a fixed, portable generator so synthetic profiles are the same everywhere. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Splits `total` tokens over experts in proportion to `share`, none above `cap` (a token routes
 * to an expert at most once, so an expert expects at most the batch): experts whose part would
 * exceed the cap get exactly the cap and the rest is split again over the others, until none
 * exceeds it (each pass only raises the others' parts, so capping all at once is exact). The
 * parts are expected loads, fractions allowed. `capped` is scratch for `experts` flags. Needs
 * total <= cap x experts. */
static void split_capped(const double *share, unsigned char *capped, int64_t experts, double total,
                         double cap, double *out) {
    for (int64_t e = 0; e < experts; e++)
        capped[e] = 0;
    int64_t n_capped = 0;
    double sum = 0;
    for (bool changed = true; changed;) {
        changed = false;
        sum = 0;
        for (int64_t e = 0; e < experts; e++)
            if (!capped[e]) sum += share[e];
        double rest = total - cap * (double)n_capped;
        for (int64_t e = 0; e < experts && sum > 0; e++)
            if (!capped[e] && share[e] / sum * rest > cap) {
                capped[e] = 1;
                n_capped++;
                changed = true;
            }
    }
    double rest = total - cap * (double)n_capped;
    for (int64_t e = 0; e < experts; e++)
        out[e] = capped[e] ? cap : sum > 0 ? share[e] / sum * rest : 0;
}

moira_status_t moira_profile_synthesise(const moira_model_config_t *model, const char *skew,
                                        int64_t tokens, moira_profile_t *out) {
    double exponent = 0;
    if (!skew || !strcmp(skew, "uniform")) {
        exponent = 0;
    } else if (!strncmp(skew, "zipf:", 5)) {
        char *end = NULL;
        exponent = strtod(skew + 5, &end);
        if (end == skew + 5 || *end || !(exponent >= 0 && exponent <= 10))
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "--skew zipf:S needs S in [0, 10], got \"%s\"", skew + 5);
    } else {
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "unknown skew \"%s\" (expected uniform or zipf:S)", skew);
    }
    if (tokens <= 0)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "tokens must be positive");
    if (model->num_experts_per_tok > model->n_routed_experts)
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT, "model \"%s\" routes each token to %lld of %lld experts",
            model->name, (long long)model->num_experts_per_tok, (long long)model->n_routed_experts);
    MOIRA_RETURN_IF_ERROR(allocate_for_model(model, out));
    int64_t experts = out->experts;
    double *share = malloc((size_t)experts * sizeof(double));
    int64_t *rank_of = malloc((size_t)experts * sizeof(int64_t));
    unsigned char *capped = malloc((size_t)experts);
    if (!share || !rank_of || !capped) {
        free(capped);
        free(share);
        free(rank_of);
        moira_profile_free(out);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "profile: out of memory");
    }
    for (int r = 0; r < out->n_layers; r++) {
        /* Fisher-Yates shuffle seeded by the layer index decides which expert is hot. */
        uint64_t state = 0x6d6f697261ull ^ (uint64_t)out->layers[r] * 0x100000001b3ull;
        for (int64_t e = 0; e < experts; e++)
            rank_of[e] = e;
        for (int64_t e = experts - 1; e > 0; e--) {
            int64_t j = (int64_t)(splitmix64(&state) % (uint64_t)(e + 1));
            int64_t tmp = rank_of[e];
            rank_of[e] = rank_of[j];
            rank_of[j] = tmp;
        }
        for (int64_t e = 0; e < experts; e++)
            share[e] = pow((double)(rank_of[e] + 1), -exponent);
        split_capped(share, capped, experts, (double)(tokens * model->num_experts_per_tok),
                     (double)tokens, out->load + (size_t)r * experts);
    }
    free(capped);
    free(share);
    free(rank_of);
    return MOIRA_OK_STATUS;
}

/* The random checkpoint writer (ops/random_checkpoint.h) and its tool moira-test-checkpoint.
 * Every file is read back independently of the writer: the JSON files and the safetensors headers
 * through jansson, fp8 values decoded element by element against the f32 checkpoint of the same
 * seed; and through the loaders the engine uses (moira_model_config_load, moira_safetensors_open,
 * moira_layer_weights_find). */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ops/random_checkpoint.h"
#include "ops/weights.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "tests/unit/testing.h"

static char work[] = "/tmp/moira_test_ckpt_XXXXXX";

/* A small DeepSeek-V3-shaped model whose fp8 matrices span several 128x128 blocks (hidden 160,
 * dense intermediate 300), with a dense layer 0, an MoE layer 1 and one MTP layer (index 2). */
static moira_random_checkpoint_spec_t small_spec(moira_dtype_t dtype, int shards, int mtp) {
    moira_random_checkpoint_spec_t s;
    moira_status_t status = moira_random_checkpoint_preset("v3-tiny", &s);
    CHECK(status == MOIRA_OK_STATUS);
    moira_status_free(status);
    s.config.vocab_size = 300;
    s.config.hidden_size = 160;
    s.config.intermediate_size = 300;
    s.config.n_routed_experts = 4;
    s.config.num_experts_per_tok = 2;
    s.config.n_group = 2;
    s.config.topk_group = 1;
    s.config.num_hidden_layers = 2;
    s.dtype = dtype;
    s.n_shards = shards;
    s.mtp_layers = mtp;
    s.seed = 42;
    return s;
}

static void path_in(char *out, size_t size, const char *dir, const char *name) {
    if (snprintf(out, size, "%s/%s", dir, name) >= (int)size)
        moira_test_fail(__FILE__, __LINE__, "path too long: %s/%s", dir, name);
}

static json_t *load_json(const char *dir, const char *name) {
    char path[512];
    path_in(path, sizeof(path), dir, name);
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);
    CHECK_MSG(root != NULL, "%s: %s", path, error.text);
    return root;
}

/* A safetensors file's JSON header, read as the format defines it (8-byte little-endian length,
 * then JSON), with the header length in *out_header_bytes. */
static json_t *load_header(const char *path, size_t *out_data_bytes) {
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return NULL;
    unsigned char len_bytes[8];
    uint64_t len = 0;
    if (fread(len_bytes, 1, 8, f) == 8)
        for (int i = 7; i >= 0; i--)
            len = len << 8 | len_bytes[i];
    char *text = len > 0 && len < (1u << 26) ? malloc(len) : NULL;
    json_t *root = NULL;
    if (text && fread(text, 1, len, f) == len) root = json_loadb(text, len, 0, NULL);
    free(text);
    struct stat st;
    *out_data_bytes = fstat(fileno(f), &st) == 0 ? (size_t)st.st_size - 8 - len : 0;
    fclose(f);
    CHECK_MSG(root != NULL, "%s: unreadable header", path);
    return root;
}

/* ------------------------------------------------------------------------------------------- */

/* config.json through the engine's loader gives back the spec's model; the HF keys are there. */
static void test_config_round_trip(const char *dir, const moira_random_checkpoint_spec_t *spec) {
    moira_model_config_t loaded;
    moira_status_t status = moira_model_config_load(dir, &loaded);
    CHECK_MSG(!status, "%s", moira_status_message(status));
    moira_status_free(status);
    if (status) return;
    moira_model_config_t want = spec->config;
    memcpy(want.name, loaded.name, sizeof(want.name));
    want.weight_dtype = spec->dtype;
    CHECK_MSG(moira_model_config_equal(&loaded, &want),
              "config.json does not load back as written");
    CHECK(loaded.weight_dtype == spec->dtype);

    json_t *c = load_json(dir, "config.json");
    CHECK(!strcmp(json_string_value(json_array_get(json_object_get(c, "architectures"), 0)),
                  "DeepseekV3ForCausalLM"));
    CHECK(!strcmp(json_string_value(json_object_get(c, "model_type")), "deepseek_v3"));
    CHECK(json_integer_value(json_object_get(c, "num_nextn_predict_layers")) == spec->mtp_layers);
    CHECK(json_integer_value(json_object_get(c, "bos_token_id")) == 0);
    CHECK(json_integer_value(json_object_get(c, "eos_token_id")) == 1);
    CHECK(json_integer_value(json_object_get(c, "vocab_size")) == 300);
    CHECK(json_integer_value(json_object_get(c, "max_position_embeddings")) == 163840);
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(c, "rope_scaling"), "type")),
                  "yarn"));
    CHECK(json_real_value(json_object_get(c, "rms_norm_eps")) == 1e-6);
    const char *torch_dtype = json_string_value(json_object_get(c, "torch_dtype"));
    CHECK(torch_dtype &&
          !strcmp(torch_dtype, spec->dtype == MOIRA_DTYPE_F32 ? "float32" : "bfloat16"));
    json_t *q = json_object_get(c, "quantization_config");
    if (spec->dtype == MOIRA_DTYPE_F8_E4M3) {
        CHECK(!strcmp(json_string_value(json_object_get(q, "quant_method")), "fp8"));
        CHECK(!strcmp(json_string_value(json_object_get(q, "fmt")), "e4m3"));
        CHECK(!strcmp(json_string_value(json_object_get(q, "activation_scheme")), "dynamic"));
        json_t *block = json_object_get(q, "weight_block_size");
        CHECK(json_array_size(block) == 2 && json_integer_value(json_array_get(block, 0)) == 128 &&
              json_integer_value(json_array_get(block, 1)) == 128);
    } else {
        CHECK(q == NULL);
    }
    json_decref(c);

    json_t *g = load_json(dir, "generation_config.json");
    CHECK(json_integer_value(json_object_get(g, "bos_token_id")) == 0);
    CHECK(json_integer_value(json_object_get(g, "eos_token_id")) == 1);
    CHECK(json_real_value(json_object_get(g, "temperature")) == 0.6);
    CHECK(json_real_value(json_object_get(g, "top_p")) == 0.95);
    CHECK(json_is_true(json_object_get(g, "do_sample")));
    json_decref(g);
}

/* The names a two-layer model with one MTP layer must hold, spelled out by hand: a sample of each
 * kind of tensor, with the dtype DeepSeek-V3's fp8 layout gives it. */
static const struct {
    const char *name;
    const char *fp8_dtype;
    int64_t rows, cols; /* cols 0: 1-D */
} expected_tensors[] = {
    {"model.embed_tokens.weight", "BF16", 300, 160},
    {"model.norm.weight", "BF16", 160, 0},
    {"lm_head.weight", "BF16", 300, 160},
    {"model.layers.0.input_layernorm.weight", "BF16", 160, 0},
    {"model.layers.0.self_attn.q_a_proj.weight", "F8_E4M3", 48, 160},
    {"model.layers.0.self_attn.q_a_proj.weight_scale_inv", "F32", 1, 2},
    {"model.layers.0.self_attn.q_a_layernorm.weight", "BF16", 48, 0},
    {"model.layers.0.self_attn.q_b_proj.weight", "F8_E4M3", 96, 48},
    {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "F8_E4M3", 40, 160},
    {"model.layers.0.self_attn.kv_a_layernorm.weight", "BF16", 32, 0},
    {"model.layers.0.self_attn.kv_b_proj.weight", "F8_E4M3", 128, 32},
    {"model.layers.0.self_attn.o_proj.weight", "F8_E4M3", 160, 64},
    {"model.layers.0.mlp.gate_proj.weight", "F8_E4M3", 300, 160},
    {"model.layers.0.mlp.gate_proj.weight_scale_inv", "F32", 3, 2},
    {"model.layers.0.mlp.down_proj.weight_scale_inv", "F32", 2, 3},
    {"model.layers.1.post_attention_layernorm.weight", "BF16", 160, 0},
    {"model.layers.1.mlp.gate.weight", "BF16", 4, 160},
    {"model.layers.1.mlp.gate.e_score_correction_bias", "F32", 4, 0},
    {"model.layers.1.mlp.experts.3.down_proj.weight", "F8_E4M3", 160, 32},
    {"model.layers.1.mlp.experts.3.down_proj.weight_scale_inv", "F32", 2, 1},
    {"model.layers.1.mlp.shared_experts.up_proj.weight", "F8_E4M3", 32, 160},
    {"model.layers.2.embed_tokens.weight", "BF16", 300, 160},
    {"model.layers.2.enorm.weight", "BF16", 160, 0},
    {"model.layers.2.hnorm.weight", "BF16", 160, 0},
    {"model.layers.2.eh_proj.weight", "BF16", 160, 320},
    {"model.layers.2.self_attn.kv_b_proj.weight", "F8_E4M3", 128, 32},
    {"model.layers.2.mlp.experts.0.gate_proj.weight", "F8_E4M3", 32, 160},
    {"model.layers.2.shared_head.norm.weight", "BF16", 160, 0},
    {"model.layers.2.shared_head.head.weight", "BF16", 300, 160},
};

/* Tensors of the fp8 two-layer model with MTP, by hand: a dense layer has 2 norms, 7 attention
 * tensors (5 matrices), 3 MLP matrices: 12 tensors + 8 scales = 20. An MoE layer with 4 experts:
 * 2 norms, 7 attention, router and bias, 12 expert and 3 shared matrices: 26 + 20 scales = 46. The
 * MTP layer: an MoE layer plus embed, enorm, hnorm, eh_proj, shared_head norm and head: 52.
 * Outside the layers: embed, norm, lm_head. */
#define FP8_MTP_TENSOR_COUNT (20 + 46 + 52 + 3)

/* index.json agrees with the shards' own headers: every name in the shard it names, every tensor
 * of every shard in the map, total_size the sum of the tensors' bytes. */
static void test_index(const char *dir, int n_shards) {
    json_t *index = load_json(dir, "model.safetensors.index.json");
    json_t *map = json_object_get(index, "weight_map");
    CHECK(json_object_size(map) == FP8_MTP_TENSOR_COUNT);
    size_t tensors_in_shards = 0, data_bytes_sum = 0;
    json_int_t tensor_bytes_sum = 0;
    for (int k = 1; k <= n_shards; k++) {
        char name[64], path[512];
        snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", k, n_shards);
        path_in(path, sizeof(path), dir, name);
        size_t data_bytes = 0;
        json_t *header = load_header(path, &data_bytes);
        if (!header) continue;
        data_bytes_sum += data_bytes;
        const char *key;
        json_t *entry;
        size_t in_this = 0;
        json_object_foreach(header, key, entry) {
            if (!strcmp(key, "__metadata__")) continue;
            in_this++;
            const char *mapped = json_string_value(json_object_get(map, key));
            CHECK_MSG(mapped && !strcmp(mapped, name), "%s is in %s, the index says %s", key, name,
                      mapped ? mapped : "nothing");
            json_t *offsets = json_object_get(entry, "data_offsets");
            tensor_bytes_sum += json_integer_value(json_array_get(offsets, 1)) -
                                json_integer_value(json_array_get(offsets, 0));
        }
        CHECK_MSG(in_this > 0, "%s is empty", name);
        tensors_in_shards += in_this;
        json_decref(header);
    }
    CHECK_MSG(tensors_in_shards == json_object_size(map), "%zu tensors in shards, %zu in the map",
              tensors_in_shards, json_object_size(map));
    json_int_t total =
        json_integer_value(json_object_get(json_object_get(index, "metadata"), "total_size"));
    CHECK_MSG(total == tensor_bytes_sum, "total_size %lld, tensors hold %lld bytes",
              (long long)total, (long long)tensor_bytes_sum);
    CHECK((size_t)total == data_bytes_sum);
    json_decref(index);
}

/* The hand-written sample is present with its dtype and shape (through the engine's reader), and
 * every decoder layer is found by moira_layer_weights_find. */
static void test_tensors(const char *dir, bool fp8, bool mtp) {
    moira_safetensors_t *file = NULL;
    moira_status_t status = moira_safetensors_open(dir, &file);
    CHECK_MSG(!status, "%s", moira_status_message(status));
    moira_status_free(status);
    if (status) return;
    for (size_t i = 0; i < sizeof(expected_tensors) / sizeof(expected_tensors[0]); i++) {
        const char *name = expected_tensors[i].name;
        bool is_mtp = !strncmp(name, "model.layers.2.", 15);
        bool is_scale = strstr(name, "_scale_inv") != NULL;
        bool present = moira_safetensors_has(file, name);
        if ((is_mtp && !mtp) || (is_scale && !fp8)) {
            CHECK_MSG(!present, "%s should not be there", name);
            continue;
        }
        CHECK_MSG(present, "%s is missing", name);
        const moira_tensor_t *t = NULL;
        status = moira_safetensors_find(file, name, &t);
        moira_status_free(status);
        if (!t) continue;
        const char *want = fp8 ? expected_tensors[i].fp8_dtype
                               : (strstr(name, "correction_bias") ? "F32" : "BF16");
        CHECK_MSG(!strcmp(moira_dtype_name(t->dtype), want), "%s: %s, expected %s", name,
                  moira_dtype_name(t->dtype), want);
        int rank = expected_tensors[i].cols ? 2 : 1;
        CHECK_MSG(t->rank == rank && t->shape[0] == expected_tensors[i].rows &&
                      (rank == 1 || t->shape[1] == expected_tensors[i].cols),
                  "%s: wrong shape", name);
    }
    moira_model_config_t config;
    status = moira_model_config_load(dir, &config);
    CHECK_MSG(!status, "%s", moira_status_message(status));
    int64_t layers = status ? 0 : config.num_hidden_layers;
    moira_status_free(status);
    for (int64_t layer = 0; layer < layers; layer++) {
        char prefix[48];
        snprintf(prefix, sizeof(prefix), "model.layers.%lld.", (long long)layer);
        moira_layer_weights_t w;
        CHECK_OK(moira_layer_weights_find(file, prefix, &config, layer, MOIRA_WEIGHTS_ALL, &w));
        CHECK(w.is_moe == (layer == 1));
        moira_layer_weights_free(&w);
    }
    moira_safetensors_close(file);
}

/* Decodes an fp8 matrix independently (e4m3 bits times its block's scale) and checks it against
 * the f32 checkpoint's values for the same seed: within e4m3's rounding (half a step of its 3
 * mantissa bits, 2^-4 relative, or half its smallest subnormal step 2^-10 times the scale), and
 * each block's largest magnitude mapped to 448. */
static void check_fp8_against(const char *name, const moira_tensor_t *q, const moira_tensor_t *f) {
    const moira_tensor_t *scale = q->scale;
    CHECK_MSG(scale && scale->shape[0] == (q->shape[0] + 127) / 128 &&
                  scale->shape[1] == (q->shape[1] + 127) / 128,
              "%s: no scale of shape [ceil(rows/128), ceil(cols/128)]", name);
    if (!scale || !moira_tensor_same_shape(q, f)) return;
    int64_t rows = q->shape[0], cols = q->shape[1], bc = scale->shape[1];
    const uint8_t *bits = q->data;
    const float *want = f->data, *s = scale->data;
    int bad = 0;
    double *block_max = calloc((size_t)(scale->shape[0] * bc), sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int64_t b = (r / 128) * bc + c / 128;
            double got = (double)moira_fp8_e4m3_to_f32(bits[r * cols + c]) * s[b];
            double w = want[r * cols + c];
            if (fabs(got - w) > fabs(w) * 0.0625 + s[b] * 0x1p-10) bad++;
            if (fabs(w) > block_max[b]) block_max[b] = fabs(w);
        }
    for (int64_t b = 0; b < scale->shape[0] * bc; b++)
        if (fabs(block_max[b] / 448.0 - s[b]) > 1e-6 * s[b]) bad++;
    free(block_max);
    CHECK_MSG(bad == 0, "%s: %d values or scales off", name, bad);
}

/* Every tensor of the fp8 checkpoint against the f32 one made with the same seed: fp8 within its
 * rounding, bf16 within half a bf16 step (2^-8 relative), f32 exactly. */
static void test_fp8_matches_f32(const char *fp8_dir, const char *f32_dir) {
    moira_safetensors_t *q = NULL, *f = NULL;
    CHECK_OK(moira_safetensors_open(fp8_dir, &q));
    CHECK_OK(moira_safetensors_open(f32_dir, &f));
    if (!q || !f) {
        moira_safetensors_close(q);
        moira_safetensors_close(f);
        return;
    }
    size_t compared = 0, quantised = 0;
    for (size_t i = 0; i < moira_safetensors_count(f); i++) {
        const char *name = moira_safetensors_name(f, i);
        const moira_tensor_t *ft = NULL, *qt = NULL;
        CHECK_OK(moira_safetensors_find(f, name, &ft));
        CHECK_OK(moira_safetensors_find(q, name, &qt));
        if (!ft || !qt) continue;
        CHECK_MSG(ft->dtype == MOIRA_DTYPE_F32, "%s: %s in the f32 checkpoint", name,
                  moira_dtype_name(ft->dtype));
        compared++;
        if (qt->dtype == MOIRA_DTYPE_F8_E4M3) {
            check_fp8_against(name, qt, ft);
            quantised++;
            continue;
        }
        int64_t n = moira_tensor_numel(ft);
        const float *want = ft->data;
        int bad = 0;
        for (int64_t k = 0; k < n; k++) {
            float got = qt->dtype == MOIRA_DTYPE_BF16 ? moira_bf16_to_f32(((uint16_t *)qt->data)[k])
                                                      : ((float *)qt->data)[k];
            double tol = qt->dtype == MOIRA_DTYPE_BF16 ? fabs(want[k]) * 0x1p-8 : 0;
            if (fabs((double)got - want[k]) > tol) bad++;
        }
        CHECK_MSG(bad == 0, "%s: %d values differ from the f32 checkpoint", name, bad);
    }
    /* The scales are extra names in the fp8 checkpoint; everything else is in both. */
    CHECK(moira_safetensors_count(q) == compared + quantised);
    printf("fp8 vs f32: %zu tensors compared, %zu of them fp8\n", compared, quantised);
    moira_safetensors_close(q);
    moira_safetensors_close(f);
}

/* Writing into a directory that is not new or empty is refused, and leaves it alone; a bad spec
 * creates nothing; nothing is left behind beside the target either way. */
static void test_directory_rules(void) {
    moira_random_checkpoint_spec_t s = small_spec(MOIRA_DTYPE_BF16, 1, 0);
    s.config.vocab_size = 16;
    s.config.num_hidden_layers = 1;
    char full[512], empty[512], file[512], marker[600], bad[512];
    path_in(full, sizeof(full), work, "full");
    path_in(empty, sizeof(empty), work, "empty");
    path_in(file, sizeof(file), work, "a_file");
    path_in(bad, sizeof(bad), work, "bad");
    snprintf(marker, sizeof(marker), "%s/keep", full);
    CHECK(mkdir(full, 0777) == 0 && mkdir(empty, 0777) == 0);
    FILE *f = fopen(marker, "w");
    if (f) fclose(f);
    f = fopen(file, "w");
    if (f) fclose(f);
    CHECK_CODE(moira_random_checkpoint_write(&s, full), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(access(marker, F_OK) == 0);
    char config_path[600];
    snprintf(config_path, sizeof(config_path), "%s/config.json", full);
    CHECK(access(config_path, F_OK) != 0);
    CHECK_CODE(moira_random_checkpoint_write(&s, file), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_OK(moira_random_checkpoint_write(&s, empty));
    snprintf(config_path, sizeof(config_path), "%s/config.json", empty);
    CHECK(access(config_path, F_OK) == 0);
    /* Bad specs: no shards, more shards than tensors, an eos outside the vocabulary. */
    s.n_shards = 0;
    CHECK_CODE(moira_random_checkpoint_write(&s, bad), MOIRA_CODE_INVALID_ARGUMENT);
    s.n_shards = 5000;
    CHECK_CODE(moira_random_checkpoint_write(&s, bad), MOIRA_CODE_INVALID_ARGUMENT);
    s.n_shards = 1;
    s.eos_token_id = 16;
    CHECK_CODE(moira_random_checkpoint_write(&s, bad), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(access(bad, F_OK) != 0);
    DIR *d = opendir(work);
    int temps = 0;
    for (struct dirent *e = d ? readdir(d) : NULL; e; e = readdir(d))
        temps += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    CHECK_MSG(temps == 0, "%d temporary directories left behind", temps);
}

/* The tokenizer files are copied byte for byte, and a vocabulary too small for their ids is
 * refused (a fake tokenizer whose largest id, an added token, is 299). */
static void test_tokenizer_copy(void) {
    char tok[512], path[600], ok_dir[512], small_dir[512];
    path_in(tok, sizeof(tok), work, "tok");
    path_in(ok_dir, sizeof(ok_dir), work, "with_tokenizer");
    path_in(small_dir, sizeof(small_dir), work, "too_small");
    CHECK(mkdir(tok, 0777) == 0);
    static const char tokenizer_json[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"<s>\": 5, \"b\": 7}},\n"
        " \"added_tokens\": [{\"id\": 299, \"content\": \"<eos>\"}]}\n";
    static const char tokenizer_config[] =
        "{\"add_bos_token\": true, \"bos_token\": {\"__type\": \"AddedToken\", \"content\": "
        "\"<s>\"}, \"eos_token\": \"<eos>\"}\n";
    snprintf(path, sizeof(path), "%s/tokenizer.json", tok);
    FILE *f = fopen(path, "w");
    if (f) fputs(tokenizer_json, f), fclose(f);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", tok);
    f = fopen(path, "w");
    if (f) fputs(tokenizer_config, f), fclose(f);

    moira_random_checkpoint_spec_t s = small_spec(MOIRA_DTYPE_BF16, 1, 0);
    s.config.num_hidden_layers = 1;
    s.tokenizer = tok;
    CHECK_OK(moira_random_checkpoint_write(&s, ok_dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", ok_dir);
    char buf[512] = {0};
    f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f) fclose(f);
    CHECK(n == strlen(tokenizer_json) && !strcmp(buf, tokenizer_json));
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", ok_dir);
    CHECK(access(path, F_OK) == 0);
    /* The special ids are the tokenizer's: bos from its vocabulary, eos an added token. */
    const char *const files[] = {"config.json", "generation_config.json"};
    for (int i = 0; i < 2; i++) {
        json_t *c = load_json(ok_dir, files[i]);
        CHECK_MSG(json_integer_value(json_object_get(c, "bos_token_id")) == 5 &&
                      json_integer_value(json_object_get(c, "eos_token_id")) == 299,
                  "%s: special ids not the tokenizer's", files[i]);
        json_decref(c);
    }
    s.config.vocab_size = 299;
    CHECK_CODE(moira_random_checkpoint_write(&s, small_dir), MOIRA_CODE_INVALID_INPUT);
    CHECK(access(small_dir, F_OK) != 0);
}

/* The same seed gives the same bytes; another seed other values. */
static void test_determinism(void) {
    moira_random_checkpoint_spec_t s = small_spec(MOIRA_DTYPE_BF16, 1, 0);
    s.config.num_hidden_layers = 1;
    char a[512], b[512], c[512], cmd[2048];
    path_in(a, sizeof(a), work, "seed_a");
    path_in(b, sizeof(b), work, "seed_b");
    path_in(c, sizeof(c), work, "seed_c");
    CHECK_OK(moira_random_checkpoint_write(&s, a));
    CHECK_OK(moira_random_checkpoint_write(&s, b));
    s.seed++;
    CHECK_OK(moira_random_checkpoint_write(&s, c));
    snprintf(cmd, sizeof(cmd), "cmp -s %s/model.safetensors %s/model.safetensors", a, b);
    CHECK_MSG(system(cmd) == 0, "the same seed wrote different weights");
    snprintf(cmd, sizeof(cmd), "cmp -s %s/model.safetensors %s/model.safetensors", a, c);
    CHECK_MSG(system(cmd) != 0, "another seed wrote the same weights");
}

/* The tool: a good run writes a loadable sharded checkpoint; bad usage exits 2 creating nothing. */
static void test_tool(void) {
    char out[512], cmd[2048];
    path_in(out, sizeof(out), work, "tool");
    snprintf(cmd, sizeof(cmd),
             "%s --out %s --dtype fp8 --shards 2 --layers 2 --vocab 64 --hidden 32 --seed 7 --mtp "
             ">/dev/null",
             MOIRA_TEST_CHECKPOINT, out);
    CHECK_MSG(system(cmd) == 0, "%s failed", cmd);
    moira_model_config_t config;
    CHECK_OK(moira_model_config_load(out, &config));
    CHECK(config.vocab_size == 64 && config.hidden_size == 32 && config.num_hidden_layers == 2);
    CHECK(config.weight_dtype == MOIRA_DTYPE_F8_E4M3);
    char index[600];
    snprintf(index, sizeof(index), "%s/model-00002-of-00002.safetensors", out);
    CHECK(access(index, F_OK) == 0);
    static const char *const bad_usages[] = {
        "--dtype fp16",
        "--dtype bf16 --shards 0",
        "--dtype bf16 --preset v4",
        "--dtype bf16 --layers x",
        "",
        "--dtype bf16 --bogus",
        "--dtype bf16 --vocab",
    };
    for (size_t i = 0; i < sizeof(bad_usages) / sizeof(bad_usages[0]); i++) {
        char bad[512];
        path_in(bad, sizeof(bad), work, "tool_bad");
        snprintf(cmd, sizeof(cmd), "%s --out %s %s 2>/dev/null", MOIRA_TEST_CHECKPOINT, bad,
                 bad_usages[i]);
        int rc = system(cmd);
        CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "%s: exit %d, expected 2", cmd,
                  WEXITSTATUS(rc));
        CHECK_MSG(access(bad, F_OK) != 0, "%s created its output", cmd);
    }
}

int main(void) {
    if (!mkdtemp(work)) {
        fprintf(stderr, "cannot create a temporary directory\n");
        return 1;
    }
    char fp8_dir[512], f32_dir[512], bf16_dir[512];
    path_in(fp8_dir, sizeof(fp8_dir), work, "fp8");
    path_in(f32_dir, sizeof(f32_dir), work, "f32");
    path_in(bf16_dir, sizeof(bf16_dir), work, "bf16");

    moira_random_checkpoint_spec_t fp8 = small_spec(MOIRA_DTYPE_F8_E4M3, 3, 1);
    moira_random_checkpoint_spec_t f32 = small_spec(MOIRA_DTYPE_F32, 1, 1);
    moira_random_checkpoint_spec_t bf16 = small_spec(MOIRA_DTYPE_BF16, 1, 0);
    CHECK_OK(moira_random_checkpoint_write(&fp8, fp8_dir));
    CHECK_OK(moira_random_checkpoint_write(&f32, f32_dir));
    CHECK_OK(moira_random_checkpoint_write(&bf16, bf16_dir));

    test_config_round_trip(fp8_dir, &fp8);
    test_config_round_trip(f32_dir, &f32);
    test_config_round_trip(bf16_dir, &bf16);
    test_index(fp8_dir, 3);
    char single[600];
    snprintf(single, sizeof(single), "%s/model.safetensors.index.json", bf16_dir);
    CHECK_MSG(access(single, F_OK) != 0, "a one-file checkpoint has no index");
    test_tensors(fp8_dir, true, true);
    test_tensors(bf16_dir, false, false);
    test_fp8_matches_f32(fp8_dir, f32_dir);
    test_directory_rules();
    test_tokenizer_copy();
    test_determinism();
    test_tool();

    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", work);
    return moira_test_finish("test_random_checkpoint");
}

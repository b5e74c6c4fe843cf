/* Model config: the golden configs and the shipped model files load with the values their
 * authors wrote, the built-in default matches configs/models/moira-tiny.yaml, the derived figures
 * (attention scale, expert bytes, MoE layers) match hand computation, and every kind of broken
 * file is rejected with its file:line:col. */
#include "runtime/model_config.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/testing.h"

#define GOLDEN MOIRA_TEST_DATA_DIR "/golden/"
#define MODELS MOIRA_TEST_DATA_DIR "/../../configs/models/"

static void test_golden_v3(void) {
    moira_model_config_t c;
    CHECK_OK(moira_model_config_load(GOLDEN "gate_v3.json", &c));
    CHECK(!strcmp(c.name, "gate_v3"));
    CHECK(c.hidden_size == 64);
    CHECK(c.moe_intermediate_size == 32);
    CHECK(c.intermediate_size == 256);
    CHECK(c.n_routed_experts == 32);
    CHECK(c.n_shared_experts == 1);
    CHECK(c.num_experts_per_tok == 8);
    CHECK(c.n_group == 8);
    CHECK(c.topk_group == 4);
    CHECK(c.scoring_func == MOIRA_SCORING_FUNC_SIGMOID);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 2.5);
    CHECK(c.num_attention_heads == 4);
    CHECK(c.q_lora_rank == 48);
    CHECK(c.kv_lora_rank == 32);
    CHECK(c.qk_nope_head_dim == 16);
    CHECK(c.qk_rope_head_dim == 8);
    CHECK(c.v_head_dim == 16);
    CHECK(c.rope_theta == 10000.0);
    CHECK(c.rms_norm_eps == 1e-6);
    CHECK(c.num_hidden_layers == 2);
    CHECK(c.first_k_dense_replace == 0);
    CHECK(c.moe_layer_freq == 1);
    CHECK(c.capacity_factor == 0.0);
    CHECK(c.attention == MOIRA_ATTENTION_MLA);
    CHECK(c.rope_scaling.enabled);
    CHECK(c.rope_scaling.factor == 40.0);
    CHECK(c.rope_scaling.original_max_position_embeddings == 4096);
    CHECK(c.rope_scaling.beta_fast == 32.0);
    CHECK(c.rope_scaling.beta_slow == 1.0);
    CHECK(c.rope_scaling.mscale == 1.0);
    CHECK(c.rope_scaling.mscale_all_dim == 1.0);
    /* No torch_dtype nor quantization_config: the golden weights are f32. */
    CHECK(c.weight_dtype == MOIRA_DTYPE_F32);
    CHECK(moira_model_config_is_moe_layer(&c, 0));
    CHECK(moira_model_config_is_moe_layer(&c, 1));
    CHECK(!moira_model_config_is_moe_layer(&c, 2));

    /* DESIGN.md §4: scale = (16 + 8)^-0.5 * m^2, m = 0.1 * 1 * ln(40) + 1. */
    double m = 0.1 * 1.0 * log(40.0) + 1.0;
    double expected = 1.0 / sqrt(24.0) * m * m;
    CHECK_NEAR(moira_model_config_attention_scale(&c), expected, 1e-15);
    CHECK_NEAR(moira_model_config_attention_scale(&c), 0.3824989, 1e-6);

    /* The other v3 cases carry the same config. */
    const char *same[] = {GOLDEN "moe_v3.json", GOLDEN "layer_v3.json", GOLDEN "mla_v3_yarn.json"};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        moira_model_config_t o;
        CHECK_OK(moira_model_config_load(same[i], &o));
        snprintf(o.name, sizeof(o.name), "%s", c.name);
        CHECK_MSG(moira_model_config_equal(&c, &o), "%s differs from gate_v3.json", same[i]);
    }
}

static void test_golden_v2lite(void) {
    moira_model_config_t c;
    CHECK_OK(moira_model_config_load(GOLDEN "moe_v2lite.json", &c));
    CHECK(!strcmp(c.name, "moe_v2lite"));
    CHECK(c.hidden_size == 64);
    CHECK(c.moe_intermediate_size == 32);
    CHECK(c.n_routed_experts == 16);
    CHECK(c.n_shared_experts == 2);
    CHECK(c.num_experts_per_tok == 6);
    CHECK(c.n_group == 1);
    CHECK(c.topk_group == 1);
    CHECK(c.scoring_func == MOIRA_SCORING_FUNC_SOFTMAX);
    CHECK(!c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 1.0);
    CHECK(c.q_lora_rank == 0); /* null */
    CHECK(c.kv_lora_rank == 32);
    CHECK(!c.rope_scaling.enabled); /* null */
    CHECK(c.weight_dtype == MOIRA_DTYPE_F32);
    CHECK_NEAR(moira_model_config_attention_scale(&c), 1.0 / sqrt(24.0), 1e-15);
    CHECK(moira_model_config_moe_layer_count(&c) == 2);
    /* I = 32, D = 64: 3 matrices of 2048 elements. */
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_F32) == 3 * 2048 * 4);
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_BF16) == 3 * 2048 * 2);
    /* fp8: one 128x128 block per matrix, so one f32 scale each. */
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_F8_E4M3) == 3 * (2048 + 4));
    /* mxfp4: half a byte per weight and an E8M0 byte per 32 inputs: gate/up 32 rows of 32 + 2,
     * down 64 rows of 16 + 1. int8: a byte per weight and an f32 per row. */
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_MXFP4) == 2 * 32 * 34 + 64 * 17);
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_INT8) == 3 * 2048 + 4 * (32 + 32 + 64));
    CHECK(!c.experts_quantized && moira_model_config_expert_dtype(&c) == MOIRA_DTYPE_F32);
}

/* `moira quantize`'s quantization_config: the experts' format, and the rest's from torch_dtype;
 * another quant_method is an error at its line and column. */
static void test_quantized_config(void) {
    static const char base[] =
        "{\"hidden_size\": 64, \"moe_intermediate_size\": 32, \"n_routed_experts\": 4,\n"
        "\"num_experts_per_tok\": 2, \"num_attention_heads\": 2, \"kv_lora_rank\": 16,\n"
        "\"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 4, \"v_head_dim\": 8,\n"
        "\"num_hidden_layers\": 1, \"torch_dtype\": \"bfloat16\",\n"
        "\"quantization_config\": {\"quant_method\": \"%s\", \"modules\": \"routed_experts\"}}\n";
    const char *methods[3] = {"mxfp4", "int8", "awq"};
    for (int m = 0; m < 3; m++) {
        char text[1024];
        snprintf(text, sizeof(text), base, methods[m]);
        moira_model_config_t c;
        moira_status_t status = moira_model_config_parse_string(text, strlen(text), "q.json", &c);
        if (m == 2) {
            CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT &&
                          strstr(moira_status_message(status), "q.json:5:") &&
                          strstr(moira_status_message(status), "awq"),
                      "awq: %s", status ? moira_status_message(status) : "accepted");
            moira_status_free(status);
            continue;
        }
        CHECK_OK(status);
        CHECK(c.weight_dtype == MOIRA_DTYPE_BF16 && c.experts_quantized);
        CHECK(moira_model_config_expert_dtype(&c) ==
              (m == 0 ? MOIRA_DTYPE_MXFP4 : MOIRA_DTYPE_INT8));
    }
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Every shipped model file loads and validates; returns how many were checked. */
static int test_shipped_models(void) {
    DIR *dir = opendir(MODELS);
    CHECK_MSG(dir != NULL, "cannot open %s", MODELS);
    if (!dir) return 0;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!ends_with(entry->d_name, ".yaml")) continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s%s", MODELS, entry->d_name);
        moira_model_config_t c;
        CHECK_OK(moira_model_config_load(path, &c));
        CHECK_OK(moira_model_config_validate(&c, path));
        /* Each file names its model after itself. */
        char stem[256];
        snprintf(stem, sizeof(stem), "%.*s", (int)(strlen(entry->d_name) - 5), entry->d_name);
        CHECK_MSG(!strcmp(c.name, stem), "%s: name %s", path, c.name);
        count++;
    }
    closedir(dir);
    CHECK_MSG(count >= 5, "found %d model files in %s", count, MODELS);
    return count;
}

static void test_deepseek_v3(void) {
    moira_model_config_t c;
    CHECK_OK(moira_model_config_load(MODELS "deepseek-v3.yaml", &c));
    CHECK(c.hidden_size == 7168 && c.moe_intermediate_size == 2048);
    CHECK(c.n_routed_experts == 256 && c.num_experts_per_tok == 8);
    CHECK(c.weight_dtype == MOIRA_DTYPE_F8_E4M3);
    CHECK(!moira_model_config_is_moe_layer(&c, 2));
    CHECK(moira_model_config_is_moe_layer(&c, 3));
    CHECK(moira_model_config_is_moe_layer(&c, 60));
    CHECK(!moira_model_config_is_moe_layer(&c, 61));
    CHECK(!moira_model_config_is_moe_layer(&c, -1));
    CHECK(moira_model_config_moe_layer_count(&c) == 58);

    /* fp8 expert: 3 matrices of 2048 x 7168 bytes, plus f32 scales for 16 x 56 blocks each. */
    int64_t elements = 2048LL * 7168LL;               /* 14,680,064 */
    int64_t scales = (2048 / 128) * (7168 / 128) * 4; /* 896 blocks, 3,584 bytes */
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_F8_E4M3) == 3 * (elements + scales));
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_F8_E4M3) == 44050944LL);
    CHECK(moira_model_config_expert_bytes(&c, MOIRA_DTYPE_BF16) == 88080384LL);

    /* Same as the golden v3 scale but with (128 + 64)^-0.5. */
    double m = 0.1 * log(40.0) + 1.0;
    CHECK_NEAR(moira_model_config_attention_scale(&c), m * m / sqrt(192.0), 1e-15);

    /* Qwen3 is GQA: its scale is head_dim^-0.5 and the MLA fields are unset. */
    moira_model_config_t q;
    CHECK_OK(moira_model_config_load(MODELS "qwen3-30b-a3b.yaml", &q));
    CHECK(q.attention == MOIRA_ATTENTION_GQA);
    CHECK(q.kv_lora_rank == 0 && q.num_key_value_heads == 4 && q.head_dim == 128);
    CHECK(q.n_routed_experts == 128 && q.n_shared_experts == 0 && q.num_experts_per_tok == 8);
    CHECK(moira_model_config_moe_layer_count(&q) == 48);
    CHECK_NEAR(moira_model_config_attention_scale(&q), 1.0 / sqrt(128.0), 1e-15);

    /* DeepSeek-V2's mscale_all_dim 0.707 enters the scale as well. */
    moira_model_config_t v2;
    CHECK_OK(moira_model_config_load(MODELS "deepseek-v2.yaml", &v2));
    double m2 = 0.1 * 0.707 * log(40.0) + 1.0;
    CHECK_NEAR(moira_model_config_attention_scale(&v2), m2 * m2 / sqrt(192.0), 1e-15);
    CHECK(v2.scoring_func == MOIRA_SCORING_FUNC_SOFTMAX && v2.n_group == 8 && v2.topk_group == 3);
}

static void test_default(void) {
    moira_model_config_t def, yaml;
    moira_model_config_default(&def);
    CHECK_OK(moira_model_config_validate(&def, NULL));
    CHECK(!strcmp(def.name, "moira-tiny"));
    CHECK_OK(moira_model_config_load(MODELS "moira-tiny.yaml", &yaml));
    CHECK_MSG(moira_model_config_equal(&def, &yaml),
              "moira_model_config_default() and configs/models/moira-tiny.yaml differ");
    CHECK(def.scoring_func == MOIRA_SCORING_FUNC_SIGMOID && def.n_group == 4);
    CHECK(def.rope_scaling.enabled && def.q_lora_rank == 96);
    CHECK(!moira_model_config_is_moe_layer(&def, 0) && moira_model_config_is_moe_layer(&def, 1));

    /* A config built in code gets messages without a location. */
    moira_model_config_t bad = def;
    bad.n_group = 3;
    moira_status_t s = moira_model_config_validate(&bad, "built-in");
    CHECK(moira_status_code(s) == MOIRA_CODE_INVALID_INPUT);
    CHECK_MSG(!strcmp(moira_status_message(s),
                      "built-in: n_routed_experts (32) must be divisible by n_group (3)"),
              "got %s", moira_status_message(s));
    moira_status_free(s);
    bad = def;
    bad.scoring_func = (moira_scoring_func_t)7;
    CHECK_CODE(moira_model_config_validate(&bad, NULL), MOIRA_CODE_INVALID_INPUT);
    bad = def;
    bad.rope_scaling.beta_slow = 0;
    CHECK_CODE(moira_model_config_validate(&bad, NULL), MOIRA_CODE_INVALID_INPUT);
    bad = def;
    bad.weight_dtype = MOIRA_DTYPE_I32;
    CHECK_CODE(moira_model_config_validate(&bad, NULL), MOIRA_CODE_INVALID_INPUT);
}

/* A Hugging Face config.json as shipped: many unknown keys, nested objects and lists, minified
 * separators, and the dtype taken from quantization_config or torch_dtype. */
static void test_hugging_face_json(void) {
    const char *v3 =
        "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"auto_map\":{\"AutoConfig\":"
        "\"configuration_deepseek.DeepseekV3Config\"},\"bos_token_id\":0,\"ep_size\":1,"
        "\"first_k_dense_replace\":3,\"hidden_act\":\"silu\",\"hidden_size\":7168,"
        "\"intermediate_size\":18432,\"kv_lora_rank\":512,\"max_position_embeddings\":163840,"
        "\"model_type\":\"deepseek_v3\",\"moe_intermediate_size\":2048,\"moe_layer_freq\":1,"
        "\"n_group\":8,\"n_routed_experts\":256,\"n_shared_experts\":1,\"norm_topk_prob\":true,"
        "\"num_attention_heads\":128,\"num_experts_per_tok\":8,\"num_hidden_layers\":61,"
        "\"num_key_value_heads\":128,\"num_nextn_predict_layers\":1,\"q_lora_rank\":1536,"
        "\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"quantization_config\":{"
        "\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\","
        "\"weight_block_size\":[128,128]},\"rms_norm_eps\":1e-06,\"rope_scaling\":{"
        "\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,\"mscale_all_dim\":1.0,"
        "\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},\"rope_theta\":10000,"
        "\"routed_scaling_factor\":2.5,\"scoring_func\":\"sigmoid\",\"seq_aux\":true,"
        "\"tie_word_embeddings\":false,\"topk_group\":4,\"topk_method\":\"noaux_tc\","
        "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.33.1\",\"use_cache\":true,"
        "\"v_head_dim\":128,\"vocab_size\":129280}";
    moira_model_config_t hf, yaml;
    CHECK_OK(
        moira_model_config_parse_string(v3, strlen(v3), "/models/DeepSeek-V3/config.json", &hf));
    CHECK(!strcmp(hf.name, "DeepSeek-V3"));
    CHECK(hf.weight_dtype == MOIRA_DTYPE_F8_E4M3);
    CHECK_OK(moira_model_config_load(MODELS "deepseek-v3.yaml", &yaml));
    snprintf(hf.name, sizeof(hf.name), "deepseek-v3");
    CHECK_MSG(moira_model_config_equal(&hf, &yaml), "DeepSeek-V3 config.json != deepseek-v3.yaml");

    /* No path: the name comes from model_type. */
    CHECK_OK(moira_model_config_parse_string(v3, strlen(v3), "config.json", &hf));
    CHECK(!strcmp(hf.name, "deepseek_v3"));

    /* torch_dtype alone picks the dtype; weight_dtype overrides everything. */
    const char *bf16 = "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                       " \"n_routed_experts\": 4, \"moe_intermediate_size\": 8,"
                       " \"num_experts_per_tok\": 2, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
                       " \"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"torch_dtype\": \"bfloat16\","
                       " \"quantization_config\": {\"quant_method\": \"awq\"},"
                       " \"weight_dtype\": \"f16\"}";
    CHECK_OK(moira_model_config_parse_string(bf16, strlen(bf16), NULL, &hf));
    CHECK(hf.weight_dtype == MOIRA_DTYPE_F16);
    CHECK(!strcmp(hf.name, "model"));

    /* Qwen3-MoE's own names load as is and infer GQA. */
    const char *qwen =
        "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"decoder_sparse_step\": 1,"
        " \"head_dim\": 128, \"hidden_size\": 2048, \"intermediate_size\": 6144,"
        " \"max_position_embeddings\": 40960, \"mlp_only_layers\": [], \"model_type\": "
        "\"qwen3_moe\","
        " \"moe_intermediate_size\": 768, \"norm_topk_prob\": true, \"num_attention_heads\": 32,"
        " \"num_experts\": 128, \"num_experts_per_tok\": 8, \"num_hidden_layers\": 48,"
        " \"num_key_value_heads\": 4, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null,"
        " \"rope_theta\": 1000000.0, \"sliding_window\": null, \"torch_dtype\": \"bfloat16\","
        " \"vocab_size\": 151936}";
    CHECK_OK(moira_model_config_parse_string(qwen, strlen(qwen), "Qwen3-30B-A3B/config.json", &hf));
    CHECK_OK(moira_model_config_load(MODELS "qwen3-30b-a3b.yaml", &yaml));
    snprintf(hf.name, sizeof(hf.name), "qwen3-30b-a3b");
    CHECK_MSG(moira_model_config_equal(&hf, &yaml), "Qwen3 config.json != qwen3-30b-a3b.yaml");
}

/* A downloaded model folder loads through its config.json and is named after the folder. */
static void test_load_paths(void) {
    char dir[] = "/tmp/moira-model-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char file[128];
    snprintf(file, sizeof(file), "%s/config.json", dir);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(
            "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,\n"
            " \"n_routed_experts\": 4, \"moe_intermediate_size\": 8, \"num_experts_per_tok\": 2,\n"
            " \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 4,\n"
            " \"v_head_dim\": 4}\n",
            f);
        fclose(f);
    }
    moira_model_config_t c;
    CHECK_OK(moira_model_config_load(dir, &c));
    CHECK(!strncmp(c.name, "moira-model-", 12));
    unlink(file);
    rmdir(dir);

    moira_status_t s = moira_model_config_load("/nonexistent/model.yaml", &c);
    CHECK(moira_status_code(s) == MOIRA_CODE_NOT_FOUND);
    CHECK(strstr(moira_status_message(s), "/nonexistent/model.yaml") != NULL);
    moira_status_free(s);
    CHECK_CODE(moira_model_config_load(NULL, &c), MOIRA_CODE_INVALID_ARGUMENT);
}

/* Lines of a small valid MLA config, so each malformed case can swap one. */
#define L_HIDDEN "hidden_size: 64\n"          /* line 1 */
#define L_LAYERS "num_hidden_layers: 2\n"     /* line 2 */
#define L_HEADS "num_attention_heads: 4\n"    /* line 3 */
#define L_EXPERTS "n_routed_experts: 16\n"    /* line 4 */
#define L_MOE_I "moe_intermediate_size: 32\n" /* line 5 */
#define L_K "num_experts_per_tok: 4\n"        /* line 6 */
#define L_KV "kv_lora_rank: 32\n"             /* line 7 */
#define L_NOPE "qk_nope_head_dim: 16\n"       /* line 8 */
#define L_ROPE "qk_rope_head_dim: 8\n"        /* line 9 */
#define L_V "v_head_dim: 16\n"                /* line 10 */
#define REST L_LAYERS L_HEADS L_EXPERTS L_MOE_I L_K L_KV L_NOPE L_ROPE L_V
#define BASE L_HIDDEN REST /* extra keys start at line 11 */

typedef struct bad_case {
    const char *what;
    const char *text;
    const char *message; /* must appear in the status message */
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {"string where an integer belongs", "hidden_size: abc\n" REST,
     "bad.yaml:1:14: hidden_size: expected an integer, got \"abc\""},
    {"quoted number", "hidden_size: \"64\"\n" REST,
     "bad.yaml:1:14: hidden_size: expected an integer, got the string \"64\""},
    {"negative hidden_size", "hidden_size: -64\n" REST,
     "bad.yaml:1:14: hidden_size: must not be negative, got -64"},
    {"fractional integer", "hidden_size: 64.5\n" REST, "bad.yaml:1:14:"},
    {"integer out of range", "hidden_size: 99999999999999999999\n" REST,
     "bad.yaml:1:14: hidden_size: 99999999999999999999 is out of range"},
    {"implausibly large", "hidden_size: 100000000\n" REST,
     "bad.yaml:1:14: hidden_size must be at most 16777216"},
    {"zero size", "hidden_size: 0\n" REST, "bad.yaml:1:14: hidden_size must be positive, got 0"},
    {"mapping where an integer belongs", "hidden_size: {a: 1}\n" REST,
     "bad.yaml:1:14: hidden_size: expected an integer, got a mapping"},
    {"bad indentation", L_HIDDEN "  " REST, "bad.yaml:2:20:"},
    {"missing required key", REST, "bad.yaml:1:1: missing required key hidden_size"},
    {"required key null", "hidden_size: null\n" REST,
     "bad.yaml:1:14: hidden_size: expected an integer, got null"},
    {"dense layers without intermediate_size", BASE "first_k_dense_replace: 1\n",
     "bad.yaml:1:1: missing required key intermediate_size"},
    {"duplicate key", BASE "hidden_size: 32\n",
     "bad.yaml:11:1: duplicate key hidden_size (first given at 1:14)"},
    {"experts not divisible by groups", BASE "n_group: 3\n",
     "bad.yaml:11:10: n_routed_experts (16) must be divisible by n_group (3)"},
    {"topk_group above n_group", BASE "n_group: 4\ntopk_group: 5\n",
     "bad.yaml:12:13: topk_group (5) must not exceed n_group (4)"},
    {"k above experts",
     L_HIDDEN L_LAYERS L_HEADS L_EXPERTS L_MOE_I "num_experts_per_tok: 17\n" L_KV L_NOPE L_ROPE L_V,
     "bad.yaml:6:22: num_experts_per_tok (17) must not exceed n_routed_experts (16)"},
    {"k above the kept groups", BASE "n_group: 8\ntopk_group: 1\n",
     "bad.yaml:6:22: num_experts_per_tok (4) exceeds the 2 experts"},
    {"sigmoid groups of one expert", BASE "n_group: 16\ntopk_group: 8\nscoring_func: sigmoid\n",
     "bad.yaml:11:10: with sigmoid scoring and groups, each group needs at least 2 experts"},
    {"unknown scoring_func", BASE "scoring_func: relu\n",
     "bad.yaml:11:15: scoring_func: unknown scoring function \"relu\""},
    {"rope_scaling dynamic", BASE "rope_scaling:\n  type: dynamic\n  factor: 2\n",
     "bad.yaml:12:9: rope_scaling type \"dynamic\" is not implemented"},
    {"rope_scaling without factor",
     BASE "rope_scaling: {type: yarn, original_max_position_embeddings: 4096}\n",
     "bad.yaml:11:15: rope_scaling: missing required key factor"},
    {"rope_scaling without type", BASE "rope_scaling: {factor: 4}\n",
     "bad.yaml:11:15: rope_scaling: missing required key type"},
    {"odd rope dim",
     L_HIDDEN L_LAYERS L_HEADS L_EXPERTS L_MOE_I L_K L_KV L_NOPE "qk_rope_head_dim: 7\n" L_V,
     "bad.yaml:9:19: qk_rope_head_dim must be even"},
    {"zero rms_norm_eps", BASE "rms_norm_eps: 0\n",
     "bad.yaml:11:15: rms_norm_eps must be positive"},
    {"nan rope_theta", BASE "rope_theta: .nan\n",
     "bad.yaml:11:13: rope_theta: expected a finite number, got \".nan\""},
    {"negative capacity_factor", BASE "capacity_factor: -1\n",
     "bad.yaml:11:18: capacity_factor must be 0 (unlimited) or positive, got -1"},
    {"first_k_dense_replace above layers", BASE "first_k_dense_replace: 3\nintermediate_size: 64\n",
     "bad.yaml:11:24: first_k_dense_replace (3) must not exceed num_hidden_layers (2)"},
    {"unknown weight_dtype", BASE "weight_dtype: int8\n",
     "bad.yaml:11:15: weight_dtype: expected one of f32, f16, bf16, fp8_e4m3"},
    {"not a boolean", BASE "norm_topk_prob: yes\n",
     "bad.yaml:11:17: norm_topk_prob: expected true or false, got \"yes\""},
    {"unsupported quantization", BASE "quantization_config: {quant_method: awq}\n",
     "bad.yaml:11:37: quantization_config quant_method \"awq\" is not supported"},
    {"fp8 with other blocks",
     BASE "quantization_config: {quant_method: fp8, weight_block_size: [64, 64]}\n",
     "bad.yaml:11:61: quantization_config: fp8 needs weight_block_size [128, 128]"},
    {"gqa heads not a multiple",
     L_HIDDEN L_LAYERS L_HEADS L_EXPERTS L_MOE_I L_K "attention: gqa\nnum_key_value_heads: 3\n",
     "bad.yaml:8:22: num_attention_heads (4) must be a multiple of num_key_value_heads (3)"},
    {"unknown attention", BASE "attention: mha\n", "bad.yaml:11:12: attention: unknown attention"},
    {"json trailing comma", "{\n  \"hidden_size\": 64,\n  \"num_hidden_layers\": 2,\n}\n",
     "bad.yaml:3:25: trailing comma before '}' is not valid JSON"},
    {"json trailing comma in a list",
     "{\"quantization_config\": {\"weight_block_size\": [128, 128,]}}",
     "bad.yaml:1:56: trailing comma before ']'"},
    {"json missing comma", "{\"hidden_size\": 64 \"num_hidden_layers\": 2}",
     "bad.yaml:1:39: did not find expected ',' or '}'"},
    {"empty file", "", "bad.yaml:1:1: empty model config"},
    {"only a comment", "# nothing here\n", "bad.yaml:1:1: empty model config"},
    {"top-level list", "- hidden_size: 64\n- n_routed_experts: 8\n",
     "bad.yaml:1:1: the top level must be a mapping of model settings, got a list"},
    {"top-level scalar", "deepseek\n", "bad.yaml:1:1: the top level must be a mapping"},
    {"control character", L_HIDDEN "\x01\n", "bad.yaml:2:1: control characters are not allowed"},
    {"two documents", BASE "---\nhidden_size: 1\n",
     "bad.yaml:12:1: a model config holds one YAML document"},
    {"name too long",
     BASE "name: "
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
     "bad.yaml:11:7: name: must be 1 to 63 characters long"},
};

static void test_malformed(void) {
    size_t n = sizeof(bad_cases) / sizeof(bad_cases[0]);
    CHECK(n >= 15);
    for (size_t i = 0; i < n; i++) {
        const bad_case_t *b = &bad_cases[i];
        moira_model_config_t c;
        moira_status_t s =
            moira_model_config_parse_string(b->text, strlen(b->text), "bad.yaml", &c);
        moira_test_checks++;
        if (moira_status_code(s) != MOIRA_CODE_INVALID_INPUT)
            moira_test_fail(__FILE__, __LINE__, "%s: expected INVALID_INPUT, got %s (%s)", b->what,
                            moira_code_name(moira_status_code(s)), moira_status_message(s));
        else if (!strstr(moira_status_message(s), b->message))
            moira_test_fail(__FILE__, __LINE__, "%s: message\n  %s\nlacks\n  %s", b->what,
                            moira_status_message(s), b->message);
        else
            printf("  %-40s %s\n", b->what, moira_status_message(s));
        moira_status_free(s);
    }
    /* The base of the table is itself valid, so each case fails for its own reason. */
    moira_model_config_t c;
    CHECK_OK(moira_model_config_parse_string(BASE, strlen(BASE), "base.yaml", &c));
    CHECK(!strcmp(c.name, "base"));
    /* Not NUL-terminated: only `len` bytes are read. */
    char text[] = BASE "hidden_size: oops";
    CHECK_OK(moira_model_config_parse_string(text, strlen(BASE), NULL, &c));
}

int main(void) {
    test_golden_v3();
    test_quantized_config();
    test_golden_v2lite();
    int models = test_shipped_models();
    printf("checked %d model files\n", models);
    test_deepseek_v3();
    test_default();
    test_hugging_face_json();
    test_load_paths();
    test_malformed();
    return moira_test_finish("test_model_config");
}

/* What the hardening pass added to the parsers: "did you mean" for misspelt keys (one shared
 * edit-distance helper), the nesting limit that keeps libyaml's quadratic cost of deep flow
 * collections away, the hint for tabs, safetensors parsed from memory, and an index that names no
 * tensor. Each message is checked for its text and its file:line:col. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "placement/topology.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/suggest.h"
#include "runtime/yaml_text.h"
#include "tests/unit/testing.h"

/* Checks that `status` failed with `code` and that its message contains `needle`. */
static void expect_message(moira_status_t status, moira_code_t code, const char *needle) {
    const char *message = moira_status_message(status);
    CHECK_MSG(moira_status_code(status) == code, "expected %s, got %s: %s", moira_code_name(code),
              moira_code_name(moira_status_code(status)), message);
    CHECK_MSG(strstr(message, needle) != NULL, "message \"%s\" lacks \"%s\"", message, needle);
    printf("  %s\n", message);
    moira_status_free(status);
}

/* Whether moira_suggest answers `expected` for `word`. */
static bool suggests(const char *const *keys, const char *word, const char *expected) {
    const char *got = moira_suggest(word, keys);
    if (got && !strcmp(got, expected)) return true;
    printf("  suggest(\"%s\") = %s, expected %s\n", word, got ? got : "NULL", expected);
    return false;
}

static void test_suggest(void) {
    static const char *const keys[] = {"bandwidth_gbs", "memory_gib", "cores", "id",
                                       "f32",           "fp8",        NULL};
    CHECK(suggests(keys, "bandwidht_gbs", "bandwidth_gbs")); /* swapped letters */
    CHECK(suggests(keys, "bandwith_gbs", "bandwidth_gbs"));  /* a letter short */
    CHECK(suggests(keys, "Memory_GiB", "memory_gib"));       /* case */
    CHECK(suggests(keys, "memory_gb", "memory_gib"));
    CHECK(suggests(keys, "core", "cores"));
    CHECK(suggests(keys, "f3", "f32"));
    CHECK(moira_suggest("f16", keys) == NULL); /* two edits from a three-letter key: another key */
    CHECK(moira_suggest("latency_us", keys) == NULL); /* nothing close */
    CHECK(moira_suggest("x", keys) == NULL);          /* one letter is no typo of "id" */
    CHECK(moira_suggest("", keys) == NULL);
    char buf[64];
    CHECK(!strcmp(moira_suggest_clause("idd", keys, buf, sizeof(buf)), " (did you mean \"id\"?)"));
    CHECK(!strcmp(moira_suggest_clause("zzzzzz", keys, buf, sizeof(buf)), ""));
    /* A very long word is compared with nothing rather than overflowing the table. */
    char long_word[200];
    memset(long_word, 'a', sizeof(long_word) - 1);
    long_word[sizeof(long_word) - 1] = '\0';
    CHECK(moira_suggest(long_word, keys) == NULL);
}

static const char topology_with_typo[] = "name: box\n"
                                         "hosts:\n"
                                         "  - name: h0\n"
                                         "    numa_nodes:\n"
                                         "      - id: 0\n"
                                         "        memory_gib: 64\n"
                                         "        bandwidht_gbs: 100\n"
                                         "        cores: 8\n"
                                         "        peak_tflops: {f32: 1}\n";

static void test_unknown_keys(void) {
    moira_topology_t topology;
    expect_message(
        moira_topology_parse(topology_with_typo, strlen(topology_with_typo), "topo.yaml", NULL,
                             &topology),
        MOIRA_CODE_INVALID_INPUT,
        "topo.yaml:7:9: unknown key \"bandwidht_gbs\" (did you mean \"bandwidth_gbs\"?)");
    static const char far[] = "name: box\nhostz: []\nlatency: 3\n";
    expect_message(moira_topology_parse(far, strlen(far), "topo.yaml", NULL, &topology),
                   MOIRA_CODE_INVALID_INPUT, "topo.yaml:2:1: unknown key \"hostz\" (did you mean");
    static const char nothing_close[] = "name: box\nmachines: []\n";
    expect_message(
        moira_topology_parse(nothing_close, strlen(nothing_close), "topo.yaml", NULL, &topology),
        MOIRA_CODE_INVALID_INPUT, "expected one of: name, hosts, links, network");

    /* Model config YAML is Moira's schema: a typo is an error, located, with a suggestion. */
    moira_model_config_t config;
    static const char yaml_typo[] = "hidden_size: 64\nnum_hidden_layer: 2\n";
    expect_message(moira_model_config_parse_string(yaml_typo, strlen(yaml_typo), "m.yaml", &config),
                   MOIRA_CODE_INVALID_INPUT,
                   "m.yaml:2:1: unknown key \"num_hidden_layer\" (did you mean "
                   "\"num_hidden_layers\"?)");
    static const char rope_typo[] = "hidden_size: 64\nrope_scaling: {type: yarn, factr: 4}\n";
    expect_message(moira_model_config_parse_string(rope_typo, strlen(rope_typo), "m.yaml", &config),
                   MOIRA_CODE_INVALID_INPUT,
                   "m.yaml:2:28: unknown key \"factr\" in rope_scaling (did you mean \"factor\"?)");
    static const char yaml_unknown[] = "hidden_size: 64\nflux_capacitor: 1\n";
    expect_message(
        moira_model_config_parse_string(yaml_unknown, strlen(yaml_unknown), "m.yaml", &config),
        MOIRA_CODE_INVALID_INPUT, "m.yaml:2:1: unknown key \"flux_capacitor\" (a model config");

    /* The same model as YAML with Hugging Face keys that do not change the math loads, and as
     * config.json with any unknown key at all. */
    static const char base[] = "hidden_size: 64\nnum_hidden_layers: 2\nnum_attention_heads: 2\n"
                               "n_routed_experts: 8\nmoe_intermediate_size: 32\n"
                               "num_experts_per_tok: 2\nkv_lora_rank: 16\nqk_nope_head_dim: 8\n"
                               "qk_rope_head_dim: 4\nv_head_dim: 8\n";
    char text[1024];
    snprintf(text, sizeof(text), "%sarchitectures: [DeepseekV3ForCausalLM]\nuse_cache: true\n",
             base);
    CHECK_OK(moira_model_config_parse_string(text, strlen(text), "m.yaml", &config));
    CHECK(config.n_routed_experts == 8);
    static const char json[] =
        "{\"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
        " \"n_routed_experts\": 8, \"moe_intermediate_size\": 32, \"num_experts_per_tok\": 2,"
        " \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 4,"
        " \"v_head_dim\": 8, \"flux_capacitor\": 1, \"num_shared_experts\": 1}";
    CHECK_OK(moira_model_config_parse_string(json, strlen(json), "config.json", &config));
    CHECK(config.n_shared_experts == 0); /* the near miss is warned about, not read */
}

/* `depth` nested flow lists as a topology's hosts value. */
static char *deep_text(int depth) {
    size_t len = (size_t)depth * 2 + 64;
    char *text = malloc(len);
    int n = snprintf(text, len, "name: deep\nhosts: ");
    for (int i = 0; i < depth; i++)
        text[n++] = '[';
    for (int i = 0; i < depth; i++)
        text[n++] = ']';
    text[n++] = '\n';
    text[n] = '\0';
    return text;
}

static void test_nesting_limit(void) {
    /* 100,000 levels took libyaml half a minute; refused, it takes no time at all. */
    char *text = deep_text(100000);
    clock_t start = clock();
    moira_topology_t topology;
    expect_message(moira_topology_parse(text, strlen(text), "deep.yaml", NULL, &topology),
                   MOIRA_CODE_INVALID_INPUT, "deep.yaml:2:71: mappings and lists nested more than");
    moira_model_config_t config;
    expect_message(moira_model_config_parse_string(text, strlen(text), "deep.yaml", &config),
                   MOIRA_CODE_INVALID_INPUT, "deep.yaml:2:71: mappings and lists nested more than");
    double seconds = (double)(clock() - start) / CLOCKS_PER_SEC;
    CHECK_MSG(seconds < 2.0, "refusing deep nesting took %.2f s", seconds);
    free(text);
    /* At the limit it is only the wrong shape, not too deep. */
    text = deep_text(MOIRA_YAML_MAX_DEPTH - 1);
    expect_message(moira_topology_parse(text, strlen(text), "ok.yaml", NULL, &topology),
                   MOIRA_CODE_INVALID_INPUT, "must be a mapping");
    free(text);
    /* Deep block mappings count too. */
    char block[8192];
    size_t n = 0;
    for (int i = 0; i <= MOIRA_YAML_MAX_DEPTH; i++)
        n += (size_t)snprintf(block + n, sizeof(block) - n, "%*sk%d:\n", i, "", i);
    expect_message(moira_model_config_parse_string(block, n, "block.yaml", &config),
                   MOIRA_CODE_INVALID_INPUT, "block.yaml:65:65: mappings and lists nested");
}

static void test_tab_hint(void) {
    static const char tabbed[] = "name: box\nhosts:\n\t- name: h0\n";
    moira_topology_t topology;
    expect_message(moira_topology_parse(tabbed, strlen(tabbed), "tab.yaml", NULL, &topology),
                   MOIRA_CODE_INVALID_INPUT, "tab.yaml:3:1: YAML syntax error");
    moira_status_t status =
        moira_topology_parse(tabbed, strlen(tabbed), "tab.yaml", NULL, &topology);
    CHECK(strstr(moira_status_message(status), "tab: YAML indents") != NULL);
    moira_status_free(status);
    moira_model_config_t config;
    static const char config_tab[] = "hidden_size: 64\nrope_scaling:\n\t- 2\n";
    expect_message(
        moira_model_config_parse_string(config_tab, strlen(config_tab), "m.yaml", &config),
        MOIRA_CODE_INVALID_INPUT, "tab: YAML indents");
}

static void test_safetensors_memory(void) {
    /* The golden file opens the same from memory as from disk. */
    const char *path = MOIRA_TEST_DATA_DIR "/golden/gate_v3.inputs.safetensors";
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return;
    static unsigned char bytes[1 << 16];
    size_t size = fread(bytes, 1, sizeof(bytes), f);
    fclose(f);
    moira_safetensors_t *from_disk = NULL, *from_memory = NULL;
    CHECK_OK(moira_safetensors_open(path, &from_disk));
    CHECK_OK(moira_safetensors_open_memory("gate.safetensors", bytes, size, &from_memory));
    if (!from_disk || !from_memory) return;
    CHECK(moira_safetensors_count(from_disk) == moira_safetensors_count(from_memory));
    CHECK(moira_safetensors_count(from_disk) >= 2);
    for (size_t i = 0; i < moira_safetensors_count(from_disk); i++) {
        const char *name = moira_safetensors_name(from_disk, i);
        const moira_tensor_t *a = NULL, *b = NULL;
        CHECK_OK(moira_safetensors_find(from_disk, name, &a));
        CHECK_OK(moira_safetensors_find(from_memory, name, &b));
        if (!a || !b) continue;
        CHECK(a->dtype == b->dtype && moira_tensor_nbytes(a) == moira_tensor_nbytes(b));
        CHECK(!memcmp(a->data, b->data, moira_tensor_nbytes(a)));
    }
    moira_safetensors_close(from_disk);
    moira_safetensors_close(from_memory);
    /* Truncated in memory: the same refusal as a truncated file. */
    moira_safetensors_t *file = NULL;
    expect_message(moira_safetensors_open_memory("short.safetensors", bytes, 5, &file),
                   MOIRA_CODE_INVALID_INPUT, "short.safetensors: file is 5 bytes");
    expect_message(moira_safetensors_open_memory("cut.safetensors", bytes, size - 1, &file),
                   MOIRA_CODE_INVALID_INPUT, "cut.safetensors");
    CHECK(file == NULL);
}

int main(void) {
    test_suggest();
    test_unknown_keys();
    test_nesting_limit();
    test_tab_hint();
    test_safetensors_memory();
    return moira_test_finish("test_parser_limits");
}

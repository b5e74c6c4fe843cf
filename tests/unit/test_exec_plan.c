/* The executor's acceptance test (issue 6): a two-layer model whose MoE layer a hand-written plan
 * (tests/data/exec/plan.yaml) spreads over opencl:0, npu:0 and CPU memory, run as a user would:
 *
 *   moira run --topology T --model M --plan P --weights W --inputs I -o O --record-profile F --json
 *
 * W and I are made here from a fixed seed and written as a Hugging Face style checkpoint. The
 * output is held to the bf16 limit against the fp64 reference of ops/reference.c computed in
 * this process; every one of the three devices must have served tokens; the recorded profile
 * must equal the expert load the reference router gives, and must plan with moira plan. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/random_weights.h"
#include "ops/reference.h"
#include "placement/profile.h"
#include "placement/yaml_doc.h"
#include "runtime/backend.h"
#include "runtime/safetensors.h"
#include "tests/unit/testing.h"

#define TOKENS 24
#define SEED 7
#define MAX_NAMED 256

static char work[PATH_MAX];
static char data[PATH_MAX];

typedef struct named_list {
    moira_named_tensor_t items[MAX_NAMED];
    char names[MAX_NAMED][128];
    int n;
} named_list_t;

/* Adds `tensor` (when present) as model.layers.LAYER.SUFFIX. */
static void add(named_list_t *list, int64_t layer, const char *suffix, const moira_tensor_t *t) {
    if (!t || list->n == MAX_NAMED) return;
    snprintf(list->names[list->n], sizeof(list->names[0]), "model.layers.%lld.%s", (long long)layer,
             suffix);
    list->items[list->n].name = list->names[list->n];
    list->items[list->n].tensor = t;
    list->n++;
}

static void add_mlp(named_list_t *list, int64_t layer, const char *stem,
                    const moira_mlp_weights_t *w) {
    char name[80];
    snprintf(name, sizeof(name), "%s.gate_proj.weight", stem);
    add(list, layer, name, w->gate_proj);
    snprintf(name, sizeof(name), "%s.up_proj.weight", stem);
    add(list, layer, name, w->up_proj);
    snprintf(name, sizeof(name), "%s.down_proj.weight", stem);
    add(list, layer, name, w->down_proj);
}

/* Every tensor of one layer under its Hugging Face DeepSeek name (DESIGN.md §5). */
static void name_layer(named_list_t *list, int64_t l, const moira_layer_weights_t *w) {
    add(list, l, "input_layernorm.weight", w->input_layernorm);
    add(list, l, "post_attention_layernorm.weight", w->post_attention_layernorm);
    add(list, l, "self_attn.q_a_proj.weight", w->mla.q_a_proj);
    add(list, l, "self_attn.q_a_layernorm.weight", w->mla.q_a_layernorm);
    add(list, l, "self_attn.q_b_proj.weight", w->mla.q_b_proj);
    add(list, l, "self_attn.q_proj.weight", w->mla.q_proj);
    add(list, l, "self_attn.kv_a_proj_with_mqa.weight", w->mla.kv_a_proj_with_mqa);
    add(list, l, "self_attn.kv_a_layernorm.weight", w->mla.kv_a_layernorm);
    add(list, l, "self_attn.kv_b_proj.weight", w->mla.kv_b_proj);
    add(list, l, "self_attn.o_proj.weight", w->mla.o_proj);
    if (!w->is_moe) {
        add_mlp(list, l, "mlp", &w->mlp);
        return;
    }
    add(list, l, "mlp.gate.weight", w->moe.gate);
    add(list, l, "mlp.gate.e_score_correction_bias", w->moe.e_score_correction_bias);
    for (int64_t e = 0; e < w->moe.n_experts; e++) {
        char stem[48];
        snprintf(stem, sizeof(stem), "mlp.experts.%lld", (long long)e);
        moira_mlp_weights_t expert = {w->moe.expert_gate_proj[e], w->moe.expert_up_proj[e],
                                      w->moe.expert_down_proj[e]};
        add_mlp(list, l, stem, &expert);
    }
    add_mlp(list, l, "mlp.shared_experts", &w->moe.shared);
}

static int run_command(const char *command) {
    int rc = system(command);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The --json summary: each of the three targets on the device the topology selects, with tokens
 * served and its own check passed, and the whole run agreed. */
static void check_summary(const char *path) {
    moira_yaml_doc_t doc;
    CHECK_OK(moira_yaml_doc_load(path, "run summary", &doc));
    if (moira_test_failures) return;
    static const char *const names[] = {"gpu0", "npu0", "box/numa0"};
    static const char *const devices[] = {"opencl:0", "npu:0", "cpu:0"};
    bool seen[3] = {false, false, false};
    yaml_node_t *root = moira_yaml_root(&doc), *list = moira_yaml_get(&doc, root, "devices");
    CHECK(list != NULL);
    for (int i = 0; list && i < moira_yaml_length(list); i++) {
        yaml_node_t *entry = moira_yaml_item(&doc, list, i);
        char name[64] = "", device[64] = "";
        double tokens = 0;
        bool agreed = false;
        CHECK_OK(moira_yaml_string(&doc, moira_yaml_get(&doc, entry, "name"), "name", name,
                                   sizeof(name)));
        CHECK_OK(moira_yaml_string(&doc, moira_yaml_get(&doc, entry, "device"), "device", device,
                                   sizeof(device)));
        CHECK_OK(
            moira_yaml_number(&doc, moira_yaml_get(&doc, entry, "tokens"), "tokens", 0, &tokens));
        CHECK_OK(moira_yaml_bool(&doc, moira_yaml_get(&doc, entry, "agreed"), "agreed", &agreed));
        for (int j = 0; j < 3; j++) {
            if (strcmp(name, names[j])) continue;
            seen[j] = true;
            CHECK_MSG(!strcmp(device, devices[j]), "%s ran on %s, not %s", name, device,
                      devices[j]);
            CHECK_MSG(tokens > 0, "%s served no tokens", name);
            CHECK_MSG(agreed, "%s disagreed with the reference", name);
        }
    }
    for (int j = 0; j < 3; j++)
        CHECK_MSG(seen[j], "the summary has no row for %s", names[j]);
    bool agreed = false;
    CHECK_OK(moira_yaml_bool(&doc, moira_yaml_get(&doc, root, "agreed"), "agreed", &agreed));
    CHECK(agreed);
    moira_yaml_doc_free(&doc);
}

/* Writes the checkpoint and the batch, runs the plan, checks output, summary and profile. */
static void run_plan(const moira_model_config_t *c, moira_random_layer_t *layers) {
    named_list_t *list = calloc(1, sizeof(*list));
    CHECK(list != NULL);
    if (!list) return;
    for (int64_t l = 0; l < c->num_hidden_layers; l++)
        name_layer(list, l, &layers[l].weights);
    char weights[PATH_MAX + 32], inputs[PATH_MAX + 32], output[PATH_MAX + 32],
        profile[PATH_MAX + 32], summary[PATH_MAX + 32];
    snprintf(weights, sizeof(weights), "%s/weights.safetensors", work);
    snprintf(inputs, sizeof(inputs), "%s/inputs.safetensors", work);
    snprintf(output, sizeof(output), "%s/out.safetensors", work);
    snprintf(profile, sizeof(profile), "%s/profile.yaml", work);
    snprintf(summary, sizeof(summary), "%s/summary.json", work);
    CHECK_OK(moira_safetensors_write(weights, list->items, (size_t)list->n));
    free(list);
    moira_tensor_t x, positions, ref, tmp;
    int64_t shape[1] = {TOKENS};
    CHECK_OK(moira_tensor_alloc_f32(TOKENS, c->hidden_size, &x));
    CHECK_OK(moira_tensor_alloc_f32(TOKENS, c->hidden_size, &ref));
    CHECK_OK(moira_tensor_alloc_f32(TOKENS, c->hidden_size, &tmp));
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_I32, 1, shape, &positions));
    if (moira_test_failures) return;
    moira_test_fill_uniform(x.data, (size_t)(TOKENS * c->hidden_size), SEED + 1, -1, 1);
    for (int i = 0; i < TOKENS; i++)
        ((int32_t *)positions.data)[i] = i;
    moira_named_tensor_t in = {"hidden_states", &x};
    CHECK_OK(moira_safetensors_write(inputs, &in, 1));

    static char command[16 * PATH_MAX];
    snprintf(command, sizeof(command),
             "'%s' run --topology '%s/topology.yaml' --model '%s/model.yaml' --plan "
             "'%s/plan.yaml' --weights '%s' --inputs '%s' -o '%s' --record-profile '%s' --json "
             ">'%s'",
             MOIRA_BINARY, data, data, data, weights, inputs, output, profile, summary);
    CHECK_MSG(run_command(command) == 0, "moira run failed: %s", command);
    if (moira_test_failures) return;

    /* The fp64 reference, layer by layer; layer 1's input also gives the expected load. */
    double expected_load[64] = {0};
    CHECK_OK(moira_ref_layer(c, 0, &layers[0].weights, &x, &positions, &tmp, false));
    CHECK_OK(moira_test_reference_moe_load(c, &layers[1].weights, &tmp, &positions, expected_load));
    CHECK_OK(moira_ref_layer(c, 1, &layers[1].weights, &tmp, &positions, &ref, false));
    moira_safetensors_t *out = NULL;
    const moira_tensor_t *got = NULL;
    CHECK_OK(moira_safetensors_open(output, &out));
    if (out) CHECK_OK(moira_safetensors_find(out, "output", &got));
    if (got) {
        CHECK(moira_tensor_same_shape(got, &ref));
        double nmse = moira_test_nmse_f32(got->data, ref.data, (size_t)moira_tensor_numel(&ref));
        double limit = moira_precision_nmse_limit(MOIRA_DTYPE_BF16);
        printf("plan over opencl:0, npu:0, cpu memory: NMSE %.3g vs the bf16 limit %.0e\n", nmse,
               limit);
        CHECK_MSG(nmse <= limit, "NMSE %g over the bf16 limit %g", nmse, limit);
        CHECK_MSG(nmse > 0, "an output identical to the reference is suspicious (NMSE 0)");
    }
    if (out) moira_safetensors_close(out);
    check_summary(summary);

    moira_profile_t recorded;
    CHECK_OK(moira_profile_load(profile, c, &recorded));
    if (!moira_test_failures) {
        const double *load = moira_profile_layer_load(&recorded, 1);
        CHECK(load != NULL);
        for (int64_t e = 0; load && e < c->n_routed_experts; e++)
            CHECK_MSG(load[e] == expected_load[e], "expert %lld: recorded load %g, reference %g",
                      (long long)e, load[e], expected_load[e]);
        moira_profile_free(&recorded);
    }
    snprintf(command, sizeof(command),
             "'%s' plan --topology '%s/topology.yaml' --model '%s/model.yaml' --profile '%s' "
             "--redundant 2 -o '%s/replanned.yaml' >/dev/null",
             MOIRA_BINARY, data, data, profile, work);
    CHECK_MSG(run_command(command) == 0, "moira plan --profile failed: %s", command);
    moira_tensor_release(&x);
    moira_tensor_release(&positions);
    moira_tensor_release(&ref);
    moira_tensor_release(&tmp);
}

int main(void) {
    CHECK_OK(moira_runtime_init());
    moira_device_t *opencl = NULL, *npu = NULL;
    moira_status_t s1 = moira_device_find("opencl:0", &opencl),
                   s2 = moira_device_find("npu:0", &npu);
    if (s1 || s2) {
        printf("skip: needs opencl:0 and npu:0 (%s)\n", moira_status_message(s1 ? s1 : s2));
        moira_status_free(s1);
        moira_status_free(s2);
        return MOIRA_TEST_SKIP;
    }
    snprintf(data, sizeof(data), "%s/exec", MOIRA_TEST_DATA_DIR);
    snprintf(work, sizeof(work), "%s/moira-exec-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    CHECK(mkdtemp(work) != NULL);
    char model_path[PATH_MAX + 16];
    snprintf(model_path, sizeof(model_path), "%s/model.yaml", data);
    moira_model_config_t config;
    CHECK_OK(moira_model_config_load(model_path, &config));
    moira_random_layer_t layers[2];
    memset(layers, 0, sizeof(layers));
    CHECK(config.num_hidden_layers == 2 && config.n_routed_experts <= 64);
    for (int64_t l = 0; l < 2 && !moira_test_failures; l++)
        CHECK_OK(moira_random_layer_create(&config, l, SEED, MOIRA_DTYPE_BF16, &layers[l]));
    if (!moira_test_failures) run_plan(&config, layers);
    for (int l = 0; l < 2; l++)
        moira_random_layer_release(&layers[l]);
    char cleanup[PATH_MAX + 16];
    snprintf(cleanup, sizeof(cleanup), "rm -rf '%s'", work);
    if (run_command(cleanup) != 0) printf("could not remove %s\n", work);
    return moira_test_finish("test_exec_plan");
}

/* Every golden case (PyTorch known answers, tests/data/golden) through `moira op` on every device
 * this build finds, as a user would run it, held to the device's precision limit (DESIGN.md §4).
 * mla and layer cases run twice: prefill, and --decode through the latent cache. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/safetensors.h"
#include "tests/unit/testing.h"

static const char *golden_cases[] = {"gate_v2lite", "gate_v3",    "moe_v2lite",  "moe_v2lite_bf16",
                                     "moe_v3",      "mla_v2lite", "mla_v3_yarn", "layer_v3"};

static char work_dir[PATH_MAX];

/* Runs `moira op` for one case; returns the process exit code. */
static int run_moira_op(const char *op, const char *name, const char *device, bool decode,
                        const char *out_path) {
    char command[4 * PATH_MAX];
    snprintf(command, sizeof(command),
             "'%s' op %s --model '%s/golden/%s.json' --inputs '%s/golden/%s.inputs.safetensors' "
             "--backend %s %s -o '%s'",
             MOIRA_BINARY, op, MOIRA_TEST_DATA_DIR, name, MOIRA_TEST_DATA_DIR, name, device,
             decode ? "--decode" : "", out_path);
    int rc = system(command);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Index sets per token must match, unless the k-th and (k+1)-th selection scores are closer than
 * the device's precision; weights are compared by NMSE. */
static void compare_gate(const char *label, moira_safetensors_t *got, moira_safetensors_t *want,
                         double limit) {
    const moira_tensor_t *gi, *gw, *wi, *ww, *ws;
    CHECK_OK(moira_safetensors_find(got, "topk_idx", &gi));
    CHECK_OK(moira_safetensors_find(got, "topk_weight", &gw));
    CHECK_OK(moira_safetensors_find(want, "topk_idx", &wi));
    CHECK_OK(moira_safetensors_find(want, "topk_weight", &ww));
    CHECK_OK(moira_safetensors_find(want, "selection_scores", &ws));
    if (moira_test_failures) return;
    CHECK_MSG(moira_tensor_same_shape(gi, wi), "%s: topk_idx shape differs", label);
    int64_t t = wi->shape[0], k = wi->shape[1], e = ws->shape[1];
    const int32_t *got_idx = gi->data, *want_idx = wi->data;
    const float *sel = ws->data;
    int mismatched_tokens = 0;
    for (int64_t r = 0; r < t; r++) {
        bool same = true;
        for (int64_t j = 0; j < k; j++) {
            bool found = false;
            for (int64_t m = 0; m < k; m++)
                found |= got_idx[r * k + j] == want_idx[r * k + m];
            same &= found;
        }
        if (same) continue;
        /* A near tie at the boundary may legitimately swap the last expert. */
        float kth = sel[r * e + want_idx[r * k + k - 1]], next = -INFINITY;
        for (int64_t c = 0; c < e; c++) {
            bool chosen = false;
            for (int64_t m = 0; m < k; m++)
                chosen |= want_idx[r * k + m] == c;
            if (!chosen && sel[r * e + c] > next) next = sel[r * e + c];
        }
        if (fabsf(kth - next) > sqrt(limit) * fabsf(kth)) mismatched_tokens++;
    }
    CHECK_MSG(mismatched_tokens == 0, "%s: %d tokens chose other experts", label,
              mismatched_tokens);
    double nmse = moira_test_nmse_f32(gw->data, ww->data, (size_t)moira_tensor_numel(ww));
    CHECK_MSG(nmse <= limit, "%s: topk_weight NMSE %.3g > %.3g", label, nmse, limit);
    printf("%-28s topk sets match, weight NMSE %.3g\n", label, nmse);
}

static void compare_output(const char *label, moira_safetensors_t *got, moira_safetensors_t *want,
                           double limit) {
    const moira_tensor_t *g, *w;
    CHECK_OK(moira_safetensors_find(got, "output", &g));
    CHECK_OK(moira_safetensors_find(want, "output", &w));
    if (moira_test_failures) return;
    CHECK_MSG(moira_tensor_same_shape(g, w) && g->dtype == MOIRA_DTYPE_F32,
              "%s: output shape or dtype differs", label);
    double nmse = moira_test_nmse_f32(g->data, w->data, (size_t)moira_tensor_numel(w));
    CHECK_MSG(nmse <= limit, "%s: NMSE %.3g > limit %.3g", label, nmse, limit);
    printf("%-28s NMSE %.3g (limit %.3g)\n", label, nmse, limit);
}

static void check_case(const char *name, const moira_device_info_t *device, bool decode) {
    char op[16], label[128], out_path[PATH_MAX + 64], want_path[PATH_MAX];
    snprintf(op, sizeof(op), "%.*s", (int)strcspn(name, "_"), name);
    snprintf(label, sizeof(label), "%s %s%s", device->name, name, decode ? " --decode" : "");
    snprintf(out_path, sizeof(out_path), "%s/%s.out.safetensors", work_dir, name);
    snprintf(want_path, sizeof(want_path), "%s/golden/%s.expected.safetensors", MOIRA_TEST_DATA_DIR,
             name);
    unlink(out_path);
    int rc = run_moira_op(op, name, device->name, decode, out_path);
    CHECK_MSG(rc == 0, "%s: moira op exited %d", label, rc);
    if (rc != 0) return;
    moira_safetensors_t *got = NULL, *want = NULL;
    CHECK_OK(moira_safetensors_open(out_path, &got));
    CHECK_OK(moira_safetensors_open(want_path, &want));
    double limit = moira_precision_nmse_limit(device->compute_precision);
    if (got && want) {
        if (!strcmp(op, "gate"))
            compare_gate(label, got, want, limit);
        else
            compare_output(label, got, want, limit);
    }
    if (got) moira_safetensors_close(got);
    if (want) moira_safetensors_close(want);
}

/* A checkpoint as users have it: weights under model.layers.N.* in their own file, activations
 * in another. The golden layer is re-filed as layer 1 and run with --weights and --layer 1. */
static void check_checkpoint_layout(void) {
    char inputs_path[PATH_MAX], activations_path[PATH_MAX + 32], weights_path[PATH_MAX + 32];
    char out_path[PATH_MAX + 32], want_path[PATH_MAX], command[6 * PATH_MAX];
    snprintf(inputs_path, sizeof(inputs_path), "%s/golden/layer_v3.inputs.safetensors",
             MOIRA_TEST_DATA_DIR);
    snprintf(want_path, sizeof(want_path), "%s/golden/layer_v3.expected.safetensors",
             MOIRA_TEST_DATA_DIR);
    snprintf(activations_path, sizeof(activations_path), "%s/activations.safetensors", work_dir);
    snprintf(weights_path, sizeof(weights_path), "%s/checkpoint.safetensors", work_dir);
    snprintf(out_path, sizeof(out_path), "%s/checkpoint.out.safetensors", work_dir);
    moira_safetensors_t *golden = NULL;
    CHECK_OK(moira_safetensors_open(inputs_path, &golden));
    if (!golden) return;
    size_t n = moira_safetensors_count(golden);
    moira_named_tensor_t *weights = calloc(n, sizeof(*weights));
    char(*names)[256] = calloc(n, sizeof(*names));
    moira_named_tensor_t activations = {0};
    size_t n_weights = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = moira_safetensors_name(golden, i);
        const moira_tensor_t *tensor = NULL;
        CHECK_OK(moira_safetensors_find(golden, name, &tensor));
        if (!strcmp(name, "hidden_states")) {
            activations = (moira_named_tensor_t){.name = name, .tensor = tensor};
            continue;
        }
        snprintf(names[n_weights], sizeof(names[n_weights]), "model.layers.1.%s", name);
        weights[n_weights] = (moira_named_tensor_t){.name = names[n_weights], .tensor = tensor};
        n_weights++;
    }
    CHECK_OK(moira_safetensors_write(weights_path, weights, n_weights));
    CHECK_OK(moira_safetensors_write(activations_path, &activations, 1));
    snprintf(command, sizeof(command),
             "'%s' op layer --model '%s/golden/layer_v3.json' --inputs '%s' --weights '%s' "
             "--layer 1 -o '%s'",
             MOIRA_BINARY, MOIRA_TEST_DATA_DIR, activations_path, weights_path, out_path);
    CHECK_MSG(system(command) == 0, "moira op with --weights and --layer failed");
    moira_safetensors_t *got = NULL, *want = NULL;
    CHECK_OK(moira_safetensors_open(out_path, &got));
    CHECK_OK(moira_safetensors_open(want_path, &want));
    if (got && want) compare_output("cpu:0 layer_v3 as layer 1", got, want, 1e-6);
    moira_safetensors_close(got);
    moira_safetensors_close(want);
    moira_safetensors_close(golden);
    free(weights);
    free(names);
}

int main(void) {
    snprintf(work_dir, sizeof(work_dir), "/tmp/moira-golden-XXXXXX");
    if (!mkdtemp(work_dir)) return MOIRA_TEST_SKIP;
    CHECK_OK(moira_runtime_init());
    for (int i = 0; i < moira_device_count(); i++) {
        const moira_device_info_t *device = moira_device_info(moira_device_at(i));
        for (size_t c = 0; c < sizeof(golden_cases) / sizeof(golden_cases[0]); c++) {
            check_case(golden_cases[c], device, false);
            if (!strncmp(golden_cases[c], "mla", 3) || !strncmp(golden_cases[c], "layer", 5))
                check_case(golden_cases[c], device, true);
        }
    }
    check_checkpoint_layout();
    char command[PATH_MAX + 16];
    snprintf(command, sizeof(command), "rm -rf '%s'", work_dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", work_dir);
    return moira_test_finish("test_golden_cli");
}

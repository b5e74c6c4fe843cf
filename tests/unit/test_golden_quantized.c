/* The golden moe and layer cases (tests/data/golden) re-run with their routed and shared experts
 * quantised here to MXFP4 and to INT8 as `moira quantize` would (write_quantized says why not the
 * attention), written as the DeepSeek-V4 layout (X.weight + X.scale, or
 * X.weight_scale), read back through the safetensors reader, and run through `moira op` on every
 * device this build finds. Each output is held to the fp64 reference (ops/reference.c) on the
 * dequantised weights, at the limit of what the device computes activations in (int8's where it
 * quantises them, DESIGN.md §4), and must differ from the unquantised golden answer (so the
 * quantised weights were really used). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ops/op.h"
#include "ops/reference.h"
#include "ops/weights.h"
#include "runtime/backend.h"
#include "runtime/safetensors.h"
#include "runtime/weight_format.h"
#include "tests/unit/testing.h"

static const char *cases[] = {"moe_v2lite", "moe_v2lite_bf16", "moe_v3", "layer_v3"};
static char work_dir[PATH_MAX];

/* "mlp.experts.E.X_proj.weight" -> its scale's name for `dtype` (caller frees). */
static char *scale_name(const char *name, moira_dtype_t dtype) {
    size_t len = strlen(name);
    char *out = malloc(len + 16);
    if (dtype == MOIRA_DTYPE_MXFP4)
        snprintf(out, len + 16, "%.*s.scale", (int)(len - 7), name);
    else
        snprintf(out, len + 16, "%s_scale", name);
    return out;
}

/* Whether `moira quantize` quantises the bare-named tensor: a routed expert, a shared expert,
 * a dense MLP or (with `attention`) an attention projection other than kv_b_proj (docs/cli.md);
 * the router, norms and kv_b_proj stay as they are. */
static bool quantized_name(const char *tensor, bool attention) {
    static const char *const projections[] = {
        "self_attn.q_proj.weight",   "self_attn.q_a_proj.weight",
        "self_attn.q_b_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
        "self_attn.o_proj.weight",   "mlp.gate_proj.weight",
        "mlp.up_proj.weight",        "mlp.down_proj.weight"};
    if (strstr(tensor, "mlp.experts.") || strstr(tensor, "mlp.shared_experts."))
        return strstr(tensor, "_proj.weight") != NULL;
    if (!attention && !strncmp(tensor, "self_attn.", 10)) return false;
    for (size_t i = 0; i < sizeof(projections) / sizeof(projections[0]); i++)
        if (!strcmp(tensor, projections[i])) return true;
    return false;
}

/* The case's inputs with every routed and shared expert quantised (a projection the format
 * cannot store kept, as `moira quantize` keeps it), written to `path`. The attention projections
 * stay f32 here: with them quantised too, layer_v3 routes tokens at near ties to other experts
 * than the reference (NMSE 7.5e-3 on cpu:0), which only test_conformance's tie rule tells apart
 * from an error; it checks layers with quantised attention. */
static bool write_quantized(const char *name, moira_dtype_t dtype, const char *path) {
    char in_path[PATH_MAX + 64];
    snprintf(in_path, sizeof(in_path), "%s/golden/%s.inputs.safetensors", MOIRA_TEST_DATA_DIR,
             name);
    moira_safetensors_t *in = NULL;
    CHECK_OK(moira_safetensors_open(in_path, &in));
    if (!in) return false;
    size_t n = moira_safetensors_count(in);
    moira_named_tensor_t *out = calloc(2 * n, sizeof(*out));
    moira_tensor_t *owned = calloc(2 * n, sizeof(*owned));
    char **names = calloc(n, sizeof(*names));
    size_t n_out = 0, n_owned = 0, n_names = 0;
    for (size_t i = 0; i < n; i++) {
        const char *tensor = moira_safetensors_name(in, i);
        const moira_tensor_t *t = NULL;
        CHECK_OK(moira_safetensors_find(in, tensor, &t));
        if (!t) continue;
        bool fits = t->rank == 2 && moira_weight_shape_fits(dtype, t->shape[0], t->shape[1]);
        if (!quantized_name(tensor, false) || !fits) {
            out[n_out++] = (moira_named_tensor_t){tensor, t};
            continue;
        }
        CHECK_OK(moira_tensor_convert(t, dtype, &owned[n_owned], &owned[n_owned + 1]));
        names[n_names] = scale_name(tensor, dtype);
        out[n_out++] = (moira_named_tensor_t){tensor, &owned[n_owned]};
        out[n_out++] = (moira_named_tensor_t){names[n_names++], &owned[n_owned + 1]};
        n_owned += 2;
    }
    CHECK_OK(moira_safetensors_write(path, out, n_out));
    for (size_t i = 0; i < n_owned; i++)
        moira_tensor_release(&owned[i]);
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(owned);
    free(names);
    free(out);
    moira_safetensors_close(in);
    return n_owned > 0;
}

/* The fp64 reference on the weights as the reader hands them out (quantised experts decoded). */
static bool reference(const char *name, const char *inputs, moira_tensor_t *ref) {
    char config_path[PATH_MAX + 64];
    snprintf(config_path, sizeof(config_path), "%s/golden/%s.json", MOIRA_TEST_DATA_DIR, name);
    moira_model_config_t config;
    CHECK_OK(moira_model_config_load(config_path, &config));
    moira_safetensors_t *file = NULL;
    CHECK_OK(moira_safetensors_open(inputs, &file));
    if (!file) return false;
    bool layer = !strncmp(name, "layer", 5);
    moira_layer_weights_t lw;
    memset(&lw, 0, sizeof(lw));
    const moira_tensor_t *x = NULL;
    CHECK_OK(moira_safetensors_find(file, "hidden_states", &x));
    CHECK_OK(moira_layer_weights_find(file, "", &config, layer ? 0 : config.first_k_dense_replace,
                                      layer ? MOIRA_WEIGHTS_ALL : MOIRA_WEIGHTS_MOE, &lw));
    bool ok = x && !moira_test_failures;
    if (ok) {
        CHECK(lw.moe.expert_gate_proj[0]->dtype != MOIRA_DTYPE_F32); /* read back quantised */
        CHECK_OK(moira_tensor_alloc_f32(x->shape[0], x->shape[1], ref));
        if (layer)
            CHECK_OK(moira_ref_layer(&config, 0, &lw, x, NULL, ref, false));
        else
            CHECK_OK(moira_ref_moe(&config, &lw.moe, x, ref));
    }
    moira_layer_weights_free(&lw);
    moira_safetensors_close(file);
    return ok;
}

static void check(const char *name, moira_dtype_t dtype, const moira_device_info_t *device) {
    char inputs[PATH_MAX + 64], out_path[PATH_MAX + 64], golden[PATH_MAX + 64],
        command[4 * PATH_MAX];
    const char *format = moira_weight_format(dtype)->name;
    snprintf(inputs, sizeof(inputs), "%s/%s-%s.inputs.safetensors", work_dir, name, format);
    snprintf(out_path, sizeof(out_path), "%s/%s-%s.out.safetensors", work_dir, name, format);
    snprintf(golden, sizeof(golden), "%s/golden/%s.expected.safetensors", MOIRA_TEST_DATA_DIR,
             name);
    if (!write_quantized(name, dtype, inputs)) return;
    moira_tensor_t ref = {0};
    if (!reference(name, inputs, &ref)) return;
    char op[16];
    snprintf(op, sizeof(op), "%.*s", (int)strcspn(name, "_"), name);
    snprintf(command, sizeof(command),
             "'%s' op %s --model '%s/golden/%s.json' --inputs '%s' --backend %s -o '%s'",
             MOIRA_BINARY, op, MOIRA_TEST_DATA_DIR, name, inputs, device->name, out_path);
    unlink(out_path);
    int rc = system(command);
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s: %s failed", device->name, command);
    moira_safetensors_t *got = NULL, *want = NULL;
    CHECK_OK(moira_safetensors_open(out_path, &got));
    CHECK_OK(moira_safetensors_open(golden, &want));
    const moira_tensor_t *g = NULL, *w = NULL;
    if (got) CHECK_OK(moira_safetensors_find(got, "output", &g));
    if (want) CHECK_OK(moira_safetensors_find(want, "output", &w));
    if (g && w && moira_tensor_same_shape(g, &ref)) {
        size_t n = (size_t)moira_tensor_numel(&ref);
        double limit = fmax(moira_precision_nmse_limit(device->compute_precision),
                            moira_precision_nmse_limit(device->quantized_precision));
        double nmse = moira_test_nmse_f32(g->data, ref.data, n);
        double moved = moira_test_nmse_f32(ref.data, w->data, n);
        CHECK_MSG(nmse <= limit, "%s %s %s: NMSE %.3g > %.3g", device->name, name, format, nmse,
                  limit);
        CHECK_MSG(moved > 1e-7, "%s %s: quantised reference equals the f32 answer (%.3g)", name,
                  format, moved);
        printf("%-10s %-16s %-6s NMSE %.3g against fp64 on the dequantised weights (limit %.3g); "
               "quantisation moved the answer by %.3g\n",
               device->name, name, format, nmse, limit, moved);
    }
    moira_safetensors_close(got);
    moira_safetensors_close(want);
    moira_tensor_release(&ref);
}

int main(void) {
    snprintf(work_dir, sizeof(work_dir), "/tmp/moira_goldq_XXXXXX");
    if (!mkdtemp(work_dir)) return 1;
    CHECK_OK(moira_runtime_init());
    const moira_dtype_t dtypes[2] = {MOIRA_DTYPE_MXFP4, MOIRA_DTYPE_INT8};
    for (int i = 0; i < moira_device_count(); i++) {
        const moira_device_info_t *info = moira_device_info(moira_device_at(i));
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
            for (int d = 0; d < 2; d++)
                if (moira_device_supports(moira_device_at(i), MOIRA_OP_MOE_FFN, dtypes[d]))
                    check(cases[c], dtypes[d], info);
    }
    char rm[PATH_MAX + 16];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", work_dir);
    if (system(rm) != 0) perror("rm");
    moira_runtime_shutdown();
    return moira_test_finish("test_golden_quantized");
}

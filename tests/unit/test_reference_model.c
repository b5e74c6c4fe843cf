/* The fp64 whole-model reference (tests/tools/reference_model.h) and its tool moira-test-reference.
 *
 * The known answer comes from PyTorch, not from ops/reference.h: a one-layer checkpoint is built
 * around the golden decoder layer layer_v3 (tests/data/golden/), with an embedding whose rows 0..11
 * are the golden hidden states, a final norm weight and an lm_head of +-unit rows, so the logits of
 * the prompt 0..11 are +-(golden output row 11, RMS-normalised, times the norm weight), and the
 * first greedy token follows by hand from the golden output. Random checkpoints then check what
 * the golden case cannot: fp8 and MTP layers. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ops/random_checkpoint.h"
#include "runtime/safetensors.h"
#include "tests/tools/reference_model.h"
#include "tests/unit/testing.h"

#define GOLDEN MOIRA_TEST_DATA_DIR "/golden/layer_v3"
#define VOCAB 128 /* +-e_i for the 64 hidden dimensions */
#define NMSE_LIMIT 1e-6

static char work[] = "/tmp/moira_test_refmodel_XXXXXX";

/* The golden case's expected logits for the prompt 0..T-1 and its greedy token, from the PyTorch
 * output by hand: y = out[T-1] / sqrt(mean(out[T-1]^2) + eps) * w; logits = [y, -y]. */
typedef struct golden_answer {
    double logits[VOCAB];
    int32_t id;
    double gap;
    int64_t tokens;
} golden_answer_t;

static float norm_weight(int64_t i) {
    return 0.5f + 0.25f * (float)(i % 4);
}

/* config.json: the golden layer's config as one layer of a model with VOCAB tokens. */
static bool write_golden_config(const char *dir) {
    json_error_t error;
    json_t *c = json_load_file(GOLDEN ".json", 0, &error);
    CHECK_MSG(c != NULL, "%s: %s", GOLDEN ".json", error.text);
    if (!c) return false;
    json_object_set_new(c, "num_hidden_layers", json_integer(1));
    json_object_set_new(c, "vocab_size", json_integer(VOCAB));
    json_object_set_new(c, "eos_token_id", json_integer(VOCAB - 1));
    char path[1024];
    snprintf(path, sizeof(path), "%.900s/config.json", dir);
    bool ok = json_dump_file(c, path, JSON_INDENT(1)) == 0;
    json_decref(c);
    CHECK(ok);
    return ok;
}

/* model.safetensors: the golden layer's weights as model.layers.0.*, the structured embedding,
 * norm and lm_head. Fills `answer` from the golden output. */
static bool write_golden_checkpoint(const char *dir, golden_answer_t *answer) {
    moira_safetensors_t *in = NULL, *out = NULL;
    CHECK_OK(moira_safetensors_open(GOLDEN ".inputs.safetensors", &in));
    CHECK_OK(moira_safetensors_open(GOLDEN ".expected.safetensors", &out));
    const moira_tensor_t *x = NULL, *y = NULL;
    if (in) CHECK_OK(moira_safetensors_find(in, "hidden_states", &x));
    if (out) CHECK_OK(moira_safetensors_find(out, "output", &y));
    bool ok = x && y && write_golden_config(dir);
    int64_t t = x ? x->shape[0] : 0, d = x ? x->shape[1] : 0;
    ok = ok && d * 2 == VOCAB && t <= VOCAB;
    moira_tensor_t embed = {0}, norm = {0}, head = {0};
    if (ok) {
        CHECK_OK(moira_tensor_alloc_f32(VOCAB, d, &embed));
        CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_F32, 1, &d, &norm));
        CHECK_OK(moira_tensor_alloc_f32(VOCAB, d, &head));
        ok = embed.data && norm.data && head.data;
    }
    size_t n_in = in ? moira_safetensors_count(in) : 0;
    moira_named_tensor_t *named = calloc(n_in + 3, sizeof(*named));
    char(*names)[128] = calloc(n_in + 1, sizeof(*names));
    ok = ok && named && names;
    if (ok) {
        memcpy(embed.data, x->data, (size_t)(t * d) * sizeof(float));
        float *w = norm.data, *h = head.data;
        for (int64_t i = 0; i < d; i++) {
            w[i] = norm_weight(i);
            h[i * d + i] = 1.0f;
            h[(d + i) * d + i] = -1.0f;
        }
        size_t count = 0;
        for (size_t i = 0; i < n_in; i++) {
            const char *name = moira_safetensors_name(in, i);
            if (!strcmp(name, "hidden_states")) continue;
            snprintf(names[count], sizeof(names[count]), "model.layers.0.%s", name);
            const moira_tensor_t *tensor = NULL;
            CHECK_OK(moira_safetensors_find(in, name, &tensor));
            named[count] = (moira_named_tensor_t){names[count], tensor};
            count++;
        }
        named[count++] = (moira_named_tensor_t){"model.embed_tokens.weight", &embed};
        named[count++] = (moira_named_tensor_t){"model.norm.weight", &norm};
        named[count++] = (moira_named_tensor_t){"lm_head.weight", &head};
        char path[1024];
        snprintf(path, sizeof(path), "%.900s/model.safetensors", dir);
        moira_status_t status = moira_safetensors_write(path, named, count);
        CHECK_MSG(!status, "%s", moira_status_message(status));
        ok = !status;
        moira_status_free(status);

        /* The answer, from the golden output alone. */
        const float *last = (const float *)y->data + (t - 1) * d;
        double ms = 0;
        for (int64_t i = 0; i < d; i++)
            ms += (double)last[i] * last[i];
        double inv_rms = 1.0 / sqrt(ms / (double)d + 1e-6);
        for (int64_t i = 0; i < d; i++) {
            answer->logits[i] = last[i] * inv_rms * norm_weight(i);
            answer->logits[d + i] = -answer->logits[i];
        }
        int32_t best = 0;
        for (int32_t v = 1; v < VOCAB; v++)
            if (answer->logits[v] > answer->logits[best]) best = v;
        double second = -INFINITY;
        for (int32_t v = 0; v < VOCAB; v++)
            if (v != best && answer->logits[v] > second) second = answer->logits[v];
        answer->id = best;
        answer->gap = answer->logits[best] - second;
        answer->tokens = t;
    }
    free(named);
    free(names);
    moira_tensor_release(&embed);
    moira_tensor_release(&norm);
    moira_tensor_release(&head);
    moira_safetensors_close(in);
    moira_safetensors_close(out);
    return ok;
}

/* The reference on the golden checkpoint: logits within 1e-6 NMSE of the PyTorch answer and the
 * same first token. */
static void test_golden(const char *dir, const golden_answer_t *answer) {
    moira_ref_model_t m;
    moira_status_t status = moira_ref_model_open(dir, &m);
    CHECK_MSG(!status, "%s", moira_status_message(status));
    moira_status_free(status);
    if (status) return;
    CHECK(m.vocab == VOCAB && m.eos_token_id == VOCAB - 1);
    int32_t ids[VOCAB];
    for (int32_t i = 0; i < answer->tokens; i++)
        ids[i] = i;
    double logits[VOCAB];
    float hidden[VOCAB / 2];
    CHECK_OK(moira_ref_model_logits(&m, ids, answer->tokens, logits, hidden));
    double num = 0, den = 0;
    for (int v = 0; v < VOCAB; v++) {
        num += (logits[v] - answer->logits[v]) * (logits[v] - answer->logits[v]);
        den += answer->logits[v] * answer->logits[v];
    }
    CHECK_MSG(num / den <= NMSE_LIMIT, "golden logits NMSE %g", num / den);
    moira_ref_step_t step = moira_ref_greedy(logits, VOCAB);
    CHECK_MSG(step.id == answer->id, "first token %d, the golden answer %d", step.id, answer->id);
    CHECK_NEAR(step.gap, answer->gap, 1e-4 * fabs(answer->gap) + 1e-6);
    CHECK_NEAR(step.sum_sq, den, 1e-5 * den);
    /* lm_head rows +-e_i: rows of other axes differ from the winner's by sqrt(2), its negation by
     * 2, and |x| = |y| = sqrt(sum_sq / 2), so the margin is gap / (sqrt(2) |y|), or |y_top| / |y|
     * if that is smaller. */
    double margin = 0, y_norm = sqrt(den / 2);
    CHECK_OK(moira_ref_model_margin(&m, logits, hidden, step.id, &margin));
    double want_margin =
        fmin(answer->gap / (sqrt(2.0) * y_norm), fabs(answer->logits[answer->id]) / y_norm);
    CHECK_NEAR(margin, want_margin, 1e-5 * want_margin);
    printf("golden layer_v3 as a model: first token %d (gap %.4g), logits NMSE %.3g\n", step.id,
           answer->gap, num / den);
    /* Bad ids are refused, not read out of the table. */
    int32_t bad = VOCAB;
    CHECK_CODE(moira_ref_model_logits(&m, &bad, 1, logits, NULL), MOIRA_CODE_INVALID_ARGUMENT);
    moira_ref_model_close(&m);
}

/* The tool on the golden checkpoint: --json and --logits-out say what the library said. */
static void test_tool(const char *dir, const golden_answer_t *answer) {
    char ids[512] = "", cmd[2048], out[4096], logits_path[512];
    for (int64_t i = 0; i < answer->tokens; i++)
        snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), "%s%lld", i ? "," : "",
                 (long long)i);
    snprintf(logits_path, sizeof(logits_path), "%s/logits.safetensors", work);
    snprintf(cmd, sizeof(cmd), "%s --model %s --ids %s --max-tokens 1 --json --logits-out %s",
             MOIRA_TEST_REFERENCE, dir, ids, logits_path);
    CHECK_MSG(moira_test_run_capture(cmd, out, sizeof(out)) == 0, "%s failed", cmd);
    json_t *j = json_loads(out, 0, NULL);
    CHECK_MSG(j != NULL, "not JSON: %s", out);
    json_t *got_ids = json_object_get(j, "ids");
    CHECK(json_array_size(got_ids) == 1 &&
          json_integer_value(json_array_get(got_ids, 0)) == answer->id);
    CHECK(json_array_size(json_object_get(j, "gaps")) == 1);
    CHECK(json_array_size(json_object_get(j, "flip_nmse")) == 1);
    const char *finish = json_string_value(json_object_get(j, "finish_reason"));
    CHECK(finish && !strcmp(finish, answer->id == VOCAB - 1 ? "stop" : "length"));
    json_decref(j);

    moira_safetensors_t *f = NULL;
    CHECK_OK(moira_safetensors_open(logits_path, &f));
    const moira_tensor_t *logits = NULL, *chosen = NULL;
    if (f) CHECK_OK(moira_safetensors_find(f, "logits", &logits));
    if (f) CHECK_OK(moira_safetensors_find(f, "ids", &chosen));
    if (logits && chosen) {
        CHECK(logits->rank == 2 && logits->shape[0] == 1 && logits->shape[1] == VOCAB);
        CHECK(chosen->dtype == MOIRA_DTYPE_I32 && ((int32_t *)chosen->data)[0] == answer->id);
        double num = 0, den = 0;
        for (int v = 0; v < VOCAB; v++) {
            double e = ((float *)logits->data)[v] - answer->logits[v];
            num += e * e;
            den += answer->logits[v] * answer->logits[v];
        }
        CHECK_MSG(num / den <= NMSE_LIMIT, "--logits-out NMSE %g", num / den);
    }
    moira_safetensors_close(f);

    /* Bad usage and bad input exit 2 with a message. */
    static const char *const bad[] = {"--ids 0,1,x", "--ids 128", "--ids ''", "--max-tokens 0",
                                      "--ids 1 --model /nonexistent"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(cmd, sizeof(cmd), "%s --model %s %s 2>/dev/null", MOIRA_TEST_REFERENCE, dir,
                 bad[i]);
        int rc = moira_test_run_capture(cmd, out, sizeof(out));
        CHECK_MSG(rc == 2, "%s: exit %d, expected 2", cmd, rc);
    }
}

/* A random checkpoint: the reference skips the MTP layer (the logits of a checkpoint with one are
 * those of the same seed without, bit for bit), loads fp8 (close to the f32 checkpoint of the same
 * seed), and the writer's scales give logits of about the intended spread with a clear top. */
static void test_random(void) {
    moira_random_checkpoint_spec_t s;
    moira_status_t status = moira_random_checkpoint_preset("v3-tiny", &s);
    CHECK(!status);
    moira_status_free(status);
    s.config.vocab_size = 2000;
    s.seed = 5;
    const char *names[3] = {"f32_mtp", "f32", "fp8_mtp"};
    char dirs[3][512];
    for (int i = 0; i < 3; i++) {
        snprintf(dirs[i], sizeof(dirs[i]), "%s/%s", work, names[i]);
        s.dtype = i == 2 ? MOIRA_DTYPE_F8_E4M3 : MOIRA_DTYPE_F32;
        s.mtp_layers = i == 1 ? 0 : 1;
        s.n_shards = i == 2 ? 2 : 1;
        CHECK_OK(moira_random_checkpoint_write(&s, dirs[i]));
    }
    int32_t prompt[6] = {0, 17, 400, 1999, 3, 17};
    double *logits[3];
    for (int i = 0; i < 3; i++) {
        logits[i] = calloc((size_t)s.config.vocab_size, sizeof(double));
        moira_ref_model_t m;
        status = moira_ref_model_open(dirs[i], &m);
        CHECK_MSG(!status, "%s: %s", names[i], moira_status_message(status));
        moira_status_free(status);
        if (status) continue;
        CHECK_OK(moira_ref_model_logits(&m, prompt, 6, logits[i], NULL));
        moira_ref_model_close(&m);
    }
    int64_t v = s.config.vocab_size;
    CHECK_MSG(!memcmp(logits[0], logits[1], (size_t)v * sizeof(double)),
              "an MTP layer changed the reference's logits");
    double num = 0, den = 0;
    for (int64_t i = 0; i < v; i++) {
        num += (logits[2][i] - logits[1][i]) * (logits[2][i] - logits[1][i]);
        den += logits[1][i] * logits[1][i];
    }
    moira_ref_step_t f32_step = moira_ref_greedy(logits[1], v);
    double rms = sqrt(den / (double)v);
    printf("random v3-tiny: logits RMS %.3g, top-1 %d gap %.3g; fp8 vs f32 NMSE %.3g\n", rms,
           f32_step.id, f32_step.gap, num / den);
    CHECK_MSG(num / den < 2e-2, "fp8 logits NMSE %g against f32", num / den);
    CHECK_MSG(rms > 4 && rms < 16, "logits RMS %g, meant to be about 8", rms);
    for (int i = 0; i < 3; i++)
        free(logits[i]);
}

int main(void) {
    if (access(GOLDEN ".json", R_OK) != 0) {
        printf("no golden data at %s\n", GOLDEN);
        return MOIRA_TEST_SKIP;
    }
    if (!mkdtemp(work)) return 1;
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/golden", work);
    golden_answer_t answer = {0};
    CHECK(mkdir(dir, 0777) == 0);
    if (write_golden_checkpoint(dir, &answer)) {
        test_golden(dir, &answer);
        test_tool(dir, &answer);
    }
    test_random();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", work);
    return moira_test_finish("test_reference_model");
}

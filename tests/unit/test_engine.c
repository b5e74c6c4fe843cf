/* The generation engine on cpu:0 against itself in ways that must agree exactly up to f32
 * rounding: the latent cache (a sequence decoded token by token gives the logits of the same
 * prefix prefilled in one step, at every position), batching (sequences of different lengths
 * stepped together give what each gives alone), and the steady state (decode steps allocate no
 * host or device memory). Greedy continuations against an independent fp64 reference of the
 * whole model are tests/cli/generate.sh's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/random_checkpoint.h"
#include "runtime/backend.h"
#include "runtime/engine/engine.h"
#include "tests/unit/alloc_counter.h"
#include "tests/unit/testing.h"

#define VOCAB 1000
#define CONTEXT 64
#define F32_LIMIT 1e-6

static char model_dir[256];

/* A V3-shaped checkpoint in miniature with a small vocabulary, written fresh for the test. */
static void write_model(void) {
    char base[] = "/tmp/moira-test-engine-XXXXXX";
    CHECK(mkdtemp(base) != NULL);
    snprintf(model_dir, sizeof(model_dir), "%s/model", base);
    moira_random_checkpoint_spec_t spec;
    CHECK_OK(moira_random_checkpoint_preset("v3-tiny", &spec));
    spec.config.vocab_size = VOCAB;
    spec.bos_token_id = 0;
    spec.eos_token_id = 1;
    spec.n_shards = 2;
    spec.seed = 7;
    CHECK_OK(moira_random_checkpoint_write(&spec, model_dir));
}

/* The model and the temporary folder around it. */
static void remove_model(void) {
    char command[600];
    char *slash = strrchr(model_dir, '/');
    *slash = '\0';
    snprintf(command, sizeof(command), "rm -rf '%s'", model_dir);
    CHECK(system(command) == 0);
}

static double nmse(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

static int32_t token(int i, int salt) {
    return (int32_t)((i * 7919 + salt * 104729 + 13) % (VOCAB - 2)) + 2;
}

/* Decoding token by token through the cache gives, at every position, the logits of prefilling
 * that whole prefix in one step. */
static void test_decode_equals_prefill(moira_engine_t *engine) {
    enum { N = 12 };
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = token(i, 1);
    float decoded[N][VOCAB];
    moira_engine_reset(engine, 0);
    for (int i = 0; i < N; i++) {
        moira_engine_input_t in = {.sequence = 0, .ids = &ids[i], .n = 1};
        const float *logits;
        CHECK_OK(moira_engine_step(engine, &in, 1, &logits));
        memcpy(decoded[i], logits, sizeof(decoded[i]));
    }
    CHECK(moira_engine_length(engine, 0) == N);
    for (int i = 0; i < N; i++) {
        moira_engine_reset(engine, 1);
        moira_engine_input_t in = {.sequence = 1, .ids = ids, .n = i + 1};
        const float *logits;
        CHECK_OK(moira_engine_step(engine, &in, 1, &logits));
        double e = nmse(decoded[i], logits, VOCAB);
        CHECK_MSG(e <= F32_LIMIT, "position %d: decode vs prefill NMSE %g", i, e);
    }
}

/* Three sequences of different lengths prefilled in one step and decoded together equal each
 * run alone. */
static void test_batch_equals_alone(moira_engine_t *engine) {
    enum { SEQS = 3, STEPS = 4 };
    const int lengths[SEQS] = {5, 9, 2};
    int32_t prompts[SEQS][16], next[SEQS][STEPS];
    for (int s = 0; s < SEQS; s++) {
        for (int i = 0; i < lengths[s]; i++)
            prompts[s][i] = token(i, 10 + s);
        for (int i = 0; i < STEPS; i++)
            next[s][i] = token(i, 20 + s);
    }
    static float together[STEPS + 1][SEQS][VOCAB];
    moira_engine_input_t in[SEQS];
    const float *logits;
    for (int s = 0; s < SEQS; s++) {
        moira_engine_reset(engine, s);
        in[s] = (moira_engine_input_t){.sequence = s, .ids = prompts[s], .n = lengths[s]};
    }
    CHECK_OK(moira_engine_step(engine, in, SEQS, &logits));
    memcpy(together[0], logits, sizeof(together[0]));
    for (int step = 0; step < STEPS; step++) {
        for (int s = 0; s < SEQS; s++)
            in[s] = (moira_engine_input_t){.sequence = s, .ids = &next[s][step], .n = 1};
        CHECK_OK(moira_engine_step(engine, in, SEQS, &logits));
        memcpy(together[step + 1], logits, sizeof(together[0]));
    }
    for (int s = 0; s < SEQS; s++) {
        moira_engine_reset(engine, s);
        moira_engine_input_t alone = {.sequence = s, .ids = prompts[s], .n = lengths[s]};
        CHECK_OK(moira_engine_step(engine, &alone, 1, &logits));
        double e = nmse(together[0][s], logits, VOCAB);
        CHECK_MSG(e <= F32_LIMIT, "sequence %d prefill: batched vs alone NMSE %g", s, e);
        for (int step = 0; step < STEPS; step++) {
            alone = (moira_engine_input_t){.sequence = s, .ids = &next[s][step], .n = 1};
            CHECK_OK(moira_engine_step(engine, &alone, 1, &logits));
            e = nmse(together[step + 1][s], logits, VOCAB);
            CHECK_MSG(e <= F32_LIMIT, "sequence %d step %d: batched vs alone NMSE %g", s, step, e);
        }
    }
}

/* Decode steps of two sequences, after two to warm up, allocate nothing: no host allocation
 * from any thread and no device buffer. */
static int test_decode_allocates_nothing(moira_engine_t *engine) {
    if (!alloc_counter_available()) return MOIRA_TEST_SKIP;
    int32_t prompt[3] = {token(0, 30), token(1, 30), token(2, 30)};
    moira_engine_input_t in[2] = {{.sequence = 0, .ids = prompt, .n = 3},
                                  {.sequence = 1, .ids = prompt, .n = 2}};
    const float *logits;
    moira_engine_reset(engine, 0);
    moira_engine_reset(engine, 1);
    CHECK_OK(moira_engine_step(engine, in, 2, &logits));
    int32_t ids[2] = {5, 6};
    in[0] = (moira_engine_input_t){.sequence = 0, .ids = &ids[0], .n = 1};
    in[1] = (moira_engine_input_t){.sequence = 1, .ids = &ids[1], .n = 1};
    for (int warm = 0; warm < 2; warm++)
        CHECK_OK(moira_engine_step(engine, in, 2, &logits));
    uint64_t device_before = moira_device_allocation_count();
    alloc_counter_start();
    moira_status_t status = MOIRA_OK_STATUS;
    for (int step = 0; step < 5 && !status; step++)
        status = moira_engine_step(engine, in, 2, &logits);
    alloc_counts_t counts = alloc_counter_stop();
    CHECK_OK(status);
    CHECK_MSG(counts.allocations == 0, "5 decode steps made %llu host allocations",
              (unsigned long long)counts.allocations);
    CHECK_MSG(moira_device_allocation_count() == device_before,
              "5 decode steps allocated %llu device buffers",
              (unsigned long long)(moira_device_allocation_count() - device_before));
    return 0;
}

int main(void) {
    write_model();
    CHECK_OK(moira_runtime_init());
    moira_device_t *device;
    CHECK_OK(moira_device_find("cpu:0", &device));
    moira_model_files_t model;
    CHECK_OK(moira_model_files_open(model_dir, false, &model));
    CHECK(model.vocab == VOCAB);
    moira_engine_options_t options = {.max_rows = 16, .max_sequences = 3, .context = CONTEXT};
    moira_engine_t *engine;
    CHECK_OK(moira_engine_create(&model, device, &options, &engine));
    test_decode_equals_prefill(engine);
    test_batch_equals_alone(engine);
    int alloc = test_decode_allocates_nothing(engine);
    moira_engine_destroy(engine);
    moira_model_files_close(&model);
    moira_runtime_shutdown();
    remove_model();
    if (alloc == MOIRA_TEST_SKIP) {
        printf("decode allocation count skipped: this build cannot count allocations\n");
        return MOIRA_TEST_SKIP;
    }
    return 0;
}

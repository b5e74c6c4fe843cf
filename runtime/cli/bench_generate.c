/* `moira bench generate`: whole-model generation on one device against PyTorch eager on the same
 * checkpoint, as llama-bench reports it: prefill tokens/s over a 512-token prompt, decode tokens/s
 * at batch 1 and at 8 sequences, and decode against its bandwidth bound (the weight bytes a
 * decode step reads over the machine's read bandwidth, measured in the same run).
 *
 * Without --model it writes a DeepSeek-V2-Lite-shaped checkpoint (3 layers: one dense, two MoE,
 * the real vocabulary of 102400) in bf16 and in f32 to a temporary folder and runs both. The peer
 * is bench/generate.sh (Debian's python3-torch); without it the peer columns stay empty. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/stream_read.h"
#include "ops/random_checkpoint.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/bench_rows.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/sampler.h"
#include "runtime/remove_tree.h"

#define LAYERS 3
#define DECODE_PROMPT 16
#define DECODE_STEPS 32
#define MAX_BATCH 8

typedef struct generate_row {
    const char *dtype, *phase;
    int batch;
    long long prompt_tokens;
    double moira, peer, bound; /* tokens/s; NAN when not measured */
} generate_row_t;

typedef struct generate_rows {
    generate_row_t rows[16];
    int count;
} generate_rows_t;

static int32_t prompt_token(int64_t i, int salt, int64_t vocab) {
    return (int32_t)((i * 7919 + salt * 104729 + 17) % vocab);
}

/* Best of `iters` prefills of `prompt` tokens in one step. */
static moira_status_t time_prefill(moira_engine_t *engine, int64_t prompt, int iters,
                                   double *out_tokens_per_s) {
    int64_t vocab = moira_engine_vocab(engine);
    int32_t *ids = malloc((size_t)prompt * sizeof(int32_t));
    if (!ids) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int64_t i = 0; i < prompt; i++)
        ids[i] = prompt_token(i, 1, vocab);
    double best = INFINITY;
    moira_status_t status = MOIRA_OK_STATUS;
    for (int it = 0; it < iters + 1 && !status; it++) { /* the first round warms up */
        moira_engine_reset(engine, 0);
        moira_engine_input_t in = {.sequence = 0, .ids = ids, .n = prompt};
        const float *logits;
        double start = moira_bench_seconds();
        status = moira_engine_step(engine, &in, 1, &logits);
        double took = moira_bench_seconds() - start;
        if (it > 0 && took < best) best = took;
    }
    free(ids);
    *out_tokens_per_s = (double)prompt / best;
    return status;
}

/* `batch` sequences after a short prompt each, DECODE_STEPS greedy steps together. */
static moira_status_t time_decode(moira_engine_t *engine, int batch, double *out_tokens_per_s) {
    int64_t vocab = moira_engine_vocab(engine);
    int32_t prompts[MAX_BATCH][DECODE_PROMPT], next[MAX_BATCH];
    moira_engine_input_t in[MAX_BATCH];
    for (int s = 0; s < batch; s++) {
        moira_engine_reset(engine, s);
        for (int i = 0; i < DECODE_PROMPT; i++)
            prompts[s][i] = prompt_token(i, 2 + s, vocab);
        in[s] = (moira_engine_input_t){.sequence = s, .ids = prompts[s], .n = DECODE_PROMPT};
    }
    const float *logits;
    MOIRA_RETURN_IF_ERROR(moira_engine_step(engine, in, batch, &logits));
    double start = 0;
    for (int step = -1; step < DECODE_STEPS; step++) { /* step -1 warms up */
        if (step == 0) start = moira_bench_seconds();
        for (int s = 0; s < batch; s++) {
            next[s] = moira_logits_argmax(logits + s * vocab, (int32_t)vocab);
            in[s] = (moira_engine_input_t){.sequence = s, .ids = &next[s], .n = 1};
        }
        MOIRA_RETURN_IF_ERROR(moira_engine_step(engine, in, batch, &logits));
    }
    *out_tokens_per_s = (double)(batch * DECODE_STEPS) / (moira_bench_seconds() - start);
    return MOIRA_OK_STATUS;
}

static double nbytes(const moira_tensor_t *t) {
    return t ? (double)moira_tensor_nbytes(t) : 0;
}

/* Weight bytes one decode step of `batch` tokens reads: everything on the device but the routed
 * experts, plus the experts the tokens pick (uniform routing: E (1 - (1 - k/E)^batch) distinct
 * experts per MoE layer). */
static double decode_step_bytes(const moira_model_files_t *m, int batch) {
    double total = moira_model_files_device_bytes(m);
    const moira_model_config_t *c = &m->config;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const moira_layer_weights_t *w = &m->layers[l];
        if (!w->is_moe || w->moe.n_experts < 1) continue;
        double expert = nbytes(w->moe.expert_gate_proj[0]) + nbytes(w->moe.expert_up_proj[0]) +
                        nbytes(w->moe.expert_down_proj[0]);
        double e = (double)w->moe.n_experts, k = (double)c->num_experts_per_tok;
        total -= e * expert;
        total += e * (1 - pow(1 - k / e, batch)) * expert;
    }
    return total;
}

/* The peer's rows for the checkpoint: bench/generate.sh's JSON lines, matched by phase and batch
 * afterwards. Missing torch (or the script) leaves them NAN. */
static void run_peer(const char *dir, const char *dtype, long long prompt, generate_rows_t *rows,
                     int first) {
    char command[1024];
    snprintf(command, sizeof(command),
             "'%s/generate.sh' '%s' --dtype %s --prefill %lld --steps %d --prompt-tokens %d "
             "2>&2",
             MOIRA_BENCH_DIR, dir, dtype, prompt, DECODE_STEPS, DECODE_PROMPT);
    FILE *pipe = popen(command, "r");
    if (!pipe) return;
    char line[4096];
    while (fgets(line, sizeof(line), pipe)) {
        json_t *row = json_loads(line, 0, NULL);
        if (!row) continue;
        const char *phase = json_string_value(json_object_get(row, "phase"));
        json_int_t batch = json_integer_value(json_object_get(row, "batch"));
        double rate = json_number_value(json_object_get(row, "tokens_per_s"));
        for (int i = first; phase && i < rows->count; i++)
            if (!strcmp(rows->rows[i].phase, phase) && rows->rows[i].batch == batch)
                rows->rows[i].peer = rate;
        json_decref(row);
    }
    int code = pclose(pipe);
    if (code != 0)
        fprintf(stderr, "moira bench generate: the PyTorch peer (bench/generate.sh) failed or is "
                        "absent (make bench installs python3-torch); peer columns left empty\n");
}

/* Moira's rows for one checkpoint, then the peer's on the same files. The read bandwidth of a
 * decode row is measured right after it (best of a few passes): on a shared machine it drifts
 * from minute to minute, and a figure from another moment would misjudge the row. */
static moira_status_t bench_checkpoint(const char *dir, const char *dtype, moira_device_t *device,
                                       long long prompt, int iters, moira_stream_read_t *reader,
                                       double *read_gbs, generate_rows_t *rows) {
    moira_model_files_t model;
    MOIRA_RETURN_IF_ERROR(moira_model_files_open(dir, false, &model));
    long long rows_per_step =
        prompt > MAX_BATCH * DECODE_PROMPT ? prompt : MAX_BATCH * DECODE_PROMPT;
    moira_engine_options_t options = {
        .max_rows = rows_per_step, .max_sequences = MAX_BATCH, .context = prompt + 64};
    moira_engine_t *engine = NULL;
    moira_status_t status = moira_engine_create(&model, device, &options, &engine);
    int first = rows->count;
    double rate = NAN;
    if (!status) status = time_prefill(engine, prompt, iters, &rate);
    if (!status)
        rows->rows[rows->count++] = (generate_row_t){dtype, "prefill", 1, prompt, rate, NAN, NAN};
    for (int batch = 1; batch <= MAX_BATCH && !status; batch *= 8) {
        status = time_decode(engine, batch, &rate);
        double gbs = moira_stream_read_run(reader, 3);
        if (!(gbs >= *read_gbs)) *read_gbs = gbs; /* the table's header shows the lowest */
        double bound = batch * gbs * 1e9 / decode_step_bytes(&model, batch);
        if (!status)
            rows->rows[rows->count++] =
                (generate_row_t){dtype, "decode", batch, DECODE_PROMPT, rate, NAN, bound};
    }
    moira_engine_destroy(engine);
    moira_model_files_close(&model);
    /* The peer computes in f32 for f32 weights and in bf16 otherwise (fp8 dequantised). */
    if (!status) run_peer(dir, strcmp(dtype, "f32") ? "bf16" : "f32", prompt, rows, first);
    return status;
}

/* A V2-Lite-shaped checkpoint of `dtype` under `base`. */
static moira_status_t write_checkpoint(const char *base, moira_dtype_t dtype, const char *name,
                                       char *dir, size_t dir_size) {
    moira_random_checkpoint_spec_t spec;
    MOIRA_RETURN_IF_ERROR(moira_random_checkpoint_preset("v2-lite", &spec));
    spec.config.num_hidden_layers = LAYERS;
    spec.dtype = dtype;
    snprintf(dir, dir_size, "%s/%s", base, name);
    fprintf(stderr,
            "moira bench generate: writing a %d-layer DeepSeek-V2-Lite-shaped %s "
            "checkpoint to %s\n",
            LAYERS, name, dir);
    return moira_random_checkpoint_write(&spec, dir);
}

static void print_rows(const generate_rows_t *rows, bool json, double read_gbs) {
    if (json) {
        printf("{\"lowest_read_gbs\": %.2f, \"rows\": [", read_gbs);
        for (int i = 0; i < rows->count; i++) {
            const generate_row_t *r = &rows->rows[i];
            printf("%s\n  {\"bench\": \"generate\", \"dtype\": \"%s\", \"phase\": \"%s\", "
                   "\"batch\": %d, \"prompt_tokens\": %lld, \"moira_tokens_per_s\": %.3f, "
                   "\"peer_tokens_per_s\": ",
                   i ? "," : "", r->dtype, r->phase, r->batch, r->prompt_tokens, r->moira);
            isnan(r->peer) ? printf("null") : printf("%.3f", r->peer);
            if (!isnan(r->bound)) printf(", \"bound_tokens_per_s\": %.3f", r->bound);
            printf("}");
        }
        printf("\n]}\n");
        return;
    }
    printf("generate: tokens/s (peer: PyTorch eager; bound: weight bytes per step over the read "
           "bandwidth measured after the row, lowest %.1f GB/s)\n%-6s %-8s %5s %7s %10s %10s %7s "
           "%10s %7s\n",
           read_gbs, "dtype", "phase", "batch", "prompt", "moira", "peer", "ratio", "bound",
           "of it");
    for (int i = 0; i < rows->count; i++) {
        const generate_row_t *r = &rows->rows[i];
        printf("%-6s %-8s %5d %7lld %10.2f %10.2f %7.2f %10.2f %7.2f\n", r->dtype, r->phase,
               r->batch, r->prompt_tokens, r->moira, r->peer, r->moira / r->peer, r->bound,
               r->moira / r->bound);
    }
}

int moira_bench_generate(const moira_bench_args_t *args) {
    moira_device_t *device = NULL;
    moira_status_t status = moira_bench_open_device(args, &device);
    if (status) return moira_status_report(status);
    long long prompt = args->tokens > 0 ? args->tokens : 512;
    int iters = args->iters > 0 ? (int)args->iters : 2;
    moira_stream_read_t *reader = NULL;
    double read_gbs = NAN;
    status = moira_stream_read_open(moira_bench_device_threads(moira_device_info(device)), &reader);
    generate_rows_t rows = {.count = 0};
    char base[] = "/tmp/moira-bench-generate-XXXXXX";
    if (!status && args->model) {
        moira_model_config_t config;
        status = moira_model_config_load(args->model, &config);
        const char *dtype = config.weight_dtype == MOIRA_DTYPE_F32    ? "f32"
                            : config.weight_dtype == MOIRA_DTYPE_F16  ? "f16"
                            : config.weight_dtype == MOIRA_DTYPE_BF16 ? "bf16"
                                                                      : "fp8";
        if (!status)
            status = bench_checkpoint(args->model, dtype, device, prompt, iters, reader, &read_gbs,
                                      &rows);
    } else if (!status && !mkdtemp(base)) {
        status = moira_status_make(MOIRA_CODE_IO, "cannot make a folder under /tmp");
    } else if (!status) {
        static const struct {
            moira_dtype_t dtype;
            const char *name;
        } kinds[] = {{MOIRA_DTYPE_BF16, "bf16"}, {MOIRA_DTYPE_F32, "f32"}};
        for (size_t k = 0; k < 2 && !status; k++) {
            char dir[512];
            status = write_checkpoint(base, kinds[k].dtype, kinds[k].name, dir, sizeof(dir));
            if (!status)
                status = bench_checkpoint(dir, kinds[k].name, device, prompt, iters, reader,
                                          &read_gbs, &rows);
            moira_remove_tree(dir);
        }
        remove(base);
    }
    moira_stream_read_close(reader);
    if (!status) print_rows(&rows, args->json, read_gbs);
    moira_runtime_shutdown();
    return moira_status_report(status);
}

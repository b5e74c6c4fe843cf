/* `moira bench linear`: the dense projections of a DeepSeek decoder layer and the lm_head (one
 * LINEAR launch each, DESIGN.md §4) at DeepSeek-V2-Lite's shape or --model's, f32 and bf16
 * weights, for 1, 8, 64 and 512 tokens (or --tokens).
 *
 * Decode rows (up to 8 tokens) stream the weight once and are held against the machine's read
 * bandwidth, measured by a read-only reduction over a buffer far larger than the caches
 * (bench/stream_read.h) in the row's own rounds, one pass after each Moira run (a shared machine's
 * bandwidth drifts over minutes): ratio = Moira's weight bytes per second over the best pass. So
 * that a weight smaller than the last-level cache is not served from it, a decode round launches
 * one projection on each of enough copies of the weight to exceed 4x that cache, as a model's
 * layers follow each other, and the row reports the time per launch. Prefill rows (more tokens)
 * are held against one OpenBLAS cblas_sgemm of the same shape with f32 weights on as many
 * threads (bench/openblas_peer.h): ratio = OpenBLAS's time over Moira's.
 *
 * Weights are bf16-representable numbers, so f32 and bf16 runs compute the same function, and
 * every row's output is checked against OpenBLAS's (the bench exits 1 above the device's limit).
 * Each round times Moira and then its peer; the first round warms up, the best of the others is
 * kept. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/largest_cache.h"
#include "bench/openblas_peer.h"
#include "bench/stream_read.h"
#include "ops/device_layer.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/bench_rows.h"
#include "runtime/cli/cli.h"
#include "runtime/model_config.h"

static const long long default_tokens[] = {1, 8, 64, 512};

/* Up to this many tokens a row is a decode row, held against the read bandwidth. */
#define DECODE_TOKENS 8
/* The most copies of one weight a decode round cycles through. */
#define MAX_COPIES 256

/* One projection: W [rows, cols], y = x W^T. */
typedef struct projection {
    const char *name;
    int64_t rows, cols;
} projection_t;

/* What the bench holds across projections and dtypes. */
typedef struct linear_run {
    moira_device_t *device;
    moira_queue_t *queue;
    long long iterations;
    int threads;   /* the device's, for the peers */
    bool openblas; /* the OpenBLAS peer could be loaded */
    moira_stream_read_t *reader;
    double read_gbs;   /* best read pass of the whole run, for the title */
    double nmse_limit; /* DESIGN.md §4's limit for the device's compute precision */
    double worst_nmse; /* Moira against OpenBLAS over every row */
    moira_bench_rows_t rows;
} linear_run_t;

/* The projections of `config`'s layer (q_a/q_b or q_proj, kv_a, kv_b, o) and its lm_head when
 * the config names a vocabulary. */
static int projections_of(const moira_model_config_t *c, projection_t out[6]) {
    int n = 0;
    int64_t q_width = c->num_attention_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim);
    if (c->q_lora_rank > 0) {
        out[n++] = (projection_t){"q_a_proj", c->q_lora_rank, c->hidden_size};
        out[n++] = (projection_t){"q_b_proj", q_width, c->q_lora_rank};
    } else {
        out[n++] = (projection_t){"q_proj", q_width, c->hidden_size};
    }
    out[n++] = (projection_t){"kv_a_proj", c->kv_lora_rank + c->qk_rope_head_dim, c->hidden_size};
    out[n++] =
        (projection_t){"kv_b_proj", c->num_attention_heads * (c->qk_nope_head_dim + c->v_head_dim),
                       c->kv_lora_rank};
    out[n++] = (projection_t){"o_proj", c->hidden_size, c->num_attention_heads * c->v_head_dim};
    if (c->vocab_size > 0) out[n++] = (projection_t){"lm_head", c->vocab_size, c->hidden_size};
    return n;
}

/* Row r of a weight: a xorshift stream seeded by the row, scaled to about [-0.02, 0.02) and
 * rounded to bf16, so f32 and bf16 copies hold the same numbers. */
static void weight_row(int64_t r, int64_t cols, float *out) {
    uint32_t state = (uint32_t)(r * 2654435761u) | 1u;
    for (int64_t c = 0; c < cols; c++) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        float value = ((float)(state >> 8) - 8388608.0f) * (0.02f / 8388608.0f);
        out[c] = moira_bf16_to_f32(moira_f32_to_bf16(value));
    }
}

/* The weight's copies on the device, each prepared (packed) as a layer upload does. */
typedef struct copies {
    moira_buffer_t **buffers; /* owned */
    moira_dtensor_t *weights;
    int count;
} copies_t;

static void copies_free(copies_t *c) {
    for (int i = 0; i < c->count; i++)
        moira_buffer_free(c->buffers[i]);
    free(c->buffers);
    free(c->weights);
    memset(c, 0, sizeof(*c));
}

/* `count` copies of host matrix `w` in `dtype`, written 256 rows at a time through one staging
 * block, then prepared for LINEAR. */
static moira_status_t copies_upload(linear_run_t *run, const projection_t *p, const float *w,
                                    moira_dtype_t dtype, int count, copies_t *out) {
    memset(out, 0, sizeof(*out));
    size_t row_bytes = (size_t)p->cols * moira_dtype_size(dtype);
    out->buffers = calloc((size_t)count, sizeof(*out->buffers));
    out->weights = calloc((size_t)count, sizeof(*out->weights));
    void *staging = malloc(256 * row_bytes);
    moira_status_t status = out->buffers && out->weights && staging
                                ? MOIRA_OK_STATUS
                                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench linear");
    for (int i = 0; i < count && !status; i++) {
        status = moira_buffer_alloc(run->device, (size_t)p->rows * row_bytes, -1, &out->buffers[i]);
        if (status) break;
        out->count = i + 1;
        out->weights[i] = moira_dtensor_2d(out->buffers[i], 0, dtype, p->rows, p->cols);
        for (int64_t r0 = 0; r0 < p->rows && !status; r0 += 256) {
            int64_t n = p->rows - r0 < 256 ? p->rows - r0 : 256;
            moira_convert_from_f32(dtype, w + r0 * p->cols, staging, (size_t)(n * p->cols));
            status = moira_queue_write(run->queue, out->buffers[i], (size_t)r0 * row_bytes, staging,
                                       (size_t)n * row_bytes);
            if (!status) status = moira_queue_finish(run->queue);
        }
        if (!status)
            status =
                moira_device_prepare_weights(run->device, MOIRA_OP_LINEAR, &out->weights[i], 1);
    }
    free(staging);
    return status;
}

/* OpenBLAS's idle workers spin for a while after a call; a pause lets them park before Moira's
 * turn. */
static void let_openblas_park(void) {
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

/* NMSE of Moira's y against OpenBLAS's. */
static double nmse_of(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

/* One token count on the uploaded copies: rounds of Moira then its peer, the check against
 * OpenBLAS, the row. */
static moira_status_t bench_case(linear_run_t *run, const projection_t *p, const float *w,
                                 const copies_t *copies, moira_dtype_t dtype, int64_t tokens) {
    bool decode = tokens <= DECODE_TOKENS;
    int launches = decode ? copies->count : 1;
    size_t x_bytes = (size_t)(tokens * p->cols) * 4, y_bytes = (size_t)(tokens * p->rows) * 4;
    size_t y_offset = (x_bytes + 255) / 256 * 256;
    float *x = malloc(x_bytes), *y = malloc(y_bytes), *peer_y = malloc(y_bytes);
    moira_op_launch_t *list = calloc((size_t)launches, sizeof(*list));
    moira_buffer_t *io = NULL;
    moira_status_t status = x && y && peer_y && list
                                ? moira_buffer_alloc(run->device, y_offset + y_bytes, -1, &io)
                                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench linear");
    moira_linear_params_t params = {.beta = 0};
    if (!status) {
        uint64_t state = 0x2545F4914F6CDD1Dull;
        for (int64_t i = 0; i < tokens * p->cols; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            x[i] = (float)(state >> 40) / 8388608.0f - 1.0f;
        }
        status = moira_queue_write(run->queue, io, 0, x, x_bytes);
        if (!status) status = moira_queue_finish(run->queue);
    }
    for (int i = 0; i < launches && !status; i++)
        list[i] = (moira_op_launch_t){
            .op = MOIRA_OP_LINEAR,
            .params = &params,
            .params_size = sizeof(params),
            .n_operands = 3,
            .operands = {moira_dtensor_2d(io, 0, MOIRA_DTYPE_F32, tokens, p->cols),
                         copies->weights[i],
                         moira_dtensor_2d(io, y_offset, MOIRA_DTYPE_F32, tokens, p->rows)}};
    double best = INFINITY, peer_best = INFINITY, read_gbs = 0;
    for (long long round = 0; round <= run->iterations && !status; round++) {
        double seconds = 0;
        status = moira_bench_time_launches(run->queue, list, launches, &seconds);
        if (round > 0 && seconds / launches < best) best = seconds / launches;
        if (!status && decode) {
            double gbs = moira_stream_read_run(run->reader, 1);
            if (gbs > read_gbs) read_gbs = gbs;
            if (gbs > run->read_gbs) run->read_gbs = gbs;
        } else if (!status && run->openblas) {
            status = moira_openblas_linear(run->threads, tokens, p->rows, p->cols, x, w, peer_y,
                                           &seconds);
            if (round > 0 && seconds < peer_best) peer_best = seconds;
            let_openblas_park();
        }
    }
    if (!status) status = moira_queue_read(run->queue, io, y_offset, y, y_bytes);
    if (!status) status = moira_queue_finish(run->queue);
    if (!status && run->openblas && decode) /* the reference for the check, untimed */
        status =
            moira_openblas_linear(run->threads, tokens, p->rows, p->cols, x, w, peer_y, &peer_best);
    if (!status && run->openblas) {
        double nmse = nmse_of(y, peer_y, (size_t)(tokens * p->rows));
        if (!(nmse <= run->worst_nmse)) run->worst_nmse = nmse;
    }
    if (!status) {
        double bytes = (double)(p->rows * p->cols) * (double)moira_dtype_size(dtype);
        moira_bench_row_t row = {.bench = "linear", .size_key = "tokens", .size = tokens};
        snprintf(row.weight, sizeof(row.weight), "%s", p->name);
        snprintf(row.dtype, sizeof(row.dtype), "%s", dtype == MOIRA_DTYPE_F32 ? "f32" : "bf16");
        row.moira_us = best * 1e6;
        row.gflops = 2.0 * (double)tokens * (double)(p->rows * p->cols) / best * 1e-9;
        row.gbs = bytes / best * 1e-9;
        row.peer_us = NAN;
        if (decode) {
            snprintf(row.peer, sizeof(row.peer), "stream_read");
            row.peer_us = bytes / (read_gbs * 1e9) * 1e6;
        } else if (run->openblas) {
            snprintf(row.peer, sizeof(row.peer), "openblas");
            row.peer_us = peer_best * 1e6;
        }
        if (!moira_bench_rows_add(&run->rows, &row))
            status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench linear: rows");
    }
    moira_buffer_free(io);
    free(x), free(y), free(peer_y), free(list);
    return status;
}

/* Copies of a weight of `bytes` that together exceed 4x the largest cache, so a round of decode
 * launches over them reads each from memory; at most MAX_COPIES (a weight so small that it needs
 * more is not a bandwidth measurement anyway). */
static int copies_needed(double bytes) {
    double wanted = ceil(4 * moira_bench_largest_cache_bytes() / bytes);
    return wanted < 1 ? 1 : wanted > MAX_COPIES ? MAX_COPIES : (int)wanted;
}

/* One projection: its f32 host matrix (OpenBLAS's weights, and what the copies are made from),
 * then f32 and bf16 copies in turn, only one dtype resident at a time. */
static moira_status_t bench_projection(linear_run_t *run, const projection_t *p,
                                       const long long *tokens, int n_tokens) {
    const moira_dtype_t dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_BF16};
    float *w = malloc((size_t)(p->rows * p->cols) * sizeof(float));
    if (!w) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench linear: %s", p->name);
    for (int64_t r = 0; r < p->rows; r++)
        weight_row(r, p->cols, w + r * p->cols);
    moira_status_t status = MOIRA_OK_STATUS;
    for (int d = 0; d < 2 && !status; d++) {
        if (!moira_device_supports(run->device, MOIRA_OP_LINEAR, dtypes[d])) continue;
        double bytes = (double)(p->rows * p->cols) * (double)moira_dtype_size(dtypes[d]);
        bool any_decode = false;
        for (int t = 0; t < n_tokens; t++)
            any_decode |= tokens[t] <= DECODE_TOKENS;
        int count = any_decode ? copies_needed(bytes) : 1;
        copies_t copies;
        status = copies_upload(run, p, w, dtypes[d], count, &copies);
        for (int t = 0; t < n_tokens && !status; t++)
            status = bench_case(run, p, w, &copies, dtypes[d], tokens[t]);
        copies_free(&copies);
    }
    free(w);
    return status;
}

/* DeepSeek-V2-Lite's attention and vocabulary, the default shape. */
static void default_shape(moira_model_config_t *c) {
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "DeepSeek-V2-Lite");
    c->hidden_size = 2048;
    c->num_attention_heads = 16;
    c->kv_lora_rank = 512;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 128;
    c->vocab_size = 102400;
}

/* The title says what the peers were, so a saved table explains itself. */
static void print_rows(const linear_run_t *run, const moira_device_info_t *info,
                       const moira_model_config_t *config, bool json) {
    char title[1024], blas[192], read[64] = "not run (no decode rows)";
    moira_openblas_describe(blas, sizeof(blas));
    if (run->read_gbs > 0) snprintf(read, sizeof(read), "up to %.1f GB/s", run->read_gbs);
    snprintf(title, sizeof(title),
             "linear on %s (%s): %s projections (D %lld), best of %lld rounds; Moira computes "
             "in %s\ndecode peer (<= %d tokens): stream_read, %s (%d threads, %.0f MiB "
             "read-only reduction)\nprefill peer: one cblas_sgemm of %s, %d threads, f32 weights",
             info->name, info->model, config->name, (long long)config->hidden_size, run->iterations,
             moira_dtype_name(info->compute_precision), DECODE_TOKENS, read, run->threads,
             moira_stream_read_bytes(run->reader) / 1048576.0, blas, run->threads);
    moira_bench_rows_print(stdout, &run->rows, json, title);
    if (!json && run->openblas)
        printf("output NMSE against OpenBLAS (worst row): %.3g\n", run->worst_nmse);
}

/* Shape from --model or DeepSeek-V2-Lite; every projection for every token count; exit 1 when
 * Moira and OpenBLAS disagree, so a fast wrong kernel cannot pass as a win. */
int moira_bench_linear(const moira_bench_args_t *args) {
    moira_model_config_t config;
    default_shape(&config);
    if (args->model) {
        moira_status_t status = moira_model_config_load(args->model, &config);
        if (status) return moira_status_report(status);
        if (config.kv_lora_rank <= 0)
            return moira_cli_usage_error("bench", "%s has no MLA attention (kv_lora_rank)",
                                         args->model);
    }
    projection_t projections[6];
    int n_projections = projections_of(&config, projections);
    long long one = args->tokens;
    const long long *tokens = args->tokens > 0 ? &one : default_tokens;
    int n_tokens = args->tokens > 0 ? 1 : (int)(sizeof(default_tokens) / sizeof(*default_tokens));
    linear_run_t run = {.iterations = args->iters > 0 ? args->iters : 5};
    moira_status_t status = moira_bench_open_device(args, &run.device);
    if (status) return moira_status_report(status);
    const moira_device_info_t *info = moira_device_info(run.device);
    run.nmse_limit = moira_precision_nmse_limit(info->compute_precision);
    run.threads = moira_bench_device_threads(info) > 0 ? moira_bench_device_threads(info)
                                                       : info->compute_units;
    run.openblas = moira_openblas_available();
    if (!run.openblas) {
        char why[256];
        moira_openblas_describe(why, sizeof(why));
        fprintf(stderr, "moira bench linear: no OpenBLAS peer, prefill rows unchecked: %s\n", why);
    }
    status = moira_stream_read_open(run.threads, &run.reader);
    if (!status) status = moira_queue_create(run.device, &run.queue);
    for (int i = 0; i < n_projections && !status; i++)
        status = bench_projection(&run, &projections[i], tokens, n_tokens);
    if (!status) print_rows(&run, info, &config, args->json);
    if (run.queue) moira_queue_destroy(run.queue);
    moira_stream_read_close(run.reader);
    moira_bench_rows_free(&run.rows);
    moira_runtime_shutdown();
    if (status) return moira_status_report(status);
    if (run.worst_nmse > run.nmse_limit) {
        fprintf(stderr, "moira bench linear: Moira and OpenBLAS disagree (NMSE %.3g > %g)\n",
                run.worst_nmse, run.nmse_limit);
        return 1;
    }
    return 0;
}

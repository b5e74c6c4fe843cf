/* `moira bench mla`: absorbed MLA decode (DESIGN.md §4) against the machine's measured bandwidth
 * and arithmetic peak (DESIGN.md §7). T tokens of one sequence (1: decode; 8: a short chunk) at
 * the end of a latent cache of 1K, 4K and 16K positions (MLA_DECODE_ATTENTION: every head's
 * scores against c and k_pe, softmax, the weighted sum of c), DeepSeek-V2-Lite's attention shape
 * or --model's, with an f32 cache and, where the device keeps one, a bf16 cache.
 *
 * Two peers, measured in the same run on as many threads as the device's: a STREAM triad over
 * arrays far larger than the last-level cache (bench/stream_triad.h; the row's ratio is the cache
 * bytes Moira streamed per second over the triad's bandwidth), and the roofline of the launch:
 * roofline_us = max(FLOPs / FMA peak, bytes / read bandwidth), the FMA peak from a register-only
 * kernel (bench/fma_peak.h: f32 FMAs, or for a bf16 cache bf16 dot products where the CPU has
 * them) and the read bandwidth from a read-only pass (bench/stream_read.h);
 * roofline_ratio = roofline_us / moira_us. The roofline is of the host's cores, so only cpu
 * devices get one (null elsewhere). Rounds alternate one Moira run and one pass of each peer;
 * best of each.
 *
 * On an OpenCL device the absorbed decode projections (MLA_ABSORB_Q + MLA_ABSORB_OUT) are also
 * timed against a per-head CLBlast SGEMM loop ("mla_absorb" rows, 1 and 64 tokens). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/clblast_peer.h"
#include "bench/fma_peak.h"
#include "bench/stream_read.h"
#include "bench/stream_triad.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/bench_rows.h"
#include "runtime/cli/cli.h"
#include "runtime/model_config.h"

static const long long contexts[] = {1024, 4096, 16384};
static const long long chunk_tokens[] = {1, 8};
static const moira_dtype_t cache_dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_BF16};
static const long long absorb_tokens[] = {1, 64};

/* A rank-2 tensor at an offset of the bench's one buffer. */
static moira_dtensor_t view2(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype,
                             int64_t rows, int64_t cols) {
    moira_dtensor_t tensor = {.buffer = buffer, .offset = offset, .dtype = dtype, .rank = 2};
    tensor.shape[0] = rows;
    tensor.shape[1] = cols;
    return tensor;
}

/* Lays the bench's tensors out in one buffer, 256-byte aligned like the device's own
 * allocations. */
static size_t reserve(size_t *used, size_t bytes) {
    size_t offset = (*used + 255) / 256 * 256;
    *used = offset + bytes;
    return offset;
}

/* Uniform values in [-1, 1) from a fixed seed. */
static void fill(float *values, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        values[i] = (float)(seed >> 40) / 8388608.0f - 1.0f;
    }
}

/* Uniform values as `dtype` (F32 or BF16) at `dst`. */
static void fill_as(void *dst, moira_dtype_t dtype, size_t n, uint64_t seed, float *scratch) {
    fill(dtype == MOIRA_DTYPE_F32 ? dst : scratch, n, seed);
    if (dtype == MOIRA_DTYPE_F32) return;
    uint16_t *bits = dst;
    for (size_t i = 0; i < n; i++)
        bits[i] = moira_f32_to_bf16(scratch[i]);
}

/* The three peers, best pass of each so far. */
typedef struct mla_peers {
    moira_stream_triad_t *triad;
    moira_stream_read_t *read; /* NULL without a roofline */
    moira_fma_peak_t *fma;     /* NULL without a roofline */
    double triad_gbs, read_gbs, fma_gflops, bf16_gflops;
} mla_peers_t;

typedef struct mla_run {
    moira_device_t *device;
    moira_queue_t *queue;
    moira_mla_params_t params;
    long long iterations;
    mla_peers_t peers;
    moira_bench_rows_t rows;
    double *row_bytes; /* [rows.count]: bytes each attention row read, for the peers at the end */
    double *row_flops;
} mla_run_t;

/* One pass of each peer, alternating with Moira's runs so both see the same machine. */
static void run_peers(mla_peers_t *p) {
    double gbs = moira_stream_triad_run(p->triad, 1);
    if (gbs > p->triad_gbs) p->triad_gbs = gbs;
    if (!p->read) return;
    gbs = moira_stream_read_run(p->read, 1);
    if (gbs > p->read_gbs) p->read_gbs = gbs;
    double gflops = moira_fma_peak_run(p->fma, 1);
    if (gflops > p->fma_gflops) p->fma_gflops = gflops;
    gflops = moira_fma_peak_run_bf16(p->fma, 1);
    if (gflops > p->bf16_gflops) p->bf16_gflops = gflops;
}

/* FLOPs of one launch: every head of token t scores and sums pos[t] + 1 rows, each row a dot
 * product over L + R and a multiply-add over L (an FMA is two FLOPs). */
static double launch_flops(const moira_mla_params_t *p, int64_t context, int64_t tokens) {
    double rows = 0;
    for (int64_t t = 0; t < tokens; t++)
        rows += (double)(context - tokens + t + 1);
    return 2.0 * (double)p->n_heads * rows * (double)(2 * p->kv_lora_rank + p->rope_dim);
}

/* One row: a filled cache of `context` positions, `tokens` queries at its last positions, the
 * rounds. The peers' columns are filled in at the end (finish_rows). */
static moira_status_t bench_context(mla_run_t *run, moira_dtype_t cache_dtype, int64_t context,
                                    int64_t tokens) {
    moira_mla_params_t p = run->params;
    p.cache_len = (int32_t)context;
    int64_t H = p.n_heads, L = p.kv_lora_rank, R = p.rope_dim;
    int64_t q_width = H * (p.nope_dim + p.rope_dim);
    size_t element = moira_dtype_size(cache_dtype), used = 0;
    size_t q_lat_off = reserve(&used, (size_t)(tokens * H * L) * 4);
    size_t q_off = reserve(&used, (size_t)(tokens * q_width) * 4);
    size_t c_off = reserve(&used, (size_t)(context * L) * element);
    size_t pe_off = reserve(&used, (size_t)(context * R) * element);
    size_t pos_off = reserve(&used, (size_t)tokens * 4);
    size_t out_off = reserve(&used, (size_t)(tokens * H * L) * 4);
    unsigned char *host = malloc(used);
    float *scratch = malloc((size_t)(context * L) * sizeof(float));
    moira_buffer_t *buffer = NULL;
    moira_status_t status = host && scratch
                                ? moira_buffer_alloc(run->device, used, -1, &buffer)
                                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench mla");
    if (!status) {
        memset(host, 0, used);
        fill((float *)(host + q_lat_off), (size_t)(tokens * H * L), (uint64_t)context);
        fill((float *)(host + q_off), (size_t)(tokens * q_width), (uint64_t)context + 1);
        fill_as(host + c_off, cache_dtype, (size_t)(context * L), (uint64_t)context + 2, scratch);
        fill_as(host + pe_off, cache_dtype, (size_t)(context * R), (uint64_t)context + 3, scratch);
        int32_t *positions = (int32_t *)(host + pos_off);
        for (int64_t t = 0; t < tokens; t++)
            positions[t] = (int32_t)(context - tokens + t);
        status = moira_queue_write(run->queue, buffer, 0, host, used);
        if (!status) status = moira_queue_finish(run->queue);
    }
    moira_op_launch_t launch = {
        .op = MOIRA_OP_MLA_DECODE_ATTENTION,
        .params = &p,
        .params_size = sizeof(p),
        .n_operands = 6,
        .operands = {view2(buffer, q_lat_off, MOIRA_DTYPE_F32, tokens, H * L),
                     view2(buffer, q_off, MOIRA_DTYPE_F32, tokens, q_width),
                     view2(buffer, c_off, cache_dtype, context, L),
                     view2(buffer, pe_off, cache_dtype, context, R),
                     view2(buffer, pos_off, MOIRA_DTYPE_I32, tokens, 1),
                     view2(buffer, out_off, MOIRA_DTYPE_F32, tokens, H * L)}};
    launch.operands[4].rank = 1;
    double best = INFINITY;
    for (long long it = 0; it <= run->iterations && !status; it++) {
        double seconds = 0;
        status = moira_bench_time_launches(run->queue, &launch, 1, &seconds);
        if (it > 0 && seconds < best) best = seconds;
        run_peers(&run->peers);
    }
    moira_buffer_free(buffer);
    free(host);
    free(scratch);
    if (status) return status;
    double bytes = (double)(context * (L + R)) * (double)element +
                   (double)(tokens * (2 * H * L + q_width)) * 4.0;
    double flops = launch_flops(&p, context, tokens);
    moira_bench_row_t row = {.bench = "mla",
                             .size_key = "context",
                             .size = context,
                             .tokens = tokens,
                             .peer = "stream_triad"};
    snprintf(row.dtype, sizeof(row.dtype), "%s", cache_dtype == MOIRA_DTYPE_F32 ? "f32" : "bf16");
    row.moira_us = best * 1e6;
    row.gflops = flops / best * 1e-9;
    row.gbs = bytes / best * 1e-9;
    double *grown_bytes = realloc(run->row_bytes, (size_t)(run->rows.count + 1) * sizeof(double));
    if (grown_bytes) run->row_bytes = grown_bytes;
    double *grown_flops = realloc(run->row_flops, (size_t)(run->rows.count + 1) * sizeof(double));
    if (grown_flops) run->row_flops = grown_flops;
    if (!grown_bytes || !grown_flops || !moira_bench_rows_add(&run->rows, &row))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench mla: rows");
    run->row_bytes[run->rows.count - 1] = bytes;
    run->row_flops[run->rows.count - 1] = flops;
    return MOIRA_OK_STATUS;
}

/* The peers' columns of every attention row from the best pass of each peer over the whole run,
 * so all rows are held against the same figures. */
static void finish_rows(mla_run_t *run) {
    const mla_peers_t *p = &run->peers;
    for (int i = 0; i < run->rows.count; i++) {
        moira_bench_row_t *row = &run->rows.rows[i];
        if (strcmp(row->bench, "mla")) continue;
        row->peer_us = run->row_bytes[i] / (p->triad_gbs * 1e9) * 1e6;
        if (!p->read) {
            row->roofline_us = NAN;
            continue;
        }
        double peak = strcmp(row->dtype, "bf16") ? p->fma_gflops : p->bf16_gflops;
        double compute_us = run->row_flops[i] / (peak * 1e9) * 1e6;
        double memory_us = run->row_bytes[i] / (p->read_gbs * 1e9) * 1e6;
        row->roofline_us = compute_us > memory_us ? compute_us : memory_us;
    }
}

/* Best seconds of MLA_ABSORB_Q then MLA_ABSORB_OUT over `tokens` tokens (OpenCL rows). */
static moira_status_t time_absorb(mla_run_t *run, int64_t tokens, double *out_seconds) {
    const moira_mla_params_t *p = &run->params;
    int64_t H = p->n_heads, L = p->kv_lora_rank;
    int64_t q_width = H * (p->nope_dim + p->rope_dim), kv_rows = H * (p->nope_dim + p->v_dim);
    size_t used = 0;
    size_t q_off = reserve(&used, (size_t)(tokens * q_width) * 4);
    size_t w_off = reserve(&used, (size_t)(kv_rows * L) * 4);
    size_t lat_off = reserve(&used, (size_t)(tokens * H * L) * 4);
    size_t o_off = reserve(&used, (size_t)(tokens * H * L) * 4);
    size_t out_off = reserve(&used, (size_t)(tokens * H * p->v_dim) * 4);
    float *host = malloc(used);
    moira_buffer_t *buffer = NULL;
    moira_status_t status = host ? moira_buffer_alloc(run->device, used, -1, &buffer)
                                 : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench mla");
    if (!status) {
        fill(host, used / 4, 11);
        for (size_t i = 0; i < used / 4; i++)
            host[i] *= 1e-2f;
        status = moira_queue_write(run->queue, buffer, 0, host, used);
        if (!status) status = moira_queue_finish(run->queue);
    }
    moira_dtensor_t w = view2(buffer, w_off, MOIRA_DTYPE_F32, kv_rows, L);
    moira_op_launch_t launches[2] = {
        {.op = MOIRA_OP_MLA_ABSORB_Q,
         .params = p,
         .params_size = sizeof(*p),
         .n_operands = 3,
         .operands = {view2(buffer, q_off, MOIRA_DTYPE_F32, tokens, q_width), w,
                      view2(buffer, lat_off, MOIRA_DTYPE_F32, tokens, H * L)}},
        {.op = MOIRA_OP_MLA_ABSORB_OUT,
         .params = p,
         .params_size = sizeof(*p),
         .n_operands = 3,
         .operands = {view2(buffer, o_off, MOIRA_DTYPE_F32, tokens, H * L), w,
                      view2(buffer, out_off, MOIRA_DTYPE_F32, tokens, H * p->v_dim)}}};
    double best = INFINITY;
    for (int it = 0; it <= 1 && !status; it++) {
        double seconds = 0;
        status = moira_bench_time_launches(run->queue, launches, 2, &seconds);
        if (it > 0 && seconds < best) best = seconds;
    }
    moira_buffer_free(buffer);
    free(host);
    *out_seconds = best;
    return status;
}

/* The absorbed projections against CLBlast, rounds alternating (OpenCL devices only). */
static moira_status_t bench_absorb(mla_run_t *run, int device_index, int64_t tokens) {
    const moira_mla_params_t *p = &run->params;
    moira_clblast_peer_t *peer = NULL;
    MOIRA_RETURN_IF_ERROR(moira_clblast_peer_open(device_index, &peer));
    double best = INFINITY, peer_best = INFINITY;
    moira_status_t status = MOIRA_OK_STATUS;
    for (long long round = 0; round < run->iterations && !status; round++) {
        double seconds = INFINITY;
        status = time_absorb(run, tokens, &seconds);
        if (seconds < best) best = seconds;
        if (!status)
            status =
                moira_clblast_peer_mla_absorb(peer, tokens, p->n_heads, p->nope_dim, p->rope_dim,
                                              p->v_dim, p->kv_lora_rank, 1, &seconds);
        if (seconds < peer_best) peer_best = seconds;
    }
    moira_clblast_peer_close(peer);
    if (status) return status;
    moira_bench_row_t row = {.bench = "mla_absorb",
                             .dtype = "f32",
                             .size_key = "tokens",
                             .size = tokens,
                             .peer = "clblast"};
    double flops =
        2.0 * (double)(tokens * p->n_heads * p->kv_lora_rank) * (double)(p->nope_dim + p->v_dim);
    row.moira_us = best * 1e6;
    row.peer_us = peer_best * 1e6;
    row.gflops = flops / best * 1e-9;
    row.gbs = (double)(p->n_heads * (p->nope_dim + p->v_dim) * p->kv_lora_rank) * 4.0 / best * 1e-9;
    if (!moira_bench_rows_add(&run->rows, &row))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench mla: rows");
    return MOIRA_OK_STATUS;
}

/* The contexts, chunk sizes and cache dtypes on one device against the peers; the absorbed
 * projections against CLBlast on OpenCL devices, as main's bench had them. */
static moira_status_t bench_all(mla_run_t *run, const moira_bench_args_t *args) {
    const moira_device_info_t *info = moira_device_info(run->device);
    long long only[1] = {args->tokens};
    const long long *tokens = args->tokens > 0 ? only : chunk_tokens;
    size_t n_tokens = args->tokens > 0 ? 1 : sizeof(chunk_tokens) / sizeof(*chunk_tokens);
    moira_status_t status = MOIRA_OK_STATUS;
    for (size_t d = 0; d < sizeof(cache_dtypes) / sizeof(*cache_dtypes) && !status; d++) {
        if (!moira_device_supports(run->device, MOIRA_OP_MLA_DECODE_ATTENTION, cache_dtypes[d]))
            continue;
        for (size_t t = 0; t < n_tokens && !status; t++)
            for (size_t i = 0; i < sizeof(contexts) / sizeof(*contexts) && !status; i++)
                if (tokens[t] <= contexts[i])
                    status = bench_context(run, cache_dtypes[d], contexts[i], tokens[t]);
    }
    finish_rows(run);
    for (size_t i = 0; !strcmp(info->backend, "opencl") && !status &&
                       i < sizeof(absorb_tokens) / sizeof(*absorb_tokens);
         i++)
        status = bench_absorb(run, info->index, absorb_tokens[i]);
    return status;
}

/* The peers on as many threads as the device; the roofline's two only for devices that run on
 * the host's cores. */
static moira_status_t open_peers(const moira_device_info_t *info, int threads, mla_peers_t *p) {
    MOIRA_RETURN_IF_ERROR(moira_stream_triad_open(threads, &p->triad));
    if (info->kind != MOIRA_DEVICE_KIND_CPU) return MOIRA_OK_STATUS;
    MOIRA_RETURN_IF_ERROR(moira_stream_read_open(threads, &p->read));
    return moira_fma_peak_open(threads, &p->fma);
}

static void close_peers(mla_peers_t *p) {
    moira_stream_triad_close(p->triad);
    moira_stream_read_close(p->read);
    moira_fma_peak_close(p->fma);
}

int moira_bench_mla(const moira_bench_args_t *args) {
    mla_run_t run = {.params = {.n_heads = 16,
                                .nope_dim = 128,
                                .rope_dim = 64,
                                .v_dim = 128,
                                .kv_lora_rank = 512},
                     .iterations = args->iters > 0 ? args->iters : 20};
    const char *model_name = "DeepSeek-V2-Lite";
    moira_model_config_t config;
    if (args->model) {
        moira_status_t status = moira_model_config_load(args->model, &config);
        if (status) return moira_status_report(status);
        run.params.n_heads = (int32_t)config.num_attention_heads;
        run.params.nope_dim = (int32_t)config.qk_nope_head_dim;
        run.params.rope_dim = (int32_t)config.qk_rope_head_dim;
        run.params.v_dim = (int32_t)config.v_head_dim;
        run.params.kv_lora_rank = (int32_t)config.kv_lora_rank;
        model_name = config.name;
    }
    run.params.scale = 1.0f / sqrtf((float)(run.params.nope_dim + run.params.rope_dim));
    moira_status_t status = moira_bench_open_device(args, &run.device);
    if (status) return moira_status_report(status);
    const moira_device_info_t *info = moira_device_info(run.device);
    int threads = moira_bench_device_threads(info);
    status = open_peers(info, threads, &run.peers);
    if (!status) status = moira_queue_create(run.device, &run.queue);
    if (!status) status = bench_all(&run, args);
    if (!status) {
        char title[768], who[32] = "one thread per core", roofline[256] = "";
        if (threads) snprintf(who, sizeof(who), "%d threads", threads);
        if (run.peers.read)
            snprintf(roofline, sizeof(roofline),
                     "\nroofline: FMA peak %.1f GFLOP/s f32 (%s), %.1f GFLOP/s bf16 (%s); read "
                     "bandwidth %.1f GB/s (%.0f MiB)",
                     run.peers.fma_gflops, moira_fma_peak_isa(run.peers.fma), run.peers.bf16_gflops,
                     moira_fma_peak_isa_bf16(run.peers.fma), run.peers.read_gbs,
                     moira_stream_read_bytes(run.peers.read) / (1024.0 * 1024.0));
        snprintf(title, sizeof(title),
                 "mla absorbed decode on %s (%s): %s shape, %d heads, kv_lora_rank %d, rope %d; "
                 "best of %lld rounds\npeer: STREAM triad, %.1f GB/s (%s, 3 arrays of %.0f MiB)%s",
                 info->name, info->model, model_name, run.params.n_heads, run.params.kv_lora_rank,
                 run.params.rope_dim, run.iterations, run.peers.triad_gbs, who,
                 moira_stream_triad_array_bytes(run.peers.triad) / (1024.0 * 1024.0), roofline);
        moira_bench_rows_print(stdout, &run.rows, args->json, title);
    }
    if (run.queue) moira_queue_destroy(run.queue);
    close_peers(&run.peers);
    moira_bench_rows_free(&run.rows);
    free(run.row_bytes);
    free(run.row_flops);
    moira_runtime_shutdown();
    return status ? moira_status_report(status) : 0;
}

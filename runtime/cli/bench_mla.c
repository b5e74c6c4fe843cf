/* `moira bench mla`: absorbed MLA decode (DESIGN.md §4) against the machine's measured memory
 * bandwidth (DESIGN.md §7). One decode token attends over a latent cache of 1K, 4K and 16K
 * positions (MLA_DECODE_ATTENTION: every head's scores against c and k_pe, softmax, the weighted
 * sum of c), DeepSeek-V2-Lite's attention shape or --model's. The peer is a STREAM triad over
 * arrays far larger than the last-level cache on as many threads as the device's
 * (bench/stream_triad.h); a row's ratio is the cache bytes Moira streamed per second over the
 * triad's bandwidth. Rounds alternate one Moira run and one triad pass; best of each.
 *
 * On an OpenCL device the absorbed decode projections (MLA_ABSORB_Q + MLA_ABSORB_OUT) are also
 * timed against a per-head CLBlast SGEMM loop ("mla_absorb" rows, 1 and 64 tokens). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/clblast_peer.h"
#include "bench/stream_triad.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/bench_rows.h"
#include "runtime/cli/cli.h"
#include "runtime/model_config.h"

static const long long contexts[] = {1024, 4096, 16384};
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

typedef struct mla_run {
    moira_device_t *device;
    moira_queue_t *queue;
    moira_mla_params_t params;
    long long iterations;
    moira_stream_triad_t *triad;
    double triad_gbs; /* best so far */
    moira_bench_rows_t rows;
} mla_run_t;

/* One context: a filled cache, one query at the last position, the rounds, the row. */
static moira_status_t bench_context(mla_run_t *run, int64_t context) {
    moira_mla_params_t p = run->params;
    p.cache_len = (int32_t)context;
    int64_t H = p.n_heads, L = p.kv_lora_rank, R = p.rope_dim;
    int64_t q_width = H * (p.nope_dim + p.rope_dim);
    size_t used = 0;
    size_t q_lat_off = reserve(&used, (size_t)(H * L) * 4);
    size_t q_off = reserve(&used, (size_t)q_width * 4);
    size_t c_off = reserve(&used, (size_t)(context * L) * 4);
    size_t pe_off = reserve(&used, (size_t)(context * R) * 4);
    size_t pos_off = reserve(&used, 4);
    size_t out_off = reserve(&used, (size_t)(H * L) * 4);
    float *host = malloc(used);
    moira_buffer_t *buffer = NULL;
    moira_status_t status = host ? moira_buffer_alloc(run->device, used, -1, &buffer)
                                 : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench mla");
    if (!status) {
        fill(host, used / 4, (uint64_t)context);
        int32_t position = (int32_t)(context - 1);
        memcpy((char *)host + pos_off, &position, sizeof(position));
        status = moira_queue_write(run->queue, buffer, 0, host, used);
        if (!status) status = moira_queue_finish(run->queue);
    }
    moira_op_launch_t launch = {.op = MOIRA_OP_MLA_DECODE_ATTENTION,
                                .params = &p,
                                .params_size = sizeof(p),
                                .n_operands = 6,
                                .operands = {view2(buffer, q_lat_off, MOIRA_DTYPE_F32, 1, H * L),
                                             view2(buffer, q_off, MOIRA_DTYPE_F32, 1, q_width),
                                             view2(buffer, c_off, MOIRA_DTYPE_F32, context, L),
                                             view2(buffer, pe_off, MOIRA_DTYPE_F32, context, R),
                                             view2(buffer, pos_off, MOIRA_DTYPE_I32, 1, 1),
                                             view2(buffer, out_off, MOIRA_DTYPE_F32, 1, H * L)}};
    launch.operands[4].rank = 1;
    double best = INFINITY;
    for (long long it = 0; it <= run->iterations && !status; it++) {
        double seconds = 0;
        status = moira_bench_time_launches(run->queue, &launch, 1, &seconds);
        if (it > 0 && seconds < best) best = seconds;
        double gbs = moira_stream_triad_run(run->triad, 1);
        if (gbs > run->triad_gbs) run->triad_gbs = gbs;
    }
    moira_buffer_free(buffer);
    free(host);
    if (status) return status;
    double bytes = (double)(context * (L + R)) * 4.0;
    moira_bench_row_t row = {.bench = "mla",
                             .dtype = "f32",
                             .size_key = "context",
                             .size = context,
                             .peer = "stream_triad"};
    row.moira_us = best * 1e6;
    row.peer_us = bytes / (run->triad_gbs * 1e9) * 1e6;
    row.gflops = 2.0 * (double)(H * context * (2 * L + R)) / best * 1e-9;
    row.gbs = bytes / best * 1e-9;
    if (!moira_bench_rows_add(&run->rows, &row))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench mla: rows");
    return MOIRA_OK_STATUS;
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

/* The three contexts on one device and one triad; the absorbed projections against CLBlast on
 * OpenCL devices, as main's bench had them. */
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
    status = moira_stream_triad_open(threads, &run.triad);
    if (!status) status = moira_queue_create(run.device, &run.queue);
    for (size_t i = 0; i < sizeof(contexts) / sizeof(*contexts) && !status; i++)
        status = bench_context(&run, contexts[i]);
    for (size_t i = 0; !strcmp(info->backend, "opencl") && !status &&
                       i < sizeof(absorb_tokens) / sizeof(*absorb_tokens);
         i++)
        status = bench_absorb(&run, info->index, absorb_tokens[i]);
    if (!status) {
        char title[512], who[32] = "one thread per core";
        if (threads) snprintf(who, sizeof(who), "%d threads", threads);
        snprintf(title, sizeof(title),
                 "mla absorbed decode on %s (%s): %s shape, %d heads, kv_lora_rank %d, rope %d, "
                 "1 token; best of %lld rounds\npeer: STREAM triad, %.1f GB/s (%s, 3 arrays of "
                 "%.0f MiB)",
                 info->name, info->model, model_name, run.params.n_heads, run.params.kv_lora_rank,
                 run.params.rope_dim, run.iterations, run.triad_gbs, who,
                 moira_stream_triad_array_bytes(run.triad) / (1024.0 * 1024.0));
        moira_bench_rows_print(stdout, &run.rows, args->json, title);
    }
    if (run.queue) moira_queue_destroy(run.queue);
    moira_stream_triad_close(run.triad);
    moira_bench_rows_free(&run.rows);
    moira_runtime_shutdown();
    return status ? moira_status_report(status) : 0;
}

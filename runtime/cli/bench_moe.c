/* `moira bench moe`: Moira's routed-expert path (MOE_DISPATCH + MOE_FFN + MOE_COMBINE, one launch
 * each for all experts) against the device's peer (DESIGN.md §7), at DeepSeek-V2-Lite's shape
 * (or --model's) for 1, 16, 128 and 512 tokens (or --tokens) with f32, bf16, mxfp4 and int8
 * weights (the quantised formats where the device computes them; the peer then runs on their
 * dequantised values, and the output must agree within int8's limit, as they meet int8
 * activations).
 *
 * Peers: on a cpu device a per-expert OpenBLAS loop (bench/openblas_peer.h: gather, three sgemm,
 * silu * up, weighted scatter) on as many threads as Moira; on an OpenCL device a per-expert
 * CLBlast SGEMM loop (bench/clblast_peer.h: the GEMMs alone). Both use f32 weights whatever
 * Moira's dtype. The weights are bf16-representable numbers, so f32 and bf16 runs compute the
 * same function and the OpenBLAS peer's output checks Moira's (NMSE in the table's footer).
 *
 * Decode rows (up to 8 tokens) also get a second row against the machine's read bandwidth
 * (bench/stream_read.h, peer "stream_read"), as `moira bench linear`'s decode rows: one read pass
 * in each round after Moira's run, the best pass kept, and peer_us the time that bandwidth needs
 * for the touched experts' weight bytes, so ratio is Moira's weight bandwidth over the machine's.
 * The touched experts' weights (100 MB and more at DeepSeek-V2-Lite's shape) exceed the last-level
 * cache, and the read pass between runs evicts them anyway.
 *
 * Each round times one Moira run and one peer run back to back, so both see the same machine
 * load; the first round warms up, the best of the others is kept. OpenBLAS's idle workers spin
 * for a while after a call, so the round pauses before Moira's next run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/clblast_peer.h"
#include "bench/openblas_peer.h"
#include "bench/stream_read.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/bench_rows.h"
#include "runtime/cli/cli.h"
#include "runtime/model_config.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"

static const long long default_tokens[] = {1, 16, 128, 512};

/* Up to this many tokens a row is a decode row, also held against the read bandwidth. */
#define DECODE_TOKENS 8

typedef struct moe_shape {
    int64_t hidden, inter, experts, top_k;
} moe_shape_t;

/* Element i of weight matrix `seed`: a hash to [-0.03, 0.03), rounded to bf16. */
static float weight_value(uint64_t seed, uint64_t i) {
    uint64_t h = seed * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull + 1;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    float value = ((float)(h >> 40) / 16777216.0f - 0.5f) * 0.06f;
    return moira_bf16_to_f32(moira_f32_to_bf16(value));
}

/* Matrix `which` (0 W1, 1 W3, 2 W2) of expert e, n elements. */
static void fill_matrix(int which, int64_t e, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++)
        out[i] = weight_value((uint64_t)(which * 1000003 + e), (uint64_t)i);
}

/* Every token picks top_k distinct experts from a fixed-seed generator (uniform load); weights
 * 1/k. rows[e] counts expert e's assignments. */
static void make_routing(const moe_shape_t *s, int64_t tokens, int32_t *idx, float *weights,
                         int32_t *rows) {
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (int64_t e = 0; e < s->experts; e++)
        rows[e] = 0;
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t j = 0; j < s->top_k; j++) {
            int32_t expert;
            bool taken;
            do {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                expert = (int32_t)((state >> 33) % (uint64_t)s->experts);
                taken = false;
                for (int64_t m = 0; m < j; m++)
                    taken |= idx[t * s->top_k + m] == expert;
            } while (taken);
            idx[t * s->top_k + j] = expert;
            weights[t * s->top_k + j] = 1.0f / (float)s->top_k;
            rows[expert]++;
        }
}

/* A tensor of rank 1 to 3 at an offset of one of the bench's buffers. */
static moira_dtensor_t view(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype, int rank,
                            int64_t d0, int64_t d1, int64_t d2) {
    moira_dtensor_t tensor = {.buffer = buffer, .offset = offset, .dtype = dtype, .rank = rank};
    tensor.shape[0] = d0;
    tensor.shape[1] = d1;
    tensor.shape[2] = d2;
    return tensor;
}

/* Moira's expert weights in one buffer, W1 | W3 | W2, as a layer upload lays them out. */
typedef struct moira_weights {
    moira_buffer_t *buffer; /* owned */
    moira_dtensor_t w[3];
} moira_weights_t;

/* One expert matrix in `dtype` at its place in the buffer (and its scales at theirs). A
 * quantised matrix is also written back dequantised into `peer_w` (when given), so the peer
 * computes with the very weights Moira does. */
static moira_status_t write_matrix(moira_queue_t *queue, moira_buffer_t *buffer,
                                   moira_dtype_t dtype, float *host, int64_t rows, int64_t cols,
                                   size_t offset, size_t scale_offset, float *peer_w) {
    moira_tensor_t src = moira_tensor_view(MOIRA_DTYPE_F32, 2, (int64_t[]){rows, cols}, host);
    moira_tensor_t converted, scale;
    MOIRA_RETURN_IF_ERROR(moira_tensor_convert(&src, dtype, &converted, &scale));
    moira_status_t status =
        moira_queue_write(queue, buffer, offset, converted.data, moira_tensor_nbytes(&converted));
    size_t scale_bytes = moira_weight_scale_bytes(dtype, rows, cols);
    if (!status && scale_bytes)
        status = moira_queue_write(queue, buffer, scale_offset, scale.data, scale_bytes);
    if (!status) status = moira_queue_finish(queue);
    if (!status && peer_w && moira_dtype_is_quantized(dtype))
        for (int64_t r = 0; r < rows; r++)
            moira_tensor_row_to_f32(&converted, r, peer_w + r * cols);
    moira_tensor_release(&converted);
    moira_tensor_release(&scale);
    return status;
}

/* Writes every expert matrix in `dtype` (W1 | W3 | W2, then their scales), then lets the device
 * prepare them as a layer upload does (the cpu packs its GEMM panels here, outside the timed
 * runs). `peer_w` (the OpenBLAS peer's f32 weights, or NULL) get quantised runs' values. */
static moira_status_t upload_weights(moira_device_t *device, moira_queue_t *queue,
                                     const moe_shape_t *s, moira_dtype_t dtype, float *peer_w[3],
                                     moira_weights_t *out) {
    int64_t per = s->inter * s->hidden;
    size_t matrix_bytes[3], scale_bytes[3], data_end = 0, total = 0;
    for (int which = 0; which < 3; which++) {
        int64_t rows = which == 2 ? s->hidden : s->inter, cols = which == 2 ? s->inter : s->hidden;
        matrix_bytes[which] = (size_t)rows * moira_weight_row_bytes(dtype, cols);
        scale_bytes[which] = moira_weight_scale_bytes(dtype, rows, cols);
        data_end += (size_t)s->experts * matrix_bytes[which];
    }
    total = data_end;
    for (int which = 0; which < 3; which++)
        total += (size_t)s->experts * scale_bytes[which];
    memset(out, 0, sizeof(*out));
    float *host = malloc((size_t)per * sizeof(float));
    moira_status_t status = host
                                ? moira_buffer_alloc(device, total, -1, &out->buffer)
                                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench moe: weights");
    size_t base = 0, scale_base = data_end;
    for (int which = 0; which < 3 && !status; which++) {
        int64_t rows = which == 2 ? s->hidden : s->inter, cols = which == 2 ? s->inter : s->hidden;
        out->w[which] = view(out->buffer, base, dtype, 3, s->experts, rows, cols);
        out->w[which].scale_offset = scale_base;
        for (int64_t e = 0; e < s->experts && !status; e++) {
            fill_matrix(which, e, per, host);
            status = write_matrix(queue, out->buffer, dtype, host, rows, cols,
                                  base + (size_t)e * matrix_bytes[which],
                                  scale_base + (size_t)e * scale_bytes[which],
                                  peer_w && peer_w[which] ? peer_w[which] + e * per : NULL);
        }
        base += (size_t)s->experts * matrix_bytes[which];
        scale_base += (size_t)s->experts * scale_bytes[which];
    }
    if (!status) status = moira_device_prepare_weights(device, MOIRA_OP_MOE_FFN, out->w, 3);
    free(host);
    return status;
}

/* One token count's inputs and Moira's launches over them. */
typedef struct moe_case {
    int64_t tokens;
    int32_t *idx, *rows;           /* [T, k], [E] */
    float *topk_weight;            /* [T, k] */
    float *x;                      /* [T, D] */
    float *y_moira;                /* [T, D], read back after the runs */
    moira_buffer_t *io;            /* owned */
    moira_op_launch_t launches[3]; /* dispatch, ffn, combine */
    moira_moe_dispatch_params_t dispatch_params;
    moira_moe_ffn_params_t ffn_params;
    moira_moe_combine_params_t combine_params;
    size_t y_offset;
} moe_case_t;

/* Frees one token count's inputs before the next, so only one is resident. */
static void case_free(moe_case_t *c) {
    free(c->idx);
    free(c->rows);
    free(c->topk_weight);
    free(c->x);
    free(c->y_moira);
    moira_buffer_free(c->io);
    memset(c, 0, sizeof(*c));
}

/* Lays a case's tensors out in one buffer, 256-byte aligned. */
static size_t io_reserve(size_t *used, size_t bytes) {
    size_t offset = (*used + 255) / 256 * 256;
    *used = offset + bytes;
    return offset;
}

/* Routing, activations and one I/O buffer laid out for the three launches. */
static moira_status_t case_make(moira_device_t *device, moira_queue_t *queue, const moe_shape_t *s,
                                const moira_weights_t *weights, int64_t tokens, moe_case_t *c) {
    memset(c, 0, sizeof(*c));
    int64_t A = tokens * s->top_k, D = s->hidden, E = s->experts;
    c->tokens = tokens;
    c->idx = malloc((size_t)A * sizeof(int32_t));
    c->rows = malloc((size_t)E * sizeof(int32_t));
    c->topk_weight = malloc((size_t)A * sizeof(float));
    c->x = malloc((size_t)(tokens * D) * sizeof(float));
    c->y_moira = malloc((size_t)(tokens * D) * sizeof(float));
    if (!c->idx || !c->rows || !c->topk_weight || !c->x || !c->y_moira)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench moe: inputs");
    make_routing(s, tokens, c->idx, c->topk_weight, c->rows);
    for (int64_t i = 0; i < tokens * D; i++)
        c->x[i] = weight_value(7, (uint64_t)i) * 30.0f;
    size_t used = 0;
    size_t x_off = io_reserve(&used, (size_t)(tokens * D) * 4);
    size_t idx_off = io_reserve(&used, (size_t)A * 4), w_off = io_reserve(&used, (size_t)A * 4);
    size_t offsets_off = io_reserve(&used, (size_t)(E + 1) * 4);
    size_t sorted_off = io_reserve(&used, (size_t)A * 4),
           pos_off = io_reserve(&used, (size_t)A * 4);
    size_t ys_off = io_reserve(&used, (size_t)(A * D) * 4);
    c->y_offset = io_reserve(&used, (size_t)(tokens * D) * 4);
    MOIRA_RETURN_IF_ERROR(moira_buffer_alloc(device, used, -1, &c->io));
    MOIRA_RETURN_IF_ERROR(moira_queue_write(queue, c->io, x_off, c->x, (size_t)(tokens * D) * 4));
    MOIRA_RETURN_IF_ERROR(moira_queue_write(queue, c->io, idx_off, c->idx, (size_t)A * 4));
    MOIRA_RETURN_IF_ERROR(moira_queue_write(queue, c->io, w_off, c->topk_weight, (size_t)A * 4));
    MOIRA_RETURN_IF_ERROR(moira_queue_finish(queue));
    c->dispatch_params = (moira_moe_dispatch_params_t){.n_experts = (int32_t)E};
    c->ffn_params = (moira_moe_ffn_params_t){.top_k = (int32_t)s->top_k};
    c->combine_params = (moira_moe_combine_params_t){.beta = 0};
    moira_dtensor_t offsets = view(c->io, offsets_off, MOIRA_DTYPE_I32, 1, E + 1, 0, 0);
    moira_dtensor_t sorted = view(c->io, sorted_off, MOIRA_DTYPE_I32, 1, A, 0, 0);
    moira_dtensor_t ys = view(c->io, ys_off, MOIRA_DTYPE_F32, 2, A, D, 0);
    c->launches[0] = (moira_op_launch_t){
        .op = MOIRA_OP_MOE_DISPATCH,
        .params = &c->dispatch_params,
        .params_size = sizeof(c->dispatch_params),
        .n_operands = 4,
        .operands = {view(c->io, idx_off, MOIRA_DTYPE_I32, 2, tokens, s->top_k, 0), offsets, sorted,
                     view(c->io, pos_off, MOIRA_DTYPE_I32, 1, A, 0, 0)}};
    c->launches[1] = (moira_op_launch_t){
        .op = MOIRA_OP_MOE_FFN,
        .params = &c->ffn_params,
        .params_size = sizeof(c->ffn_params),
        .n_operands = 7,
        .operands = {view(c->io, x_off, MOIRA_DTYPE_F32, 2, tokens, D, 0), weights->w[0],
                     weights->w[1], weights->w[2], offsets, sorted, ys}};
    c->launches[2] = (moira_op_launch_t){
        .op = MOIRA_OP_MOE_COMBINE,
        .params = &c->combine_params,
        .params_size = sizeof(c->combine_params),
        .n_operands = 4,
        .operands = {ys, view(c->io, pos_off, MOIRA_DTYPE_I32, 2, tokens, s->top_k, 0),
                     view(c->io, w_off, MOIRA_DTYPE_F32, 2, tokens, s->top_k, 0),
                     view(c->io, c->y_offset, MOIRA_DTYPE_F32, 2, tokens, D, 0)}};
    return MOIRA_OK_STATUS;
}

/* The peer of the device's backend, with what it needs across token counts. */
typedef struct moe_peer {
    char name[16]; /* "" when the backend has none */
    int threads;
    float *w[3]; /* OpenBLAS: f32 weights, owned */
    float *y;    /* OpenBLAS: its output for the current case, owned */
    moira_openblas_moe_t *openblas;
    moira_clblast_peer_t *clblast;
    int opencl_index;
} moe_peer_t;

/* Picks the peer by backend (OpenBLAS for cpu, CLBlast for OpenCL) and builds the f32 weights
 * the OpenBLAS loop reads, once for all token counts. */
static moira_status_t peer_open(const moira_device_info_t *info, const moe_shape_t *s,
                                moe_peer_t *peer) {
    memset(peer, 0, sizeof(*peer));
    if (!strcmp(info->backend, "opencl")) {
        snprintf(peer->name, sizeof(peer->name), "clblast");
        peer->opencl_index = info->index;
        return MOIRA_OK_STATUS;
    }
    if (strcmp(info->backend, "cpu")) return MOIRA_OK_STATUS;
    if (!moira_openblas_available()) {
        char why[160];
        moira_openblas_describe(why, sizeof(why));
        fprintf(stderr, "moira bench moe: no OpenBLAS peer, Moira's times only: %s\n", why);
        return MOIRA_OK_STATUS;
    }
    snprintf(peer->name, sizeof(peer->name), "openblas");
    peer->threads = moira_bench_device_threads(info) > 0 ? moira_bench_device_threads(info)
                                                         : info->compute_units;
    int64_t per = s->inter * s->hidden;
    for (int which = 0; which < 3; which++) {
        peer->w[which] = malloc((size_t)(s->experts * per) * sizeof(float));
        if (!peer->w[which]) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench moe: peer");
        for (int64_t e = 0; e < s->experts; e++)
            fill_matrix(which, e, per, peer->w[which] + e * per);
    }
    return MOIRA_OK_STATUS;
}

/* Sets the peer up for one case (the CLBlast peer holds one problem at a time). */
static moira_status_t peer_prepare(moe_peer_t *peer, const moe_shape_t *s, const moe_case_t *c) {
    if (!strcmp(peer->name, "clblast")) {
        MOIRA_RETURN_IF_ERROR(moira_clblast_peer_open(peer->opencl_index, &peer->clblast));
        return moira_clblast_peer_moe_prepare(peer->clblast, c->rows, (int)s->experts, s->hidden,
                                              s->inter);
    }
    if (strcmp(peer->name, "openblas")) return MOIRA_OK_STATUS;
    peer->y = malloc((size_t)(c->tokens * s->hidden) * sizeof(float));
    if (!peer->y) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench moe: peer");
    moira_openblas_moe_problem_t problem = {
        .tokens = c->tokens,
        .hidden = s->hidden,
        .inter = s->inter,
        .experts = s->experts,
        .top_k = s->top_k,
        .x = c->x,
        .topk_idx = c->idx,
        .topk_weight = c->topk_weight,
        .w1 = peer->w[0],
        .w3 = peer->w[1],
        .w2 = peer->w[2],
        .y = peer->y,
    };
    return moira_openblas_moe_open(&problem, peer->threads, &peer->openblas);
}

/* One timed peer run; the pause after it is not timed. */
static moira_status_t peer_run(moe_peer_t *peer, double *out_seconds) {
    if (peer->clblast) return moira_clblast_peer_moe_run(peer->clblast, out_seconds);
    if (!peer->openblas) return MOIRA_OK_STATUS;
    moira_status_t status = moira_openblas_moe_run(peer->openblas, out_seconds);
    /* OpenBLAS's workers spin after a call; let them park before Moira's turn. */
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    return status;
}

/* Drops what one case set up, keeping the weights for the next. */
static void peer_unprepare(moe_peer_t *peer) {
    moira_clblast_peer_close(peer->clblast);
    moira_openblas_moe_close(peer->openblas);
    free(peer->y);
    peer->clblast = NULL;
    peer->openblas = NULL;
    peer->y = NULL;
}

/* Frees the peer's weights at the end of the bench. */
static void peer_close(moe_peer_t *peer) {
    peer_unprepare(peer);
    for (int which = 0; which < 3; which++)
        free(peer->w[which]);
}

/* NMSE of Moira's output against the peer's, for the table's footer. */
static double agreement(const moe_case_t *c, const moe_peer_t *peer, int64_t hidden) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < c->tokens * hidden; i++) {
        double d = (double)c->y_moira[i] - peer->y[i];
        num += d * d;
        den += (double)peer->y[i] * peer->y[i];
    }
    return den > 0 ? num / den : num;
}

typedef struct moe_run {
    moira_device_t *device;
    moira_queue_t *queue;
    moe_shape_t shape;
    moe_peer_t peer;
    long long iterations;
    moira_bench_rows_t rows;
    double worst_nmse;   /* Moira against the OpenBLAS peer, over all cases */
    double worst_excess; /* the largest NMSE over its case's limit */
    double nmse_limit;   /* DESIGN.md §4's limit for the precision the device computes in */
    int threads;         /* the device's, for the read peer */
    moira_stream_read_t *reader; /* owned; NULL without decode rows */
    double read_gbs;             /* best read pass of the whole run, for the title */
    int only;                    /* --dtype's weight format, or -1 for every one */
} moe_run_t;

/* The decode row's second form: the same Moira time against the time the read bandwidth measured
 * in its rounds (read_gbs) needs for the touched experts' `bytes`. */
static moira_status_t add_read_row(moe_run_t *run, const moira_bench_row_t *moira_row, double bytes,
                                   double read_gbs) {
    moira_bench_row_t row = *moira_row;
    snprintf(row.peer, sizeof(row.peer), "stream_read");
    row.peer_us = bytes / (read_gbs * 1e9) * 1e6;
    if (!moira_bench_rows_add(&run->rows, &row))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench moe: rows");
    return MOIRA_OK_STATUS;
}

/* Times one token count with the uploaded weights and appends its row. */
static moira_status_t bench_case(moe_run_t *run, const moira_weights_t *weights,
                                 moira_dtype_t dtype, int64_t tokens) {
    const moe_shape_t *s = &run->shape;
    moe_case_t c;
    moira_status_t status = case_make(run->device, run->queue, s, weights, tokens, &c);
    if (!status) status = peer_prepare(&run->peer, s, &c);
    bool decode = run->reader && tokens <= DECODE_TOKENS;
    double best = INFINITY, peer_best = INFINITY, read_gbs = 0;
    for (long long it = 0; it <= run->iterations && !status; it++) {
        double seconds = 0;
        status = moira_bench_time_launches(run->queue, c.launches, 3, &seconds);
        if (it > 0 && seconds < best) best = seconds;
        if (!status && decode) {
            double gbs = moira_stream_read_run(run->reader, 1);
            if (gbs > read_gbs) read_gbs = gbs;
            if (gbs > run->read_gbs) run->read_gbs = gbs;
        }
        if (!status && run->peer.name[0]) {
            status = peer_run(&run->peer, &seconds);
            if (it > 0 && seconds < peer_best) peer_best = seconds;
        }
    }
    if (!status)
        status = moira_queue_read(run->queue, c.io, c.y_offset, c.y_moira,
                                  (size_t)(tokens * s->hidden) * sizeof(float));
    if (!status) status = moira_queue_finish(run->queue);
    if (!status && run->peer.openblas) {
        /* Quantised experts meet int8 activations (DESIGN.md §4): int8's limit. */
        double limit = moira_dtype_is_quantized(dtype)
                           ? fmax(run->nmse_limit, moira_precision_nmse_limit(MOIRA_DTYPE_INT8))
                           : run->nmse_limit;
        double nmse = agreement(&c, &run->peer, s->hidden);
        if (!(nmse <= run->worst_nmse)) run->worst_nmse = nmse;
        if (!(nmse / limit <= run->worst_excess)) run->worst_excess = nmse / limit;
    }
    if (!status) {
        int64_t touched = 0;
        for (int64_t e = 0; e < s->experts; e++)
            touched += c.rows[e] > 0;
        double flops = 2.0 * 3.0 * (double)(tokens * s->top_k) * (double)(s->hidden * s->inter);
        /* Weight bytes an expert's three matrices occupy, scales included (weight_format.h). */
        double bytes =
            (double)touched * (double)moira_model_config_expert_bytes(
                                  &(moira_model_config_t){.hidden_size = s->hidden,
                                                          .moe_intermediate_size = s->inter},
                                  dtype);
        moira_bench_row_t row = {.bench = "moe", .size_key = "tokens", .size = tokens};
        snprintf(row.dtype, sizeof(row.dtype), "%s", moira_weight_format(dtype)->name);
        snprintf(row.peer, sizeof(row.peer), "%s", run->peer.name);
        row.moira_us = best * 1e6;
        row.peer_us = run->peer.name[0] ? peer_best * 1e6 : NAN;
        row.gflops = flops / best * 1e-9;
        row.gbs = bytes / best * 1e-9;
        if (!moira_bench_rows_add(&run->rows, &row))
            status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench moe: rows");
        if (!status && decode) status = add_read_row(run, &row, bytes, read_gbs);
    }
    peer_unprepare(&run->peer);
    case_free(&c);
    return status;
}

/* f32, bf16, mxfp4 then int8 (where the device runs them): weights uploaded once per dtype,
 * freed before the next so that only one copy is resident. The quantised ones come last, as
 * they leave their dequantised values in the peer's weights. */
static moira_status_t bench_all(moe_run_t *run, const long long *tokens, int n_tokens) {
    const moira_dtype_t dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_BF16, MOIRA_DTYPE_MXFP4,
                                    MOIRA_DTYPE_INT8};
    moira_status_t status = MOIRA_OK_STATUS;
    for (int d = 0; d < 4 && !status; d++) {
        if (run->only >= 0 && dtypes[d] != (moira_dtype_t)run->only) continue;
        if (!moira_device_supports(run->device, MOIRA_OP_MOE_FFN, dtypes[d])) continue;
        if (!moira_weight_shape_fits(dtypes[d], run->shape.inter, run->shape.hidden) ||
            !moira_weight_shape_fits(dtypes[d], run->shape.hidden, run->shape.inter))
            continue; /* mxfp4 rows must be a multiple of 32 */
        moira_weights_t weights;
        status = upload_weights(run->device, run->queue, &run->shape, dtypes[d],
                                run->peer.w[0] ? run->peer.w : NULL, &weights);
        for (int t = 0; t < n_tokens && !status; t++)
            status = bench_case(run, &weights, dtypes[d], tokens[t]);
        moira_buffer_free(weights.buffer);
    }
    return status;
}

/* Shape from --model or DeepSeek-V2-Lite; every token count for f32 then bf16; exit 1 when Moira
 * and OpenBLAS disagree, so a fast wrong kernel cannot pass as a win. */
int moira_bench_moe(const moira_bench_args_t *args) {
    moe_run_t run = {.shape = {.hidden = 2048, .inter = 1408, .experts = 64, .top_k = 6},
                     .iterations = args->iters > 0 ? args->iters : 5};
    const char *model_name = "DeepSeek-V2-Lite";
    moira_model_config_t config;
    if (args->model) {
        moira_status_t status = moira_model_config_load(args->model, &config);
        if (status) return moira_status_report(status);
        run.shape = (moe_shape_t){config.hidden_size, config.moe_intermediate_size,
                                  config.n_routed_experts, config.num_experts_per_tok};
        model_name = config.name;
    }
    run.only = -1;
    if (args->dtype) {
        const moira_weight_format_t *f = moira_weight_format_named(args->dtype);
        bool benched = f && f->dtype != MOIRA_DTYPE_F16 && f->dtype != MOIRA_DTYPE_F8_E4M3;
        if (!benched)
            return moira_cli_usage_error("bench",
                                         "--dtype must be f32, bf16, mxfp4 or int8, not "
                                         "\"%s\"",
                                         args->dtype);
        run.only = (int)f->dtype;
    }
    long long one = args->tokens;
    const long long *tokens = args->tokens > 0 ? &one : default_tokens;
    int n_tokens = args->tokens > 0 ? 1 : (int)(sizeof(default_tokens) / sizeof(*default_tokens));
    moira_status_t status = moira_bench_open_device(args, &run.device);
    if (status) return moira_status_report(status);
    const moira_device_info_t *info = moira_device_info(run.device);
    run.nmse_limit = moira_precision_nmse_limit(info->compute_precision);
    run.threads = moira_bench_device_threads(info) > 0 ? moira_bench_device_threads(info)
                                                       : info->compute_units;
    status = peer_open(info, &run.shape, &run.peer);
    bool any_decode = false;
    for (int t = 0; t < n_tokens; t++)
        any_decode |= tokens[t] <= DECODE_TOKENS;
    if (!status && any_decode) status = moira_stream_read_open(run.threads, &run.reader);
    if (!status) status = moira_queue_create(run.device, &run.queue);
    if (!status) status = bench_all(&run, tokens, n_tokens);
    if (!status && run.only >= 0 && run.rows.count == 0)
        status = moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                   "bench moe: %s does not compute the expert FFN in %s (or the "
                                   "shape's rows do not fit it)",
                                   info->name, args->dtype);
    if (!status) {
        char title[1024], peer[320] = "none", read[160] = "not run (no decode rows)";
        if (run.read_gbs > 0)
            snprintf(read, sizeof(read),
                     "up to %.1f GB/s (%d threads, %.0f MiB read-only reduction)", run.read_gbs,
                     run.threads, moira_stream_read_bytes(run.reader) / 1048576.0);
        if (!strcmp(run.peer.name, "openblas")) {
            char version[192];
            moira_openblas_describe(version, sizeof(version));
            snprintf(peer, sizeof(peer), "per-expert loop of %s, %d threads, f32 weights", version,
                     run.peer.threads);
        } else if (!strcmp(run.peer.name, "clblast")) {
            snprintf(peer, sizeof(peer), "per-expert CLBlast SGEMM loop, f32 weights");
        } else if (!strcmp(info->backend, "cpu")) {
            moira_openblas_describe(peer, sizeof(peer)); /* why there is none */
        }
        snprintf(
            title, sizeof(title),
            "moe on %s (%s): %s shape, D %lld, I %lld, %lld experts, top-%lld; best of %lld "
            "rounds; Moira computes in %s\npeer: %s\ndecode peer (<= %d tokens): stream_read, %s",
            info->name, info->model, model_name, (long long)run.shape.hidden,
            (long long)run.shape.inter, (long long)run.shape.experts, (long long)run.shape.top_k,
            run.iterations, moira_dtype_name(info->compute_precision), peer, DECODE_TOKENS, read);
        moira_bench_rows_print(stdout, &run.rows, args->json, title);
        if (!args->json && run.peer.name[0] && !strcmp(run.peer.name, "openblas"))
            printf("output NMSE against the peer (worst case): %.3g\n", run.worst_nmse);
    }
    if (run.queue) moira_queue_destroy(run.queue);
    peer_close(&run.peer);
    moira_stream_read_close(run.reader);
    moira_bench_rows_free(&run.rows);
    moira_runtime_shutdown();
    if (status) return moira_status_report(status);
    if (run.worst_excess > 1) {
        fprintf(stderr, "moira bench moe: Moira and the peer disagree (NMSE %.3g over its limit)\n",
                run.worst_nmse);
        return 1;
    }
    return 0;
}

/* `moira bench moe` and `moira bench mla`: Moira's batched kernels against their peer on the same
 * device (DESIGN.md §7). moe: the grouped expert GEMM (dispatch + grouped SwiGLU FFN + combine, one
 * launch per stage) against a per-expert loop of CLBlast SGEMMs over the same rows and shapes. mla:
 * the absorbed decode projections (MLA_ABSORB_Q + MLA_ABSORB_OUT, one launch each for all heads)
 * against a per-head loop of CLBlast SGEMMs. The CLBlast peer exists for OpenCL devices. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/clblast_peer.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cli/bench.h"
#include "runtime/cli/cli.h"
#include "runtime/model_config.h"

typedef struct moe_shape {
    int64_t hidden, inter, experts, top_k, tokens;
} moe_shape_t;

/* Every token picks top_k distinct experts from a fixed-seed generator: uniform load. */
static void make_routing(const moe_shape_t *s, int32_t *idx, float *weights, int32_t *rows) {
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (int64_t e = 0; e < s->experts; e++)
        rows[e] = 0;
    for (int64_t t = 0; t < s->tokens; t++)
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

/* A contiguous device tensor of rank 1-3 over a whole buffer. */
static moira_dtensor_t view(moira_buffer_t *buffer, moira_dtype_t dtype, int rank, int64_t d0,
                            int64_t d1, int64_t d2) {
    moira_dtensor_t tensor = {.buffer = buffer, .dtype = dtype, .rank = rank};
    tensor.shape[0] = d0;
    tensor.shape[1] = d1;
    tensor.shape[2] = d2;
    return tensor;
}

enum { B_X, B_W1, B_W3, B_W2, B_IDX, B_TOPW, B_OFFSETS, B_SORTED, B_POS, B_YS, B_Y, B_COUNT };

/* Uploads inputs and weights (each expert's matrices written from one host matrix), then times
 * dispatch + FFN + combine, alternating with one run of the prepared peer (when there is one) so
 * that both see the same machine load; best seconds per iteration of each. */
static moira_status_t time_moira(moira_device_t *device, const moe_shape_t *s, const int32_t *idx,
                                 const float *topk_weight, int iterations,
                                 moira_clblast_peer_t *peer, double *out_seconds,
                                 double *out_peer_seconds) {
    int64_t D = s->hidden, I = s->inter, E = s->experts, A = s->tokens * s->top_k;
    size_t sizes[B_COUNT] = {
        [B_X] = (size_t)(s->tokens * D) * 4,
        [B_W1] = (size_t)(E * I * D) * 4,
        [B_W3] = (size_t)(E * I * D) * 4,
        [B_W2] = (size_t)(E * D * I) * 4,
        [B_IDX] = (size_t)A * 4,
        [B_TOPW] = (size_t)A * 4,
        [B_OFFSETS] = (size_t)(E + 1) * 4,
        [B_SORTED] = (size_t)A * 4,
        [B_POS] = (size_t)A * 4,
        [B_YS] = (size_t)(A * D) * 4,
        [B_Y] = (size_t)(s->tokens * D) * 4,
    };
    moira_buffer_t *b[B_COUNT] = {0};
    moira_queue_t *queue = NULL;
    float *host = malloc((size_t)(I * D > s->tokens * D ? I * D : s->tokens * D) * 4);
    moira_status_t status = host ? moira_queue_create(device, &queue)
                                 : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench");
    for (int i = 0; i < B_COUNT && !status; i++)
        status = moira_buffer_alloc(device, sizes[i], -1, &b[i]);
    if (!status) {
        for (int64_t i = 0; i < I * D; i++)
            host[i] = (float)((i * 7919) % 2001 - 1000) * 1e-5f;
        for (int64_t e = 0; e < E && !status; e++) {
            size_t bytes = (size_t)(I * D) * 4;
            status = moira_queue_write(queue, b[B_W1], (size_t)e * bytes, host, bytes);
            if (!status) status = moira_queue_write(queue, b[B_W3], (size_t)e * bytes, host, bytes);
            if (!status) status = moira_queue_write(queue, b[B_W2], (size_t)e * bytes, host, bytes);
        }
        if (!status) status = moira_queue_write(queue, b[B_X], 0, host, sizes[B_X]);
        if (!status) status = moira_queue_write(queue, b[B_IDX], 0, idx, sizes[B_IDX]);
        if (!status) status = moira_queue_write(queue, b[B_TOPW], 0, topk_weight, sizes[B_TOPW]);
        if (!status) status = moira_queue_finish(queue);
    }
    moira_moe_dispatch_params_t dispatch_params = {.n_experts = (int32_t)E};
    moira_moe_ffn_params_t ffn_params = {.top_k = (int32_t)s->top_k};
    moira_moe_combine_params_t combine_params = {.beta = 0};
    moira_op_launch_t dispatch = {
        .op = MOIRA_OP_MOE_DISPATCH,
        .params = &dispatch_params,
        .params_size = sizeof(dispatch_params),
        .n_operands = 4,
        .operands = {view(b[B_IDX], MOIRA_DTYPE_I32, 2, s->tokens, s->top_k, 0),
                     view(b[B_OFFSETS], MOIRA_DTYPE_I32, 1, E + 1, 0, 0),
                     view(b[B_SORTED], MOIRA_DTYPE_I32, 1, A, 0, 0),
                     view(b[B_POS], MOIRA_DTYPE_I32, 1, A, 0, 0)}};
    moira_op_launch_t ffn = {.op = MOIRA_OP_MOE_FFN,
                             .params = &ffn_params,
                             .params_size = sizeof(ffn_params),
                             .n_operands = 7,
                             .operands = {view(b[B_X], MOIRA_DTYPE_F32, 2, s->tokens, D, 0),
                                          view(b[B_W1], MOIRA_DTYPE_F32, 3, E, I, D),
                                          view(b[B_W3], MOIRA_DTYPE_F32, 3, E, I, D),
                                          view(b[B_W2], MOIRA_DTYPE_F32, 3, E, D, I),
                                          view(b[B_OFFSETS], MOIRA_DTYPE_I32, 1, E + 1, 0, 0),
                                          view(b[B_SORTED], MOIRA_DTYPE_I32, 1, A, 0, 0),
                                          view(b[B_YS], MOIRA_DTYPE_F32, 2, A, D, 0)}};
    moira_op_launch_t combine = {
        .op = MOIRA_OP_MOE_COMBINE,
        .params = &combine_params,
        .params_size = sizeof(combine_params),
        .n_operands = 4,
        .operands = {view(b[B_YS], MOIRA_DTYPE_F32, 2, A, D, 0),
                     view(b[B_POS], MOIRA_DTYPE_I32, 2, s->tokens, s->top_k, 0),
                     view(b[B_TOPW], MOIRA_DTYPE_F32, 2, s->tokens, s->top_k, 0),
                     view(b[B_Y], MOIRA_DTYPE_F32, 2, s->tokens, D, 0)}};
    double best = INFINITY, peer_best = INFINITY;
    for (int it = 0; it <= iterations && !status; it++) {
        double start = moira_bench_seconds();
        status = moira_queue_launch(queue, &dispatch);
        if (!status) status = moira_queue_launch(queue, &ffn);
        if (!status) status = moira_queue_launch(queue, &combine);
        moira_status_t finished = queue ? moira_queue_finish(queue) : MOIRA_OK_STATUS;
        if (!status)
            status = finished;
        else
            moira_status_free(finished);
        double elapsed = moira_bench_seconds() - start;
        if (it > 0 && elapsed < best) best = elapsed;
        if (peer && !status) {
            status = moira_clblast_peer_moe_run(peer, &elapsed);
            if (it > 0 && elapsed < peer_best) peer_best = elapsed;
        }
    }
    for (int i = 0; i < B_COUNT; i++)
        if (b[i]) moira_buffer_free(b[i]);
    if (queue) moira_queue_destroy(queue);
    free(host);
    *out_seconds = best;
    *out_peer_seconds = peer ? peer_best : NAN;
    return status;
}

/* The moe benchmark: shape from --model or DeepSeek-V2-Lite, peer on OpenCL devices. */
static int bench_moe(const char *device_name, const char *model_path, long long tokens,
                     long long iterations, bool json) {
    moe_shape_t shape = {
        .hidden = 2048, .inter = 1408, .experts = 64, .top_k = 6, .tokens = tokens};
    const char *model_name = "deepseek-v2-lite (built-in shape)";
    moira_model_config_t config;
    if (model_path) {
        moira_status_t status = moira_model_config_load(model_path, &config);
        if (status) return moira_status_report(status);
        shape.hidden = config.hidden_size;
        shape.inter = config.moe_intermediate_size;
        shape.experts = config.n_routed_experts;
        shape.top_k = config.num_experts_per_tok;
        model_name = config.name;
    }
    moira_device_t *device = NULL;
    moira_status_t status = moira_device_find(device_name, &device);
    if (status) return moira_status_report(status);
    int64_t assignments = shape.tokens * shape.top_k;
    int32_t *idx = malloc((size_t)assignments * 4), *rows = malloc((size_t)shape.experts * 4);
    float *weights = malloc((size_t)assignments * 4);
    if (!idx || !rows || !weights) {
        free(idx);
        free(rows);
        free(weights);
        return moira_status_report(moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench"));
    }
    make_routing(&shape, idx, weights, rows);
    double moira_seconds = 0, peer_seconds = NAN;
    const moira_device_info_t *info = moira_device_info(device);
    bool has_peer = !strcmp(info->backend, "opencl");
    moira_clblast_peer_t *peer = NULL;
    if (has_peer) {
        status = moira_clblast_peer_open(info->index, &peer);
        if (!status)
            status = moira_clblast_peer_moe_prepare(peer, rows, (int)shape.experts, shape.hidden,
                                                    shape.inter);
    }
    if (!status)
        status = time_moira(device, &shape, idx, weights, (int)iterations, peer, &moira_seconds,
                            &peer_seconds);
    moira_clblast_peer_close(peer);
    free(idx);
    free(rows);
    free(weights);
    if (status) return moira_status_report(status);
    double flops = 2.0 * (double)assignments * (double)shape.hidden * (double)shape.inter * 3.0;
    double ratio = peer_seconds / moira_seconds;
    if (json) {
        printf("{\"bench\": \"moe\", \"device\": \"%s\", \"model\": ", info->name);
        moira_cli_json_string(stdout, model_name);
        printf(", \"hidden\": %lld, \"inter\": %lld, \"experts\": %lld, \"top_k\": %lld, "
               "\"tokens\": %lld, \"moira_ms\": %.4f, \"moira_gflops\": %.3f",
               (long long)shape.hidden, (long long)shape.inter, (long long)shape.experts,
               (long long)shape.top_k, (long long)shape.tokens, moira_seconds * 1e3,
               flops / moira_seconds * 1e-9);
        if (has_peer)
            printf(", \"peer\": \"CLBlast per-expert SGEMM loop\", \"peer_ms\": %.4f, "
                   "\"peer_gflops\": %.3f, \"speedup\": %.3f",
                   peer_seconds * 1e3, flops / peer_seconds * 1e-9, ratio);
        printf("}\n");
    } else {
        printf("moe on %s (%s): D %lld, I %lld, %lld experts, top-%lld, %lld tokens, f32\n",
               info->name, info->model, (long long)shape.hidden, (long long)shape.inter,
               (long long)shape.experts, (long long)shape.top_k, (long long)shape.tokens);
        printf("  moira grouped FFN (dispatch+ffn+combine): %9.3f ms  %8.2f GFLOP/s\n",
               moira_seconds * 1e3, flops / moira_seconds * 1e-9);
        if (has_peer)
            printf("  CLBlast per-expert SGEMM loop:            %9.3f ms  %8.2f GFLOP/s\n"
                   "  speedup (peer time / moira time):         %9.2fx\n",
                   peer_seconds * 1e3, flops / peer_seconds * 1e-9, ratio);
        else
            printf("  (no peer for backend %s)\n", info->backend);
    }
    return 0;
}

/* Best seconds per iteration of MLA_ABSORB_Q then MLA_ABSORB_OUT over `tokens` tokens. */
static moira_status_t time_moira_absorb(moira_device_t *device, const moira_mla_params_t *p,
                                        int64_t tokens, int iterations, double *out_seconds) {
    int64_t H = p->n_heads, L = p->kv_lora_rank;
    int64_t q_width = H * (p->nope_dim + p->rope_dim), kv_rows = H * (p->nope_dim + p->v_dim);
    size_t sizes[5] = {(size_t)(tokens * q_width) * 4, (size_t)(kv_rows * L) * 4,
                       (size_t)(tokens * H * L) * 4, (size_t)(tokens * H * L) * 4,
                       (size_t)(tokens * H * p->v_dim) * 4};
    moira_buffer_t *b[5] = {0};
    moira_queue_t *queue = NULL;
    size_t largest = 0;
    for (int i = 0; i < 5; i++)
        largest = sizes[i] > largest ? sizes[i] : largest;
    float *host = malloc(largest);
    moira_status_t status = host ? moira_queue_create(device, &queue)
                                 : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "bench");
    for (int i = 0; i < 5 && !status; i++)
        status = moira_buffer_alloc(device, sizes[i], -1, &b[i]);
    if (!status) {
        for (size_t i = 0; i < largest / 4; i++)
            host[i] = (float)((i * 7919) % 2001 - 1000) * 1e-4f;
        for (int i = 0; i < 4 && !status; i++)
            status = moira_queue_write(queue, b[i], 0, host, sizes[i]);
        if (!status) status = moira_queue_finish(queue);
    }
    moira_op_launch_t absorb_q = {.op = MOIRA_OP_MLA_ABSORB_Q,
                                  .params = p,
                                  .params_size = sizeof(*p),
                                  .n_operands = 3,
                                  .operands = {view(b[0], MOIRA_DTYPE_F32, 2, tokens, q_width, 0),
                                               view(b[1], MOIRA_DTYPE_F32, 2, kv_rows, L, 0),
                                               view(b[2], MOIRA_DTYPE_F32, 2, tokens, H * L, 0)}};
    moira_op_launch_t absorb_out = {
        .op = MOIRA_OP_MLA_ABSORB_OUT,
        .params = p,
        .params_size = sizeof(*p),
        .n_operands = 3,
        .operands = {view(b[3], MOIRA_DTYPE_F32, 2, tokens, H * L, 0),
                     view(b[1], MOIRA_DTYPE_F32, 2, kv_rows, L, 0),
                     view(b[4], MOIRA_DTYPE_F32, 2, tokens, H * p->v_dim, 0)}};
    double best = INFINITY;
    for (int it = 0; it <= iterations && !status; it++) {
        double start = moira_bench_seconds();
        status = moira_queue_launch(queue, &absorb_q);
        if (!status) status = moira_queue_launch(queue, &absorb_out);
        moira_status_t finished = queue ? moira_queue_finish(queue) : MOIRA_OK_STATUS;
        if (!status)
            status = finished;
        else
            moira_status_free(finished);
        double elapsed = moira_bench_seconds() - start;
        if (it > 0 && elapsed < best) best = elapsed;
    }
    for (int i = 0; i < 5; i++)
        if (b[i]) moira_buffer_free(b[i]);
    if (queue) moira_queue_destroy(queue);
    free(host);
    *out_seconds = best;
    return status;
}

/* The mla benchmark: the absorbed decode projections, rounds alternating with the peer. */
static int bench_mla(const char *device_name, const char *model_path, long long tokens,
                     long long iterations, bool json) {
    moira_mla_params_t p = {.n_heads = 16,
                            .nope_dim = 128,
                            .rope_dim = 64,
                            .v_dim = 128,
                            .kv_lora_rank = 512,
                            .scale = 1.0f};
    const char *model_name = "deepseek-v2-lite (built-in shape)";
    moira_model_config_t config;
    if (model_path) {
        moira_status_t status = moira_model_config_load(model_path, &config);
        if (status) return moira_status_report(status);
        p.n_heads = (int32_t)config.num_attention_heads;
        p.nope_dim = (int32_t)config.qk_nope_head_dim;
        p.rope_dim = (int32_t)config.qk_rope_head_dim;
        p.v_dim = (int32_t)config.v_head_dim;
        p.kv_lora_rank = (int32_t)config.kv_lora_rank;
        model_name = config.name;
    }
    moira_device_t *device = NULL;
    moira_status_t status = moira_device_find(device_name, &device);
    if (status) return moira_status_report(status);
    const moira_device_info_t *info = moira_device_info(device);
    double moira_seconds = INFINITY, peer_seconds = NAN;
    bool has_peer = !strcmp(info->backend, "opencl");
    moira_clblast_peer_t *peer = NULL;
    if (has_peer) {
        status = moira_clblast_peer_open(info->index, &peer);
        peer_seconds = INFINITY;
    }
    /* Rounds alternate Moira and the peer (buffers are small enough to set up per round), so
     * both see the same machine load; the best round of each is kept. */
    for (long long round = 0; round < iterations && !status; round++) {
        double seconds = 0;
        status = time_moira_absorb(device, &p, tokens, 1, &seconds);
        if (seconds < moira_seconds) moira_seconds = seconds;
        if (!status && peer)
            status = moira_clblast_peer_mla_absorb(peer, tokens, p.n_heads, p.nope_dim, p.rope_dim,
                                                   p.v_dim, p.kv_lora_rank, 1, &seconds);
        if (peer && seconds < peer_seconds) peer_seconds = seconds;
    }
    moira_clblast_peer_close(peer);
    if (status) return moira_status_report(status);
    double flops = 2.0 * (double)tokens * p.n_heads * p.kv_lora_rank * (p.nope_dim + p.v_dim);
    double ratio = peer_seconds / moira_seconds;
    if (json) {
        printf("{\"bench\": \"mla\", \"device\": \"%s\", \"model\": ", info->name);
        moira_cli_json_string(stdout, model_name);
        printf(", \"heads\": %d, \"nope\": %d, \"v\": %d, \"kv_lora_rank\": %d, "
               "\"tokens\": %lld, \"moira_ms\": %.4f, \"moira_gflops\": %.3f",
               p.n_heads, p.nope_dim, p.v_dim, p.kv_lora_rank, tokens, moira_seconds * 1e3,
               flops / moira_seconds * 1e-9);
        if (has_peer)
            printf(", \"peer\": \"CLBlast per-head SGEMM loop\", \"peer_ms\": %.4f, "
                   "\"peer_gflops\": %.3f, \"speedup\": %.3f",
                   peer_seconds * 1e3, flops / peer_seconds * 1e-9, ratio);
        printf("}\n");
    } else {
        printf("mla absorbed projections on %s (%s): %d heads, nope %d, v %d, L %d, %lld tokens, "
               "f32\n",
               info->name, info->model, p.n_heads, p.nope_dim, p.v_dim, p.kv_lora_rank, tokens);
        printf("  moira absorb_q + absorb_out:     %9.3f ms  %8.2f GFLOP/s\n", moira_seconds * 1e3,
               flops / moira_seconds * 1e-9);
        if (has_peer)
            printf("  CLBlast per-head SGEMM loop:     %9.3f ms  %8.2f GFLOP/s\n"
                   "  speedup (peer time / moira time): %8.2fx\n",
                   peer_seconds * 1e3, flops / peer_seconds * 1e-9, ratio);
        else
            printf("  (no peer for backend %s)\n", info->backend);
    }
    return 0;
}

/* Runs one kernel bench with the runtime up; defaults: opencl:0, 64 tokens, 5 iterations. */
static int run_kernel_bench(const moira_bench_args_t *args,
                            int (*bench)(const char *, const char *, long long, long long, bool)) {
    moira_status_t status = moira_runtime_init();
    if (status) return moira_status_report(status);
    int rc =
        bench(args->backend ? args->backend : "opencl:0", args->model,
              args->tokens > 0 ? args->tokens : 64, args->iters > 0 ? args->iters : 5, args->json);
    moira_runtime_shutdown();
    return rc;
}

int moira_bench_moe(const moira_bench_args_t *args) {
    return run_kernel_bench(args, bench_moe);
}

int moira_bench_mla(const moira_bench_args_t *args) {
    return run_kernel_bench(args, bench_mla);
}

/* A decode step on cpu:0 allocates no host or device memory once warm (DESIGN.md §3, Programs).
 *
 * Everything lives in one device buffer made up front: one decoder layer's weights (attention in
 * f16 and bf16, experts both packed (bf16) and widened row by row (fp8), the shared expert in f16),
 * the activations of one token and a latent cache. One decode step is the op sequence a layer runs
 * for one token (rmsnorm, the q and kv_a projections, the kv norm into the cache, rope, absorbed
 * MLA, o_proj, the router, dispatch, both grouped FFNs, combine, the shared SwiGLU), framed by
 * small host writes (position, hidden state) and, on a second queue ordered by an event, a host
 * read of the result. Two steps warm the queues up; the next five are counted: host allocations
 * through alloc_counter (interposed malloc and friends, every thread) and device allocations
 * through moira_device_allocation_count. Both must be zero.
 *
 * The sanitizer build cannot count host allocations (it owns malloc): there the steps still run,
 * for the sanitizers to watch, and the test reports skip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/event.h"
#include "tests/unit/alloc_counter.h"
#include "tests/unit/testing.h"

/* A small DeepSeek-shaped layer, large enough that the pool splits every projection. */
#define HIDDEN 256
#define HEADS 8
#define NOPE 32
#define ROPE 16
#define V_DIM 32
#define LATENT 128
#define EXPERTS 16
#define TOP_K 4
#define GROUPS 4
#define TOPK_GROUPS 2
#define INTER 128
#define SHARED_INTER 256
#define CACHE_ROWS 16
#define Q_WIDTH (HEADS * (NOPE + ROPE))
#define KV_A_WIDTH (LATENT + ROPE)
#define KV_B_ROWS (HEADS * (NOPE + V_DIM))
#define WARM_STEPS 2
#define COUNTED_STEPS 5
#define FP8_BLOCK 128
#define WORKSPACE_BYTES ((size_t)8 << 20)

static moira_device_t *device;
static moira_queue_t *queue, *reader;
/* One device buffer holds every weight, activation and the cache, laid out once up front as a
 * recorded program's workspace is. */
static moira_buffer_t *workspace;
static size_t workspace_used;

/* The offset of the next `bytes` (64-byte aligned) of the workspace. */
static size_t carve(size_t bytes) {
    size_t offset = workspace_used;
    workspace_used += (bytes + 63) / 64 * 64;
    if (workspace_used > WORKSPACE_BYTES) {
        fprintf(stderr, "test_steady_state_alloc: the workspace is too small\n");
        exit(1);
    }
    return offset;
}

/* A contiguous view of the workspace from byte `offset` on. */
static moira_dtensor_t view(size_t offset, moira_dtype_t dtype, int rank, const int64_t *shape) {
    moira_dtensor_t t = {.buffer = workspace, .offset = offset, .dtype = dtype, .rank = rank};
    for (int i = 0; i < rank; i++)
        t.shape[i] = shape[i];
    return t;
}

/* A fresh contiguous tensor of the workspace, its contents whatever the workspace holds. */
static moira_dtensor_t tensor(moira_dtype_t dtype, int rank, const int64_t *shape) {
    moira_dtensor_t t = view(0, dtype, rank, shape);
    t.offset = carve((size_t)moira_dtensor_numel(&t) * moira_dtype_size(dtype));
    return t;
}

/* Writes `bytes` of `data` at `offset` and waits: set-up only, before anything is counted. */
static void upload_bytes(size_t offset, const void *data, size_t bytes) {
    CHECK_OK(moira_queue_write(queue, workspace, offset, data, bytes));
    CHECK_OK(moira_queue_finish(queue));
}

/* An f32 tensor of uniform values in [-scale, scale), or zeros when scale is 0. */
static moira_dtensor_t f32_tensor(int rank, const int64_t *shape, uint64_t seed, float scale) {
    moira_dtensor_t t = tensor(MOIRA_DTYPE_F32, rank, shape);
    size_t n = (size_t)moira_dtensor_numel(&t);
    float *values = calloc(n, sizeof(float));
    if (scale != 0) moira_test_fill_uniform(values, n, seed, -scale, scale);
    upload_bytes(t.offset, values, n * sizeof(float));
    free(values);
    return t;
}

/* A weight [matrices, rows, cols] (rank 2 when `matrices` is 0) of uniform values scaled by
 * fan-in, stored as `dtype`; fp8 gets one scale per 128x128 block after the codes. */
static moira_dtensor_t weight(moira_dtype_t dtype, int64_t matrices, int64_t rows, int64_t cols,
                              uint64_t seed) {
    size_t n = (size_t)((matrices ? matrices : 1) * rows * cols);
    float bound = 1.0f / sqrtf((float)cols);
    float *values = malloc(n * sizeof(float));
    moira_test_fill_uniform(values, n, seed, -bound, bound);
    size_t data_bytes = n * moira_dtype_size(dtype);
    size_t scale_offset = (data_bytes + 3) / 4 * 4;
    size_t n_scales = (size_t)((matrices ? matrices : 1) * ((rows + FP8_BLOCK - 1) / FP8_BLOCK) *
                               ((cols + FP8_BLOCK - 1) / FP8_BLOCK));
    bool fp8 = dtype == MOIRA_DTYPE_F8_E4M3;
    size_t total = fp8 ? scale_offset + n_scales * sizeof(float) : data_bytes;
    unsigned char *storage = calloc(1, total);
    float scale = bound / 256.0f; /* codes up to 256, inside e4m3's 448 */
    if (fp8) {
        for (size_t i = 0; i < n; i++)
            storage[i] = moira_f32_to_fp8_e4m3(values[i] / scale);
        for (size_t i = 0; i < n_scales; i++)
            memcpy(storage + scale_offset + i * sizeof(float), &scale, sizeof(float));
    } else {
        moira_convert_from_f32(dtype, values, storage, n);
    }
    int64_t shape[3] = {matrices, rows, cols};
    size_t offset = carve(total);
    moira_dtensor_t w =
        matrices ? view(offset, dtype, 3, shape) : view(offset, dtype, 2, shape + 1);
    w.scale_offset = fp8 ? offset + scale_offset : 0;
    upload_bytes(offset, storage, total);
    free(storage);
    free(values);
    return w;
}

/* The layer's weights and activations, all on the device. */
typedef struct layer {
    moira_dtensor_t x, xn, q, kv_a, q_lat, o_lat, attn, c, k_pe, positions;
    moira_dtensor_t w_in_norm, w_post_norm, w_kv_norm, w_q, w_kv_a, w_kv_b, w_o;
    moira_dtensor_t w_gate, gate_bias, topk_idx, topk_weight, offsets, sorted_rows, assignment_pos;
    moira_dtensor_t w1, w3, w2, w1_fp8, w3_fp8, w2_fp8, ys, ys_fp8, y_fp8;
    moira_dtensor_t w1_shared, w3_shared, w2_shared;
    moira_rope_params_t rope_q, rope_k;
} layer_t;

/* Lays out and fills everything a step touches in the workspace. */
static void layer_create(layer_t *l) {
    l->x = f32_tensor(2, (int64_t[]){1, HIDDEN}, 1, 0);
    l->xn = f32_tensor(2, (int64_t[]){1, HIDDEN}, 2, 0);
    l->q = f32_tensor(2, (int64_t[]){1, Q_WIDTH}, 3, 0);
    l->kv_a = f32_tensor(2, (int64_t[]){1, KV_A_WIDTH}, 4, 0);
    l->q_lat = f32_tensor(2, (int64_t[]){1, HEADS * LATENT}, 5, 0);
    l->o_lat = f32_tensor(2, (int64_t[]){1, HEADS * LATENT}, 6, 0);
    l->attn = f32_tensor(2, (int64_t[]){1, HEADS * V_DIM}, 7, 0);
    l->c = f32_tensor(2, (int64_t[]){CACHE_ROWS, LATENT}, 8, 0);
    l->k_pe = f32_tensor(2, (int64_t[]){CACHE_ROWS, ROPE}, 9, 0);
    l->positions = tensor(MOIRA_DTYPE_I32, 1, (int64_t[]){1});
    l->w_in_norm = f32_tensor(1, (int64_t[]){HIDDEN}, 10, 1.0f);
    l->w_post_norm = f32_tensor(1, (int64_t[]){HIDDEN}, 11, 1.0f);
    l->w_kv_norm = f32_tensor(1, (int64_t[]){LATENT}, 12, 1.0f);
    l->w_q = weight(MOIRA_DTYPE_F16, 0, Q_WIDTH, HIDDEN, 13);
    l->w_kv_a = weight(MOIRA_DTYPE_F16, 0, KV_A_WIDTH, HIDDEN, 14);
    l->w_kv_b = weight(MOIRA_DTYPE_BF16, 0, KV_B_ROWS, LATENT, 15);
    l->w_o = weight(MOIRA_DTYPE_F32, 0, HIDDEN, HEADS * V_DIM, 16);
    l->w_gate = weight(MOIRA_DTYPE_F32, 0, EXPERTS, HIDDEN, 17);
    l->gate_bias = f32_tensor(1, (int64_t[]){EXPERTS}, 18, 0.01f);
    l->topk_idx = tensor(MOIRA_DTYPE_I32, 2, (int64_t[]){1, TOP_K});
    l->topk_weight = f32_tensor(2, (int64_t[]){1, TOP_K}, 19, 0);
    l->offsets = tensor(MOIRA_DTYPE_I32, 1, (int64_t[]){EXPERTS + 1});
    l->sorted_rows = tensor(MOIRA_DTYPE_I32, 1, (int64_t[]){TOP_K});
    l->assignment_pos = tensor(MOIRA_DTYPE_I32, 1, (int64_t[]){TOP_K});
    l->w1 = weight(MOIRA_DTYPE_BF16, EXPERTS, INTER, HIDDEN, 20);
    l->w3 = weight(MOIRA_DTYPE_BF16, EXPERTS, INTER, HIDDEN, 21);
    l->w2 = weight(MOIRA_DTYPE_BF16, EXPERTS, HIDDEN, INTER, 22);
    l->w1_fp8 = weight(MOIRA_DTYPE_F8_E4M3, EXPERTS, INTER, HIDDEN, 23);
    l->w3_fp8 = weight(MOIRA_DTYPE_F8_E4M3, EXPERTS, INTER, HIDDEN, 24);
    l->w2_fp8 = weight(MOIRA_DTYPE_F8_E4M3, EXPERTS, HIDDEN, INTER, 25);
    l->ys = f32_tensor(2, (int64_t[]){TOP_K, HIDDEN}, 26, 0);
    l->ys_fp8 = f32_tensor(2, (int64_t[]){TOP_K, HIDDEN}, 27, 0);
    l->y_fp8 = f32_tensor(2, (int64_t[]){1, HIDDEN}, 28, 0);
    l->w1_shared = weight(MOIRA_DTYPE_F16, 0, SHARED_INTER, HIDDEN, 29);
    l->w3_shared = weight(MOIRA_DTYPE_F16, 0, SHARED_INTER, HIDDEN, 30);
    l->w2_shared = weight(MOIRA_DTYPE_F16, 0, HIDDEN, SHARED_INTER, 31);
    l->rope_q = (moira_rope_params_t){.n_heads = HEADS,
                                      .head_stride = NOPE + ROPE,
                                      .rope_offset = NOPE,
                                      .rope_dim = ROPE,
                                      .cos_sin_scale = 1.0f};
    for (int i = 0; i < ROPE / 2; i++)
        l->rope_q.inv_freq[i] = pow(10000.0, -2.0 * i / ROPE);
    l->rope_k = l->rope_q;
    l->rope_k.n_heads = 1;
    l->rope_k.head_stride = ROPE;
    l->rope_k.rope_offset = 0;
}

/* Submits one op, recording a failure against the line that asked. */
#define LAUNCH(op, params, ...)                                                                    \
    do {                                                                                           \
        const moira_dtensor_t operands_[] = {__VA_ARGS__};                                         \
        CHECK_OK(moira_launch_op(queue, op, &(params), sizeof(params),                             \
                                 (int)(sizeof(operands_) / sizeof(operands_[0])), operands_));     \
    } while (0)

/* The attention half of a step: norms, projections, rope, the latent cache row `pos`, absorbed
 * attention over rows 0 .. pos, o_proj added into x. */
static void attention(const layer_t *l, int32_t pos) {
    moira_rmsnorm_params_t norm = {.eps = 1e-6f};
    moira_linear_params_t overwrite = {.beta = 0}, accumulate = {.beta = 1};
    moira_mla_params_t mla = {.n_heads = HEADS,
                              .nope_dim = NOPE,
                              .rope_dim = ROPE,
                              .v_dim = V_DIM,
                              .kv_lora_rank = LATENT,
                              .cache_len = pos + 1,
                              .scale = 1.0f / sqrtf((float)(NOPE + ROPE))};
    moira_dtensor_t latent = view(l->kv_a.offset, MOIRA_DTYPE_F32, 2, (int64_t[]){1, LATENT});
    latent.row_stride = KV_A_WIDTH;
    moira_dtensor_t pe =
        view(l->kv_a.offset + LATENT * sizeof(float), MOIRA_DTYPE_F32, 2, (int64_t[]){1, ROPE});
    pe.row_stride = KV_A_WIDTH;
    moira_dtensor_t c_row = view(l->c.offset + (size_t)pos * LATENT * sizeof(float),
                                 MOIRA_DTYPE_F32, 2, (int64_t[]){1, LATENT});
    moira_dtensor_t k_pe_row = view(l->k_pe.offset + (size_t)pos * ROPE * sizeof(float),
                                    MOIRA_DTYPE_F32, 2, (int64_t[]){1, ROPE});
    moira_dtensor_t c_seen = view(l->c.offset, MOIRA_DTYPE_F32, 2, (int64_t[]){pos + 1, LATENT});
    moira_dtensor_t k_pe_seen =
        view(l->k_pe.offset, MOIRA_DTYPE_F32, 2, (int64_t[]){pos + 1, ROPE});

    LAUNCH(MOIRA_OP_RMSNORM, norm, l->x, l->w_in_norm, l->xn);
    LAUNCH(MOIRA_OP_LINEAR, overwrite, l->xn, l->w_q, l->q);
    LAUNCH(MOIRA_OP_LINEAR, overwrite, l->xn, l->w_kv_a, l->kv_a);
    LAUNCH(MOIRA_OP_RMSNORM, norm, latent, l->w_kv_norm, c_row);
    LAUNCH(MOIRA_OP_ROPE, l->rope_q, l->q, l->positions, l->q);
    LAUNCH(MOIRA_OP_ROPE, l->rope_k, pe, l->positions, k_pe_row);
    LAUNCH(MOIRA_OP_MLA_ABSORB_Q, mla, l->q, l->w_kv_b, l->q_lat);
    LAUNCH(MOIRA_OP_MLA_DECODE_ATTENTION, mla, l->q_lat, l->q, c_seen, k_pe_seen, l->positions,
           l->o_lat);
    LAUNCH(MOIRA_OP_MLA_ABSORB_OUT, mla, l->o_lat, l->w_kv_b, l->attn);
    LAUNCH(MOIRA_OP_LINEAR, accumulate, l->attn, l->w_o, l->x);
}

/* The MoE half: router (groups, bias, a capacity limit), dispatch, the packed and the widened
 * grouped FFN, combine, and the shared expert, added into x. */
static void moe(const layer_t *l) {
    static const moira_dtensor_t absent = {0};
    moira_rmsnorm_params_t norm = {.eps = 1e-6f};
    moira_gate_params_t gate = {.n_experts = EXPERTS,
                                .top_k = TOP_K,
                                .n_group = GROUPS,
                                .topk_group = TOPK_GROUPS,
                                .scoring = MOIRA_SCORING_SIGMOID,
                                .norm_topk_prob = 1,
                                .routed_scaling_factor = 2.5f,
                                .capacity_factor = 4.0f};
    moira_moe_dispatch_params_t dispatch = {.n_experts = EXPERTS};
    moira_moe_ffn_params_t ffn = {.top_k = TOP_K};
    moira_moe_combine_params_t add = {.beta = 1}, overwrite = {.beta = 0};
    moira_swiglu_params_t shared = {.beta = 1};
    moira_dtensor_t assignment_pos =
        view(l->assignment_pos.offset, MOIRA_DTYPE_I32, 2, (int64_t[]){1, TOP_K});

    LAUNCH(MOIRA_OP_RMSNORM, norm, l->x, l->w_post_norm, l->xn);
    LAUNCH(MOIRA_OP_GATE, gate, l->xn, l->w_gate, l->gate_bias, l->topk_idx, l->topk_weight,
           absent);
    LAUNCH(MOIRA_OP_MOE_DISPATCH, dispatch, l->topk_idx, l->offsets, l->sorted_rows,
           l->assignment_pos);
    LAUNCH(MOIRA_OP_MOE_FFN, ffn, l->xn, l->w1, l->w3, l->w2, l->offsets, l->sorted_rows, l->ys);
    LAUNCH(MOIRA_OP_MOE_FFN, ffn, l->xn, l->w1_fp8, l->w3_fp8, l->w2_fp8, l->offsets,
           l->sorted_rows, l->ys_fp8);
    LAUNCH(MOIRA_OP_MOE_COMBINE, add, l->ys, assignment_pos, l->topk_weight, l->x);
    LAUNCH(MOIRA_OP_MOE_COMBINE, overwrite, l->ys_fp8, assignment_pos, l->topk_weight, l->y_fp8);
    LAUNCH(MOIRA_OP_SWIGLU, shared, l->xn, l->w1_shared, l->w3_shared, l->w2_shared, l->x);
}

/* What one step leaves on the host: the new hidden state and the experts the router chose. */
typedef struct step_out {
    float x[HIDDEN];
    int32_t topk_idx[TOP_K];
} step_out_t;

/* One decode step at position `pos` for the token whose hidden state is `x_in`: host writes, the
 * layer, then `done` signalled on the step's queue and awaited by the reader queue, which reads
 * the results back. Host memory passed to the queues is static or the caller's and outlives the
 * finish at the end. */
static void step(const layer_t *l, int32_t pos, const float *x_in, moira_event_t *done,
                 step_out_t *out) {
    static int32_t position;
    position = pos;
    CHECK_OK(moira_queue_write(queue, workspace, l->positions.offset, &position, sizeof(position)));
    CHECK_OK(moira_queue_write(queue, workspace, l->x.offset, x_in, HIDDEN * sizeof(float)));
    attention(l, pos);
    moe(l);
    CHECK_OK(moira_queue_signal(queue, done));
    CHECK_OK(moira_queue_wait(reader, done));
    CHECK_OK(moira_queue_read(reader, workspace, l->x.offset, out->x, sizeof(out->x)));
    CHECK_OK(moira_queue_read(reader, workspace, l->topk_idx.offset, out->topk_idx,
                              sizeof(out->topk_idx)));
    CHECK_OK(moira_queue_finish(queue));
    CHECK_OK(moira_queue_finish(reader));
    CHECK_OK(moira_event_wait(done));
}

/* A step that ran: a finite hidden state, and TOP_K distinct experts in range (with a capacity
 * of 4 * k / E per expert rounded up, one token never loses an assignment). */
static void check_step(const step_out_t *out, int step_index) {
    bool finite = true;
    for (int i = 0; i < HIDDEN; i++)
        finite = finite && isfinite(out->x[i]);
    CHECK_MSG(finite, "step %d: the hidden state is not finite", step_index);
    for (int j = 0; j < TOP_K; j++) {
        CHECK_MSG(out->topk_idx[j] >= 0 && out->topk_idx[j] < EXPERTS,
                  "step %d: expert %d of the token is %d", step_index, j, out->topk_idx[j]);
        for (int i = 0; i < j; i++)
            CHECK_MSG(out->topk_idx[i] != out->topk_idx[j], "step %d: expert %d chosen twice",
                      step_index, out->topk_idx[j]);
    }
}

/* The instruments themselves: a deliberate allocation and free are both seen, and the device
 * counter saw the one buffer the set-up made. */
static void check_instruments(uint64_t device_allocations_in_setup) {
    CHECK_MSG(device_allocations_in_setup == 1,
              "the set-up made 1 buffer but the device counter saw %llu",
              (unsigned long long)device_allocations_in_setup);
    if (!alloc_counter_available()) return;
    alloc_counter_start();
    void *volatile block = malloc(64);
    free(block);
    alloc_counts_t seen = alloc_counter_stop();
    CHECK_MSG(seen.allocations == 1 && seen.frees == 1,
              "one malloc and one free were counted as %llu and %llu",
              (unsigned long long)seen.allocations, (unsigned long long)seen.frees);
}

int main(void) {
    /* Several threads even on a small machine, so the kernels' parallel paths run. */
    setenv("MOIRA_CPU_THREADS", "4", 0);
    moira_status_t status = moira_runtime_init();
    if (!status) status = moira_device_find("cpu:0", &device);
    if (!status) status = moira_queue_create(device, &queue);
    if (!status) status = moira_queue_create(device, &reader);
    if (status) return moira_status_report(status);

    layer_t layer;
    uint64_t device_at_start = moira_device_allocation_count();
    status = moira_buffer_alloc(device, WORKSPACE_BYTES, -1, &workspace);
    if (status) return moira_status_report(status);
    layer_create(&layer);
    check_instruments(moira_device_allocation_count() - device_at_start);
    enum { STEPS = WARM_STEPS + COUNTED_STEPS };
    moira_event_t *done[STEPS];
    for (int s = 0; s < STEPS; s++)
        CHECK_OK(moira_event_create(&done[s]));
    static float x_in[STEPS][HIDDEN];
    for (int s = 0; s < STEPS; s++)
        moira_test_fill_uniform(x_in[s], HIDDEN, 100 + (uint64_t)s, -1.0f, 1.0f);
    static step_out_t out[STEPS];

    for (int s = 0; s < WARM_STEPS; s++)
        step(&layer, s, x_in[s], done[s], &out[s]);
    bool counting = alloc_counter_available();
    uint64_t device_before = moira_device_allocation_count();
    alloc_counter_start();
    for (int s = WARM_STEPS; s < STEPS; s++)
        step(&layer, s, x_in[s], done[s], &out[s]);
    alloc_counts_t host = alloc_counter_stop();
    uint64_t device_allocations = moira_device_allocation_count() - device_before;

    for (int s = 0; s < STEPS; s++)
        check_step(&out[s], s);
    CHECK_MSG(device_allocations == 0, "%d warm decode steps made %llu device allocations",
              COUNTED_STEPS, (unsigned long long)device_allocations);
    if (counting) {
        CHECK_MSG(host.allocations == 0, "%d warm decode steps made %llu host allocations",
                  COUNTED_STEPS, (unsigned long long)host.allocations);
        CHECK_MSG(host.frees == 0, "%d warm decode steps freed host memory %llu times",
                  COUNTED_STEPS, (unsigned long long)host.frees);
        printf("%d warm decode steps: %llu host allocations, %llu frees, %llu device "
               "allocations\n",
               COUNTED_STEPS, (unsigned long long)host.allocations, (unsigned long long)host.frees,
               (unsigned long long)device_allocations);
    }

    for (int s = 0; s < STEPS; s++)
        moira_event_release(done[s]);
    moira_queue_destroy(reader);
    moira_queue_destroy(queue);
    moira_buffer_free(workspace);
    moira_runtime_shutdown();
    int code = moira_test_finish("test_steady_state_alloc");
    if (code == 0 && !counting) {
        printf("skipped: this build (sanitizers) owns malloc, so host allocations cannot be "
               "counted\n");
        return MOIRA_TEST_SKIP;
    }
    return code;
}

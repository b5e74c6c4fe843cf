/* Absorbed MLA decode attention (MLA_DECODE_ATTENTION) over f32 and bf16 latent caches, and the
 * bf16 cache writes of RMSNORM and ROPE, on cpu:0 with every instruction set this CPU has forced
 * in turn (MOIRA_CPU_ISA), against independent double-precision references written from
 * DESIGN.md §4; the op contract for cache dtypes; and devices without bf16 caches refusing them.
 *
 * A bf16 cache holds values rounded through bf16, so the fp64 reference reads exactly the numbers
 * the device stores, widened; the device is then held to bf16's limit (2e-3), an f32 cache to
 * f32's (1e-6). Shapes hit the edges: more heads than one group of 16, more groups than one item
 * folds together, tokens that see 1 row, a block and one row, the whole cache and past its end,
 * a cache longer than one chunk, odd latent sizes (no bf16 pairs: the widening fallback). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_isa.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/dtype.h"
#include "tests/unit/testing.h"

#define F32_LIMIT 1e-6
#define BF16_LIMIT 2e-3

static moira_device_t *device;
static moira_queue_t *queue;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "test_mla_decode: out of memory\n");
        exit(1);
    }
    return p;
}

static float *uniform(size_t n, uint64_t seed) {
    float *values = xcalloc(n, sizeof(float));
    moira_test_fill_uniform(values, n, seed, -1.0f, 1.0f);
    return values;
}

/* A device buffer holding `n` values as `dtype` (F32, BF16 or I32 bits). */
static moira_dtensor_t upload(const void *values, moira_dtype_t dtype, int64_t rows, int64_t cols) {
    size_t n = (size_t)(rows * cols), bytes = n * moira_dtype_size(dtype);
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_buffer_alloc(device, bytes ? bytes : 4, -1, &buffer));
    if (!buffer) exit(1);
    void *storage = xcalloc(bytes, 1);
    if (values && (dtype == MOIRA_DTYPE_F32 || dtype == MOIRA_DTYPE_BF16))
        moira_convert_from_f32(dtype, values, storage, n);
    else if (values)
        memcpy(storage, values, bytes);
    CHECK_OK(moira_queue_write(queue, buffer, 0, storage, bytes));
    CHECK_OK(moira_queue_finish(queue));
    free(storage);
    moira_dtensor_t t = {.buffer = buffer, .dtype = dtype, .rank = 2};
    t.shape[0] = rows;
    t.shape[1] = cols;
    return t;
}

/* Reads a tensor back widened to f32. */
static float *download(const moira_dtensor_t *t, size_t n) {
    size_t bytes = n * moira_dtype_size(t->dtype);
    unsigned char *raw = xcalloc(bytes, 1);
    float *values = xcalloc(n, sizeof(float));
    CHECK_OK(moira_queue_read(queue, t->buffer, t->offset, raw, bytes));
    CHECK_OK(moira_queue_finish(queue));
    moira_convert_to_f32(t->dtype, raw, values, n);
    free(raw);
    return values;
}

static moira_status_t run(int op, const void *params, size_t size, const moira_dtensor_t *ops,
                          int n) {
    MOIRA_RETURN_IF_ERROR(moira_launch_op(queue, op, params, size, n, ops));
    return moira_queue_finish(queue);
}

static void release(moira_dtensor_t *ops, int n) {
    for (int i = 0; i < n; i++)
        moira_buffer_free(ops[i].buffer);
}

static double dot(const float *a, const float *b, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

/* ---- Decode attention ---- */

typedef struct decode_case {
    const char *name;
    int64_t heads, latent, rope, cache, tokens;
    int32_t positions[8];
} decode_case_t;

static const decode_case_t decode_cases[] = {
    /* 20 heads (groups of 16 and 4), 5 tokens: 10 groups, more than one item folds. */
    {"20 heads, 5 tokens", 20, 40, 6, 700, 5, {0, 64, 299, 699, 5000}},
    /* One group of 16 heads, 8 consecutive tokens at the end of the cache. */
    {"16 heads, chunk of 8", 16, 64, 8, 600, 8, {592, 593, 594, 595, 596, 597, 598, 599}},
    /* Odd latent size: no bf16 pairs, the kernels read widened rows. */
    {"odd latent", 3, 21, 6, 130, 2, {3, 129}},
};

/* score[s] = (q_lat . c[s] + q_pe . k_pe[s]) * scale over s <= pos (within the cache), softmax,
 * the weighted sum of c, all in double; zeros when no row is visible. */
static void ref_decode(const decode_case_t *k, float scale, const float *q_lat, const float *q,
                       const float *c, const float *k_pe, int64_t nope, double *out) {
    int64_t H = k->heads, L = k->latent, R = k->rope, qw = H * (nope + R);
    double *scores = xcalloc((size_t)k->cache, sizeof(double));
    for (int64_t t = 0; t < k->tokens; t++) {
        int64_t visible = k->positions[t] + 1 < k->cache ? k->positions[t] + 1 : k->cache;
        for (int64_t h = 0; h < H; h++) {
            const float *ql = q_lat + (t * H + h) * L, *qp = q + t * qw + h * (nope + R) + nope;
            double max = -INFINITY, sum = 0, *o = out + (t * H + h) * L;
            for (int64_t s = 0; s < visible; s++) {
                scores[s] = (dot(ql, c + s * L, L) + dot(qp, k_pe + s * R, R)) * scale;
                max = scores[s] > max ? scores[s] : max;
            }
            for (int64_t j = 0; j < L; j++)
                o[j] = 0;
            for (int64_t s = 0; s < visible; s++) {
                double p = exp(scores[s] - max);
                sum += p;
                for (int64_t j = 0; j < L; j++)
                    o[j] += p * c[s * L + j];
            }
            for (int64_t j = 0; j < L && sum > 0; j++)
                o[j] /= sum;
        }
    }
    free(scores);
}

static void check_decode(const decode_case_t *k, moira_dtype_t cache_dtype, const char *isa) {
    const int64_t NOPE = 8;
    int64_t H = k->heads, L = k->latent, R = k->rope, S = k->cache, T = k->tokens;
    moira_mla_params_t p = {.n_heads = (int32_t)H,
                            .nope_dim = (int32_t)NOPE,
                            .rope_dim = (int32_t)R,
                            .v_dim = 8,
                            .kv_lora_rank = (int32_t)L,
                            .cache_len = (int32_t)S,
                            .scale = 0.35f};
    int64_t qw = H * (NOPE + R);
    float *q_lat = uniform((size_t)(T * H * L), 500 + (uint64_t)L);
    float *q = uniform((size_t)(T * qw), 501);
    float *c = uniform((size_t)(S * L), 502);
    float *k_pe = uniform((size_t)(S * R), 503);
    moira_round_through(cache_dtype, c, (size_t)(S * L));
    moira_round_through(cache_dtype, k_pe, (size_t)(S * R));
    double *ref = xcalloc((size_t)(T * H * L), sizeof(double));
    ref_decode(k, p.scale, q_lat, q, c, k_pe, NOPE, ref);
    moira_dtensor_t ops[6] = {upload(q_lat, MOIRA_DTYPE_F32, T, H * L),
                              upload(q, MOIRA_DTYPE_F32, T, qw),
                              upload(c, cache_dtype, S, L),
                              upload(k_pe, cache_dtype, S, R),
                              upload(k->positions, MOIRA_DTYPE_I32, T, 1),
                              upload(NULL, MOIRA_DTYPE_F32, T, H * L)};
    ops[4].rank = 1;
    CHECK_OK(run(MOIRA_OP_MLA_DECODE_ATTENTION, &p, sizeof(p), ops, 6));
    float *got = download(&ops[5], (size_t)(T * H * L));
    double nmse = moira_test_nmse(got, ref, (size_t)(T * H * L));
    double limit = cache_dtype == MOIRA_DTYPE_BF16 ? BF16_LIMIT : F32_LIMIT;
    printf("  %-12s %-5s cache, %-20s NMSE %.3g\n", isa, moira_dtype_name(cache_dtype), k->name,
           nmse);
    CHECK_MSG(nmse <= limit, "decode %s, %s cache, %s: NMSE %.3g over %g", isa,
              moira_dtype_name(cache_dtype), k->name, nmse, limit);
    release(ops, 6);
    free(q_lat), free(q), free(c), free(k_pe), free(ref), free(got);
}

/* Every case in both cache dtypes with each instruction set this CPU has forced. */
static void test_decode(void) {
    for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++) {
        if (!moira_cpu_isa_supported((moira_cpu_isa_t)isa)) {
            printf("  %s: not supported by this CPU, not tested\n",
                   moira_cpu_isa_name((moira_cpu_isa_t)isa));
            continue;
        }
        const char *name = moira_cpu_isa_name((moira_cpu_isa_t)isa);
        setenv("MOIRA_CPU_ISA", name, 1);
        for (size_t i = 0; i < sizeof(decode_cases) / sizeof(decode_cases[0]); i++) {
            check_decode(&decode_cases[i], MOIRA_DTYPE_F32, name);
            check_decode(&decode_cases[i], MOIRA_DTYPE_BF16, name);
        }
    }
    unsetenv("MOIRA_CPU_ISA");
}

/* ---- The cache writes: RMSNORM and ROPE into bf16 rows ---- */

/* Each value within half a bf16 unit of the double reference (rounded once, from at least f32),
 * and the whole within bf16's NMSE limit. */
static void check_bf16_rows(const char *what, const float *got, const double *ref, size_t n) {
    size_t off = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs(got[i] - ref[i]) <= fabs(ref[i]) * 0x1p-8 + 1e-30)) off++;
    CHECK_MSG(off == 0, "%s: %zu of %zu values more than half a bf16 unit off", what, off, n);
    double nmse = moira_test_nmse(got, ref, n);
    CHECK_MSG(nmse <= BF16_LIMIT, "%s: NMSE %.3g", what, nmse);
}

/* kv_a rows [T, L + R] as the layer program reads them: c through RMSNORM and k_pe through ROPE,
 * each a strided column window of kv_a, written into bf16 cache rows. */
static void test_cache_writes(void) {
    const int64_t T = 5, L = 40, R = 6, W = L + R;
    float *kv_a = uniform((size_t)(T * W), 600), *w = uniform((size_t)L, 601);
    int32_t positions[5] = {0, 1, 17, 300, 4095};
    moira_dtensor_t x = upload(kv_a, MOIRA_DTYPE_F32, T, W);
    moira_dtensor_t norm = upload(w, MOIRA_DTYPE_F32, 1, L);
    norm.rank = 1;
    norm.shape[0] = L;
    moira_dtensor_t pos = upload(positions, MOIRA_DTYPE_I32, T, 1);
    pos.rank = 1;
    moira_dtensor_t c = upload(NULL, MOIRA_DTYPE_BF16, T, L);
    moira_dtensor_t pe = upload(NULL, MOIRA_DTYPE_BF16, T, R);
    moira_dtensor_t x_c = x, x_pe = x;
    x_c.row_stride = x_pe.row_stride = W;
    x_c.shape[1] = L;
    x_pe.shape[1] = R;
    x_pe.offset = (size_t)L * sizeof(float);
    moira_rmsnorm_params_t rn = {.eps = 1e-6f};
    moira_rope_params_t rp = {
        .n_heads = 1, .head_stride = (int32_t)R, .rope_dim = (int32_t)R, .cos_sin_scale = 0.9f};
    for (int i = 0; i < R / 2; i++)
        rp.inv_freq[i] = pow(10000.0, -2.0 * i / (double)R);
    moira_dtensor_t norm_ops[3] = {x_c, norm, c}, rope_ops[3] = {x_pe, pos, pe};
    CHECK_OK(run(MOIRA_OP_RMSNORM, &rn, sizeof(rn), norm_ops, 3));
    CHECK_OK(run(MOIRA_OP_ROPE, &rp, sizeof(rp), rope_ops, 3));
    double *ref_c = xcalloc((size_t)(T * L), sizeof(double));
    double *ref_pe = xcalloc((size_t)(T * R), sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        const float *row = kv_a + t * W;
        double inv = 1.0 / sqrt(dot(row, row, L) / (double)L + 1e-6);
        for (int64_t j = 0; j < L; j++)
            ref_c[t * L + j] = row[j] * inv * w[j];
        for (int64_t i = 0; i < R / 2; i++) {
            double angle = positions[t] * rp.inv_freq[i], cs = cos(angle) * 0.9f;
            double sn = sin(angle) * 0.9f, even = row[L + 2 * i], odd = row[L + 2 * i + 1];
            ref_pe[t * R + 2 * i] = even * cs - odd * sn;
            ref_pe[t * R + 2 * i + 1] = even * sn + odd * cs;
        }
    }
    float *got_c = download(&c, (size_t)(T * L)), *got_pe = download(&pe, (size_t)(T * R));
    check_bf16_rows("rmsnorm into bf16", got_c, ref_c, (size_t)(T * L));
    check_bf16_rows("rope into bf16", got_pe, ref_pe, (size_t)(T * R));
    moira_dtensor_t all[] = {x, norm, pos, c, pe};
    release(all, 5);
    free(kv_a), free(w), free(ref_c), free(ref_pe), free(got_c), free(got_pe);
}

/* ---- The contract ---- */

/* Cache operands are F32 or BF16, c and k_pe alike; nothing else takes BF16 activations. */
static void test_contract(void) {
    const int64_t S = 4, L = 8, R = 2, H = 1;
    moira_mla_params_t p = {.n_heads = 1,
                            .nope_dim = 2,
                            .rope_dim = (int32_t)R,
                            .v_dim = 2,
                            .kv_lora_rank = (int32_t)L,
                            .cache_len = (int32_t)S,
                            .scale = 1};
    moira_dtensor_t ops[6] = {
        upload(NULL, MOIRA_DTYPE_F32, 1, H * L), upload(NULL, MOIRA_DTYPE_F32, 1, H * (2 + R)),
        upload(NULL, MOIRA_DTYPE_BF16, S, L),    upload(NULL, MOIRA_DTYPE_F32, S, R),
        upload(NULL, MOIRA_DTYPE_I32, 1, 1),     upload(NULL, MOIRA_DTYPE_F32, 1, H * L)};
    ops[4].rank = 1;
    moira_op_launch_t launch = {.op = MOIRA_OP_MLA_DECODE_ATTENTION,
                                .params = &p,
                                .params_size = sizeof(p),
                                .n_operands = 6};
    memcpy(launch.operands, ops, sizeof(ops));
    CHECK_CODE(moira_op_validate(&launch), MOIRA_CODE_INVALID_ARGUMENT); /* c BF16, k_pe F32 */
    launch.operands[2].dtype = MOIRA_DTYPE_F16;
    launch.operands[3].dtype = MOIRA_DTYPE_F16;
    CHECK_CODE(moira_op_validate(&launch), MOIRA_CODE_INVALID_ARGUMENT); /* F16 is no cache */
    launch.operands[2].dtype = launch.operands[3].dtype = MOIRA_DTYPE_BF16;
    CHECK_OK(moira_op_validate(&launch));
    CHECK(moira_op_cache_dtype(&launch) == MOIRA_DTYPE_BF16);
    /* LINEAR's y is an activation: never BF16. */
    moira_linear_params_t lp = {.beta = 0};
    moira_dtensor_t w = upload(NULL, MOIRA_DTYPE_F32, L, L), y = ops[2];
    y.shape[0] = 1;
    moira_op_launch_t linear = {.op = MOIRA_OP_LINEAR,
                                .params = &lp,
                                .params_size = sizeof(lp),
                                .n_operands = 3,
                                .operands = {ops[0], w, y}};
    linear.operands[0].shape[1] = L;
    CHECK_CODE(moira_op_validate(&linear), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(moira_op_cache_dtype(&linear) == MOIRA_DTYPE_F32);
    CHECK(moira_device_supports(device, MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_F32));
    CHECK(moira_device_supports(device, MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_BF16));
    CHECK(!moira_device_supports(device, MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_F16));
    release(ops, 6);
    moira_buffer_free(w.buffer);
}

/* A device that keeps only f32 caches says so, and refuses a bf16 cache write as UNSUPPORTED
 * (at the launch or, for a device that runs launches later, when the queue is finished). */
static void test_f32_only_devices(void) {
    const char *names[] = {"npu:0", "opencl:0"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        moira_device_t *other = NULL;
        moira_status_t found = moira_device_find(names[i], &other);
        if (found) {
            printf("  %s: not here (%s), not tested\n", names[i], moira_status_message(found));
            moira_status_free(found);
            continue;
        }
        CHECK(moira_device_supports(other, MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_F32));
        CHECK(!moira_device_supports(other, MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_BF16));
        moira_queue_t *q = NULL;
        moira_buffer_t *buffer = NULL;
        CHECK_OK(moira_queue_create(other, &q));
        CHECK_OK(moira_buffer_alloc(other, 4096, -1, &buffer));
        if (!q || !buffer) continue;
        moira_dtensor_t x = {.buffer = buffer, .dtype = MOIRA_DTYPE_F32, .rank = 2};
        x.shape[0] = 2;
        x.shape[1] = 16;
        moira_dtensor_t w = x, y = x;
        w.rank = 1;
        w.shape[0] = 16;
        w.offset = 256;
        y.dtype = MOIRA_DTYPE_BF16;
        y.offset = 512;
        moira_rmsnorm_params_t p = {.eps = 1e-6f};
        moira_dtensor_t ops[3] = {x, w, y};
        moira_status_t status = moira_launch_op(q, MOIRA_OP_RMSNORM, &p, sizeof(p), 3, ops);
        if (!status) status = moira_queue_finish(q);
        CHECK_MSG(moira_status_code(status) == MOIRA_CODE_UNSUPPORTED, "%s: rmsnorm into bf16: %s",
                  names[i], status ? moira_status_message(status) : "accepted");
        if (status)
            printf("  %s refuses a bf16 cache: %s\n", names[i], moira_status_message(status));
        moira_status_free(status);
        moira_buffer_free(buffer);
        moira_queue_destroy(q);
    }
}

int main(void) {
    CHECK_OK(moira_runtime_init());
    CHECK_OK(moira_device_find("cpu:0", &device));
    if (!device) return moira_test_finish("test_mla_decode");
    CHECK_OK(moira_queue_create(device, &queue));
    test_decode();
    test_cache_writes();
    test_contract();
    test_f32_only_devices();
    moira_queue_destroy(queue);
    moira_runtime_shutdown();
    return moira_test_finish("test_mla_decode");
}

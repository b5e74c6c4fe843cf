/* The cpu backend's SIMD paths against independent double-precision references: the packed
 * panel layout, every GEMM tile shape of every instruction set this CPU runs, the grouped expert
 * FFN, the blocked MLA attention and the dense projections on packed panels (LINEAR, SWIGLU,
 * MLA_ABSORB_OUT in every weight dtype, 1 to 8 decode tokens and prefills of 67 and 300) through
 * cpu:0 with each instruction set forced (MOIRA_CPU_ISA), and the lifetime of packed weight
 * copies (built once, dropped when their window, or an fp8 weight's scales, are written).
 *
 * Sizes are chosen to hit the edges: 1 token, experts with no rows, row counts that are not a
 * multiple of the 6-row tile, D odd (bf16 pairs padded), I not a multiple of 16, more than 16
 * heads (two query blocks), caches longer than one chunk, queries that see no key. Every result
 * must meet DESIGN.md §4's f32 limit: bf16 weights are exact inputs and the cpu device computes
 * in f32. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/packed_weights.h"
#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/dtype.h"
#include "tests/unit/testing.h"

#define F32_LIMIT 1e-6

static moira_device_t *device;
static moira_queue_t *queue;
static moira_threadpool_t *pool; /* packs weights in test_packing */
static int only_isa = -1;        /* the level named on the command line; -1: every level */

/* Whether the SIMD tests run `isa`: this CPU has it and the command line did not name another. */
static bool testing_isa(int isa) {
    return (only_isa < 0 || isa == only_isa) && moira_cpu_isa_supported((moira_cpu_isa_t)isa);
}

/* Tests stop at once when the host runs out of memory instead of failing later on NULL. */
static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "test_cpu_simd: out of memory\n");
        exit(1);
    }
    return p;
}

/* Seeded so that every run checks the same numbers. */
static float *uniform(size_t n, uint64_t seed, float lo, float hi) {
    float *values = xcalloc(n, sizeof(float));
    moira_test_fill_uniform(values, n, seed, lo, hi);
    return values;
}

/* Values rounded through bf16, so f32 and bf16 weights hold the same numbers. */
static float *bf16_exact(size_t n, uint64_t seed, float lo, float hi) {
    float *values = uniform(n, seed, lo, hi);
    moira_round_through(MOIRA_DTYPE_BF16, values, n);
    return values;
}

/* The references sum in double, so they are independent of the kernels' f32 order. */
static double ref_dot(const float *a, const float *b, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

/* silu(g) * u in double, written from DESIGN.md section 4, not from the kernels. */
static double ref_swiglu(double gate, double up) {
    return gate / (1.0 + exp(-gate)) * up;
}

/* ---- Device helpers ---- */

static moira_buffer_t *buffer_with(const void *data, size_t bytes) {
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_buffer_alloc(device, bytes, -1, &buffer));
    if (!buffer) exit(1);
    if (data) {
        CHECK_OK(moira_queue_write(queue, buffer, 0, data, bytes));
        CHECK_OK(moira_queue_finish(queue));
    }
    return buffer;
}

/* A device tensor view over a test buffer. */
static moira_dtensor_t tensor(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype, int rank,
                              int64_t d0, int64_t d1, int64_t d2) {
    moira_dtensor_t t = {.buffer = buffer, .offset = offset, .dtype = dtype, .rank = rank};
    t.shape[0] = d0;
    t.shape[1] = d1;
    t.shape[2] = d2;
    return t;
}

/* A weight tensor [E, rows, cols] of `dtype` holding `values`, `offset` bytes into its buffer. */
static moira_dtensor_t weight_tensor(moira_dtype_t dtype, const float *values, int64_t matrices,
                                     int64_t rows, int64_t cols, size_t offset) {
    size_t n = (size_t)(matrices * rows * cols), bytes = n * moira_dtype_size(dtype);
    unsigned char *storage = xcalloc(offset + bytes, 1);
    moira_convert_from_f32(dtype, values, storage + offset, n);
    moira_dtensor_t t =
        tensor(buffer_with(storage, offset + bytes), offset, dtype, 3, matrices, rows, cols);
    free(storage);
    return t;
}

/* Reads results back through the queue, as a user of the device would. */
static float *read_floats(moira_buffer_t *buffer, size_t offset, size_t n) {
    float *values = xcalloc(n, sizeof(float));
    CHECK_OK(moira_queue_read(queue, buffer, offset, values, n * sizeof(float)));
    CHECK_OK(moira_queue_finish(queue));
    return values;
}

/* Launches one op on cpu:0 and waits, so the test sees its result. */
static moira_status_t launch(int op, const void *params, size_t params_size,
                             const moira_dtensor_t *operands, int n) {
    moira_op_launch_t l = {.op = op, .params = params, .params_size = params_size, .n_operands = n};
    memcpy(l.operands, operands, (size_t)n * sizeof(*operands));
    MOIRA_RETURN_IF_ERROR(moira_queue_launch(queue, &l));
    return moira_queue_finish(queue);
}

/* ---- The panel layout, stated independently of the packer ---- */

/* Element (row, k) of matrix m in a packed copy (0 in the padding). */
static float panel_f32(const moira_cpu_packed_t *p, int64_t m, int64_t row, int64_t k) {
    const float *panel = moira_cpu_packed_panel(p, m, row / 16);
    return panel[16 * k + row % 16];
}

/* Where packed_weights.h says bf16 element (row, k) lives: the layout spelled out independently. */
static uint16_t panel_bf16(const moira_cpu_packed_t *p, int64_t m, int64_t row, int64_t k) {
    const uint16_t *panel = moira_cpu_packed_panel(p, m, row / 16);
    return panel[32 * (k / 2) + 2 * (row % 16) + k % 2];
}

/* Packs [2, 21, 37] weights 64 bytes into a buffer and reads every element back by the layout
 * formula, padding rows and bf16's padding column included; then the copy's lifetime. */
static void test_packing(void) {
    const int64_t E = 2, N = 21, K = 37;
    float *w = bf16_exact((size_t)(E * N * K), 1, -1, 1);
    for (int d = 0; d < 2; d++) {
        moira_dtype_t dtype = d ? MOIRA_DTYPE_BF16 : MOIRA_DTYPE_F32;
        moira_dtensor_t t = weight_tensor(dtype, w, E, N, K, 64);
        moira_cpu_packed_t *packed = NULL;
        CHECK_OK(moira_cpu_packed_acquire(pool, &t, &packed));
        CHECK(packed && packed->panels == 2 && packed->depth == (d ? 19 : 37));
        bool layout_ok = true;
        for (int64_t m = 0; packed && m < E; m++)
            for (int64_t row = 0; row < 32; row++)
                for (int64_t k = 0; k < (d ? 38 : 37); k++) {
                    float want = row < N && k < K ? w[(m * N + row) * K + k] : 0.0f;
                    float got = d ? moira_bf16_to_f32(panel_bf16(packed, m, row, k))
                                  : panel_f32(packed, m, row, k);
                    layout_ok &= got == want;
                }
        CHECK_MSG(layout_ok, "%s panels differ from the layout", moira_dtype_name(dtype));

        /* Asked again: the same copy. A write beside the window keeps it. */
        moira_cpu_packed_t *again = NULL;
        CHECK_OK(moira_cpu_packed_acquire(pool, &t, &again));
        CHECK(again == packed);
        moira_cpu_packed_release(again);
        float zero = 0;
        CHECK_OK(moira_queue_write(queue, t.buffer, 0, &zero, sizeof(zero)));
        CHECK_OK(moira_queue_finish(queue));
        CHECK_OK(moira_cpu_packed_acquire(pool, &t, &again));
        CHECK_MSG(again == packed, "a write outside the window dropped the packed copy");
        moira_cpu_packed_release(again);

        /* A write inside it: the next copy holds the new values. */
        uint16_t bits = moira_f32_to_bf16(7.0f);
        float seven = 7.0f;
        CHECK_OK(moira_queue_write(queue, t.buffer, 64 + (size_t)(N * K) * (d ? 2 : 4),
                                   d ? (const void *)&bits : &seven, d ? 2 : 4));
        CHECK_OK(moira_queue_finish(queue));
        moira_cpu_packed_t *fresh = NULL;
        CHECK_OK(moira_cpu_packed_acquire(pool, &t, &fresh));
        float first = !fresh ? 0
                      : d    ? moira_bf16_to_f32(panel_bf16(fresh, 1, 0, 0))
                             : panel_f32(fresh, 1, 0, 0);
        CHECK_MSG(first == 7.0f, "a write into the window left a stale packed copy (%g)", first);
        /* The kernel that held the old copy can still read it. */
        float old = packed ? (d ? moira_bf16_to_f32(panel_bf16(packed, 1, 0, 0))
                                : panel_f32(packed, 1, 0, 0))
                           : 0;
        CHECK(old == w[N * K]);
        moira_cpu_packed_release(fresh);
        moira_cpu_packed_release(packed);
        moira_buffer_free(t.buffer);
    }
    free(w);
}

/* ---- GEMM tiles ---- */

/* Panels of `streams` x 16 outputs from W [N, K] (rows past N are zero), built here by the
 * layout formula; f32 or bf16 pairs. */
static void *make_panels(const float *w, int64_t n_rows, int64_t K, int streams, bool bf16,
                         int64_t *out_depth) {
    int64_t depth = bf16 ? (K + 1) / 2 : K;
    size_t panel_bytes = (size_t)depth * 64;
    unsigned char *panels = aligned_alloc(64, (size_t)streams * panel_bytes);
    memset(panels, 0, (size_t)streams * panel_bytes);
    for (int s = 0; s < streams; s++)
        for (int j = 0; j < 16; j++) {
            int64_t row = 16 * s + j;
            if (row >= n_rows) continue;
            for (int64_t k = 0; k < K; k++) {
                if (bf16)
                    ((uint16_t *)(panels + s * panel_bytes))[32 * (k / 2) + 2 * j + k % 2] =
                        moira_f32_to_bf16(w[row * K + k]);
                else
                    ((float *)(panels + s * panel_bytes))[16 * k + j] = w[row * K + k];
            }
        }
    *out_depth = depth;
    return panels;
}

/* One tile shape of one instruction set: rows x streams over depth K, against double sums of the
 * original f32 weights; columns past out_cols must keep their NaN. ACCUMULATE starts from known
 * outputs and must give 0.75 of them plus the sums. */
static void check_tile(const moira_cpu_gemm_kernels_t *kernels, bool bf16, int rows, int streams,
                       int64_t K, moira_cpu_epilogue_t epilogue, uint64_t seed) {
    int64_t n_rows = 16 * streams - 3; /* a partial last panel */
    int64_t padded = (K + 1) / 2 * 2;
    float *w = bf16_exact((size_t)(n_rows * K), seed, -0.5f, 0.5f);
    float *x = uniform((size_t)(rows * padded), seed + 1, -1, 1);
    uint16_t *hi = xcalloc((size_t)(rows * padded), 2), *lo = xcalloc((size_t)(rows * padded), 2);
    for (int r = 0; r < rows; r++) {
        for (int64_t k = K; k < padded; k++)
            x[r * padded + k] = 0;
        kernels->split_bf16(x + r * padded, K, hi + r * padded, lo + r * padded);
    }
    int64_t depth = 0;
    void *panels = make_panels(w, n_rows, K, streams, bf16, &depth);
    int out_width = epilogue == MOIRA_CPU_EPILOGUE_SWIGLU ? 8 * streams : 16 * streams;
    int out_cols = out_width - 2;
    int64_t stride = out_width + 5;
    float *out = xcalloc((size_t)(rows * stride), sizeof(float));
    float *before = uniform((size_t)(rows * stride), seed + 2, -1, 1);
    bool accumulate = epilogue == MOIRA_CPU_EPILOGUE_ACCUMULATE;
    for (int64_t i = 0; i < rows * stride; i++)
        out[i] = accumulate && i % stride < out_cols ? before[i] : NAN;
    moira_cpu_tile_t tile = {.rows = rows,
                             .streams = streams,
                             .depth = depth,
                             .out = out,
                             .out_stride = stride,
                             .out_cols = out_cols,
                             .epilogue = epilogue,
                             .beta = 0.75f};
    bool split = bf16 && kernels->bf16_input != MOIRA_CPU_BF16_INPUT_F32;
    for (int r = 0; r < rows; r++) {
        tile.x[r] = split ? (const void *)(hi + r * padded) : (const void *)(x + r * padded);
        tile.x_lo[r] = lo + r * padded;
    }
    for (int s = 0; s < streams; s++)
        tile.panels[s] = (unsigned char *)panels + (size_t)s * (size_t)depth * 64;
    (bf16 ? kernels->bf16 : kernels->f32)(&tile);
    /* bf16 math rounds the activations to bf16 (to nearest even) and is otherwise f32-exact:
     * the reference rounds them the same way, through the runtime's conversion. */
    if (bf16 && kernels->bf16_input == MOIRA_CPU_BF16_INPUT_ROUNDED)
        moira_round_through(MOIRA_DTYPE_BF16, x, (size_t)(rows * padded));

    double *ref = xcalloc((size_t)(rows * out_cols), sizeof(double));
    float *got = xcalloc((size_t)(rows * out_cols), sizeof(float));
    bool margins_kept = true;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < out_cols; c++) {
            double value;
            if (epilogue == MOIRA_CPU_EPILOGUE_SWIGLU) {
                int64_t gate = 32 * (c / 16) + c % 16, up = gate + 16;
                double g = gate < n_rows ? ref_dot(x + r * padded, w + gate * K, K) : 0;
                double u = up < n_rows ? ref_dot(x + r * padded, w + up * K, K) : 0;
                value = ref_swiglu(g, u);
            } else {
                value = c < n_rows ? ref_dot(x + r * padded, w + c * K, K) : 0;
            }
            ref[r * out_cols + c] = value + (accumulate ? 0.75 * before[r * stride + c] : 0);
            got[r * out_cols + c] = out[r * stride + c];
        }
        for (int64_t c = out_cols; c < stride; c++)
            margins_kept &= isnan(out[r * stride + c]);
    }
    double nmse = moira_test_nmse(got, ref, (size_t)(rows * out_cols));
    CHECK_MSG(nmse <= F32_LIMIT && margins_kept,
              "%s %s%s tile %dx%d K=%lld %s: NMSE %.3g, margins %s",
              moira_cpu_isa_name(kernels->isa), bf16 ? "bf16" : "f32",
              kernels->bf16_input == MOIRA_CPU_BF16_INPUT_ROUNDED ? " (bf16 math)" : "", rows,
              streams, (long long)K,
              epilogue == MOIRA_CPU_EPILOGUE_SWIGLU ? "swiglu"
              : accumulate                          ? "accumulate"
                                                    : "store",
              nmse, margins_kept ? "kept" : "written");
    free(w), free(x), free(hi), free(lo), free(panels), free(out), free(before), free(ref),
        free(got);
}

/* Every tile shape (1-6 rows, 1-4 streams) at depths 1, 16 and 37 reaches every edge path of
 * each level. */
static void test_tiles(void) {
    const int64_t depths[] = {1, 16, 37};
    uint64_t seed = 100;
    for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++) {
        if (!testing_isa(isa)) continue;
        /* The level's own table, and on AVX512_BF16 also the bf16-math table. */
        const moira_cpu_gemm_kernels_t *tables[2] = {moira_cpu_gemm_kernels((moira_cpu_isa_t)isa),
                                                     NULL};
        if (isa == MOIRA_CPU_ISA_AVX512_BF16) tables[1] = &moira_cpu_gemm_avx512_bf16_rounded;
        CHECK(tables[0]->isa == (moira_cpu_isa_t)isa);
        for (int t = 0; t < 2 && tables[t]; t++)
            for (int bf16 = t; bf16 < 2; bf16++)
                for (int rows = 1; rows <= MOIRA_CPU_TILE_ROWS; rows++)
                    for (int streams = 1; streams <= MOIRA_CPU_TILE_STREAMS; streams++)
                        for (int d = 0; d < 3; d++) {
                            check_tile(tables[t], bf16, rows, streams, depths[d],
                                       MOIRA_CPU_EPILOGUE_STORE, seed++);
                            check_tile(tables[t], bf16, rows, streams, depths[d],
                                       MOIRA_CPU_EPILOGUE_ACCUMULATE, seed++);
                            if (streams % 2 == 0)
                                check_tile(tables[t], bf16, rows, streams, depths[d],
                                           MOIRA_CPU_EPILOGUE_SWIGLU, seed++);
                        }
    }
}

/* ---- The grouped expert FFN through cpu:0 ---- */

typedef struct ffn_case {
    int64_t T, k, D, I;
    int E;
    const char *name;
} ffn_case_t;

/* Routing with idle experts on purpose: token t's j-th choice is (3t + 2j) mod E over the even
 * experts when E > 4, so odd experts get no rows. */
static void route(const ffn_case_t *c, int32_t *idx) {
    int usable = c->E > 4 ? (c->E + 1) / 2 : c->E;
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t j = 0; j < c->k; j++) {
            int pick = (int)((3 * t + 2 * j) % usable);
            idx[t * c->k + j] = c->E > 4 ? 2 * pick : pick;
        }
}

/* ref[p] = FFN_e(x[token of p]) in double for sorted rows p < rows (e the row's expert). */
static void ref_ffn(const ffn_case_t *c, const float *x, const float *w1, const float *w3,
                    const float *w2, const int32_t *idx, const int32_t *sorted, int32_t rows,
                    double *ref) {
    double *h = xcalloc((size_t)c->I, sizeof(double));
    for (int32_t p = 0; p < rows; p++) {
        int64_t e = idx[sorted[p]];
        const float *xt = x + sorted[p] / c->k * c->D;
        for (int64_t i = 0; i < c->I; i++)
            h[i] = ref_swiglu(ref_dot(xt, w1 + (e * c->I + i) * c->D, c->D),
                              ref_dot(xt, w3 + (e * c->I + i) * c->D, c->D));
        for (int64_t d = 0; d < c->D; d++) {
            double sum = 0;
            for (int64_t i = 0; i < c->I; i++)
                sum += w2[(e * c->D + d) * c->I + i] * h[i];
            ref[p * c->D + d] = sum;
        }
    }
    free(h);
}

/* One case through MOE_FFN on cpu:0 against the double reference, then again after W2 is
 * rewritten, which must drop the stale packed copy. */
static void check_ffn(const ffn_case_t *c, moira_dtype_t dtype, const char *isa, double limit) {
    int64_t A = c->T * c->k;
    float *x = uniform((size_t)(c->T * c->D), 200, -1, 1);
    float *w1 = bf16_exact((size_t)(c->E * c->I * c->D), 201, -0.3f, 0.3f);
    float *w3 = bf16_exact((size_t)(c->E * c->I * c->D), 202, -0.3f, 0.3f);
    float *w2 = bf16_exact((size_t)(c->E * c->D * c->I), 203, -0.3f, 0.3f);
    int32_t *idx = xcalloc((size_t)A, sizeof(int32_t));
    route(c, idx);
    /* Reference dispatch: expert by expert, assignments in order. */
    int32_t *offsets = xcalloc((size_t)c->E + 1, sizeof(int32_t));
    int32_t *sorted = xcalloc((size_t)A, sizeof(int32_t));
    int32_t row = 0;
    for (int e = 0; e < c->E; e++) {
        offsets[e] = row;
        for (int64_t a = 0; a < A; a++)
            if (idx[a] == e) sorted[row++] = (int32_t)a;
    }
    offsets[c->E] = row;
    double *ref = xcalloc((size_t)(A * c->D), sizeof(double));
    ref_ffn(c, x, w1, w3, w2, idx, sorted, row, ref);
    moira_dtensor_t v1 = weight_tensor(dtype, w1, c->E, c->I, c->D, 0);
    moira_dtensor_t v3 = weight_tensor(dtype, w3, c->E, c->I, c->D, 0);
    moira_dtensor_t v2 = weight_tensor(dtype, w2, c->E, c->D, c->I, 0);
    moira_dtensor_t weights[3] = {v1, v3, v2};
    CHECK_OK(moira_device_prepare_weights(device, MOIRA_OP_MOE_FFN, weights, 3));
    float *nan = xcalloc((size_t)(A * c->D), sizeof(float));
    for (int64_t i = 0; i < A * c->D; i++)
        nan[i] = NAN;
    moira_dtensor_t xv =
        tensor(buffer_with(x, (size_t)(c->T * c->D) * 4), 0, MOIRA_DTYPE_F32, 2, c->T, c->D, 0);
    moira_dtensor_t ov =
        tensor(buffer_with(offsets, (size_t)(c->E + 1) * 4), 0, MOIRA_DTYPE_I32, 1, c->E + 1, 0, 0);
    moira_dtensor_t sv = tensor(buffer_with(sorted, (size_t)A * 4), 0, MOIRA_DTYPE_I32, 1, A, 0, 0);
    moira_dtensor_t ys =
        tensor(buffer_with(nan, (size_t)(A * c->D) * 4), 0, MOIRA_DTYPE_F32, 2, A, c->D, 0);
    moira_moe_ffn_params_t params = {.top_k = (int32_t)c->k};
    moira_dtensor_t operands[7] = {xv, v1, v3, v2, ov, sv, ys};
    CHECK_OK(launch(MOIRA_OP_MOE_FFN, &params, sizeof(params), operands, 7));
    float *got = read_floats(ys.buffer, 0, (size_t)(A * c->D));
    double nmse = moira_test_nmse(got, ref, (size_t)(row * c->D));
    bool tail = true;
    for (int64_t i = (int64_t)row * c->D; i < A * c->D; i++)
        tail &= isnan(got[i]);
    CHECK_MSG(nmse <= limit && tail, "moe_ffn %s %s %s: NMSE %.3g%s", c->name,
              moira_dtype_name(dtype), isa, nmse, tail ? "" : ", wrote past the last row");

    /* New weights written into the same buffer must be the ones the next launch uses. */
    float *w2b = bf16_exact((size_t)(c->E * c->D * c->I), 204, -0.3f, 0.3f);
    unsigned char *bytes = xcalloc((size_t)(c->E * c->D * c->I), moira_dtype_size(dtype));
    moira_convert_from_f32(dtype, w2b, bytes, (size_t)(c->E * c->D * c->I));
    CHECK_OK(moira_queue_write(queue, v2.buffer, 0, bytes,
                               (size_t)(c->E * c->D * c->I) * moira_dtype_size(dtype)));
    CHECK_OK(launch(MOIRA_OP_MOE_FFN, &params, sizeof(params), operands, 7));
    float *again = read_floats(ys.buffer, 0, (size_t)(A * c->D));
    ref_ffn(c, x, w1, w3, w2b, idx, sorted, row, ref);
    nmse = moira_test_nmse(again, ref, (size_t)(row * c->D));
    CHECK_MSG(nmse <= limit, "moe_ffn %s %s %s after rewriting W2: NMSE %.3g", c->name,
              moira_dtype_name(dtype), isa, nmse);
    moira_dtensor_t all[] = {v1, v3, v2, xv, ov, sv, ys};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        moira_buffer_free(all[i].buffer);
    free(x), free(w1), free(w3), free(w2), free(w2b), free(bytes), free(idx), free(offsets);
    free(sorted), free(ref), free(nan), free(got), free(again);
}

/* Each level is forced through MOIRA_CPU_ISA so the device path of every level is tested, not
 * only the best one. */
static void test_grouped_ffn(void) {
    const ffn_case_t cases[] = {
        {.T = 1, .k = 2, .D = 48, .I = 32, .E = 8, .name = "1 token"},
        {.T = 23, .k = 3, .D = 33, .I = 19, .E = 9, .name = "odd sizes, idle experts"},
        {.T = 40, .k = 2, .D = 64, .I = 70, .E = 3, .name = "27-row experts"},
    };
    for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++) {
        if (!testing_isa(isa)) continue;
        const char *name = moira_cpu_isa_name((moira_cpu_isa_t)isa);
        setenv("MOIRA_CPU_ISA", name, 1);
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            check_ffn(&cases[c], MOIRA_DTYPE_F32, name, F32_LIMIT);
            check_ffn(&cases[c], MOIRA_DTYPE_BF16, name, F32_LIMIT);
        }
        /* bf16 math (MOIRA_CPU_BF16_MATH=bf16) is held to DESIGN.md's bf16 limit for bf16
         * weights; f32 weights must stay f32-exact. */
        if (isa == MOIRA_CPU_ISA_AVX512_BF16) {
            setenv("MOIRA_CPU_BF16_MATH", "bf16", 1);
            for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
                check_ffn(&cases[c], MOIRA_DTYPE_F32, "avx512_bf16 (bf16 math)", F32_LIMIT);
                check_ffn(&cases[c], MOIRA_DTYPE_BF16, "avx512_bf16 (bf16 math)",
                          moira_precision_nmse_limit(MOIRA_DTYPE_BF16));
            }
            unsetenv("MOIRA_CPU_BF16_MATH");
        }
    }
    unsetenv("MOIRA_CPU_ISA");
}

/* ---- Blocked MLA attention through cpu:0 ---- */

/* softmax(scores) over visible keys, in double; zeros when none is visible. */
static void ref_softmax_sum(const double *scores, const bool *visible, int64_t n,
                            const float *values, int64_t stride, int64_t width, double *out) {
    double max = -INFINITY, sum = 0;
    for (int64_t s = 0; s < n; s++)
        if (visible[s] && scores[s] > max) max = scores[s];
    for (int64_t j = 0; j < width; j++)
        out[j] = 0;
    for (int64_t s = 0; s < n; s++) {
        if (!visible[s]) continue;
        double p = exp(scores[s] - max);
        sum += p;
        for (int64_t j = 0; j < width; j++)
            out[j] += p * values[s * stride + j];
    }
    for (int64_t j = 0; j < width; j++)
        out[j] = sum > 0 ? out[j] / sum : 0;
}

/* Decode over a 700-row cache (several chunks and key blocks) with 20 heads (two query blocks),
 * L = 40 and rope 6 (vector tails); tokens at positions 0, 299 and past the end. */
static void check_decode(const char *isa) {
    const int64_t H = 20, L = 40, R = 6, NOPE = 8, S = 700, T = 3;
    const int32_t positions[3] = {0, 299, 5000};
    moira_mla_params_t p = {.n_heads = (int32_t)H,
                            .nope_dim = (int32_t)NOPE,
                            .rope_dim = (int32_t)R,
                            .v_dim = 8,
                            .kv_lora_rank = (int32_t)L,
                            .cache_len = (int32_t)S,
                            .scale = 0.3f};
    int64_t QW = H * (NOPE + R);
    float *q_lat = uniform((size_t)(T * H * L), 300, -1, 1);
    float *q = uniform((size_t)(T * QW), 301, -1, 1);
    float *c = uniform((size_t)(S * L), 302, -1, 1);
    float *k_pe = uniform((size_t)(S * R), 303, -1, 1);
    double *ref = xcalloc((size_t)(T * H * L), sizeof(double));
    double *scores = xcalloc((size_t)S, sizeof(double));
    bool *visible = xcalloc((size_t)S, sizeof(bool));
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            for (int64_t s = 0; s < S; s++) {
                visible[s] = s <= positions[t];
                scores[s] = (ref_dot(q_lat + (t * H + h) * L, c + s * L, L) +
                             ref_dot(q + t * QW + h * (NOPE + R) + NOPE, k_pe + s * R, R)) *
                            p.scale;
            }
            ref_softmax_sum(scores, visible, S, c, L, L, ref + (t * H + h) * L);
        }
    moira_dtensor_t operands[6] = {
        tensor(buffer_with(q_lat, (size_t)(T * H * L) * 4), 0, MOIRA_DTYPE_F32, 2, T, H * L, 0),
        tensor(buffer_with(q, (size_t)(T * QW) * 4), 0, MOIRA_DTYPE_F32, 2, T, QW, 0),
        tensor(buffer_with(c, (size_t)(S * L) * 4), 0, MOIRA_DTYPE_F32, 2, S, L, 0),
        tensor(buffer_with(k_pe, (size_t)(S * R) * 4), 0, MOIRA_DTYPE_F32, 2, S, R, 0),
        tensor(buffer_with(positions, sizeof(positions)), 0, MOIRA_DTYPE_I32, 1, T, 0, 0),
        tensor(buffer_with(NULL, (size_t)(T * H * L) * 4), 0, MOIRA_DTYPE_F32, 2, T, H * L, 0)};
    CHECK_OK(launch(MOIRA_OP_MLA_DECODE_ATTENTION, &p, sizeof(p), operands, 6));
    float *got = read_floats(operands[5].buffer, 0, (size_t)(T * H * L));
    double nmse = moira_test_nmse(got, ref, (size_t)(T * H * L));
    CHECK_MSG(nmse <= F32_LIMIT, "mla_decode_attention %s: NMSE %.3g", isa, nmse);
    for (int i = 0; i < 6; i++)
        moira_buffer_free(operands[i].buffer);
    free(q_lat), free(q), free(c), free(k_pe), free(ref), free(scores), free(visible), free(got);
}

/* Prefill over 45 tokens (three query blocks, two key blocks) at positions with repeats and an
 * earliest token that sees only its equals. */
static void check_prefill(const char *isa) {
    const int64_t H = 3, NOPE = 12, R = 6, V = 10, T = 45;
    moira_mla_params_t p = {.n_heads = (int32_t)H,
                            .nope_dim = (int32_t)NOPE,
                            .rope_dim = (int32_t)R,
                            .v_dim = (int32_t)V,
                            .kv_lora_rank = 16,
                            .scale = 0.4f};
    int64_t QW = H * (NOPE + R), KW = H * (NOPE + V);
    int32_t positions[45];
    for (int64_t t = 0; t < T; t++)
        positions[t] = (int32_t)((t * 7) % 30);
    float *q = uniform((size_t)(T * QW), 400, -1, 1);
    float *kv = uniform((size_t)(T * KW), 401, -1, 1);
    float *k_pe = uniform((size_t)(T * R), 402, -1, 1);
    double *ref = xcalloc((size_t)(T * H * V), sizeof(double));
    double scores[45];
    bool visible[45];
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            for (int64_t s = 0; s < T; s++) {
                visible[s] = positions[s] <= positions[t];
                scores[s] =
                    (ref_dot(q + t * QW + h * (NOPE + R), kv + s * KW + h * (NOPE + V), NOPE) +
                     ref_dot(q + t * QW + h * (NOPE + R) + NOPE, k_pe + s * R, R)) *
                    p.scale;
            }
            ref_softmax_sum(scores, visible, T, kv + h * (NOPE + V) + NOPE, KW, V,
                            ref + (t * H + h) * V);
        }
    moira_dtensor_t operands[5] = {
        tensor(buffer_with(q, (size_t)(T * QW) * 4), 0, MOIRA_DTYPE_F32, 2, T, QW, 0),
        tensor(buffer_with(kv, (size_t)(T * KW) * 4), 0, MOIRA_DTYPE_F32, 2, T, KW, 0),
        tensor(buffer_with(k_pe, (size_t)(T * R) * 4), 0, MOIRA_DTYPE_F32, 2, T, R, 0),
        tensor(buffer_with(positions, sizeof(positions)), 0, MOIRA_DTYPE_I32, 1, T, 0, 0),
        tensor(buffer_with(NULL, (size_t)(T * H * V) * 4), 0, MOIRA_DTYPE_F32, 2, T, H * V, 0)};
    CHECK_OK(launch(MOIRA_OP_MLA_ATTENTION, &p, sizeof(p), operands, 5));
    float *got = read_floats(operands[4].buffer, 0, (size_t)(T * H * V));
    double nmse = moira_test_nmse(got, ref, (size_t)(T * H * V));
    CHECK_MSG(nmse <= F32_LIMIT, "mla_attention %s: NMSE %.3g", isa, nmse);
    for (int i = 0; i < 5; i++)
        moira_buffer_free(operands[i].buffer);
    free(q), free(kv), free(k_pe), free(ref), free(got);
}

/* Decode and prefill attention with each level forced. */
static void test_attention(void) {
    for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++) {
        if (!testing_isa(isa)) continue;
        const char *name = moira_cpu_isa_name((moira_cpu_isa_t)isa);
        setenv("MOIRA_CPU_ISA", name, 1);
        check_decode(name);
        check_prefill(name);
    }
    unsetenv("MOIRA_CPU_ISA");
}

/* ---- Dense projections (LINEAR, SWIGLU, MLA_ABSORB_OUT) on packed panels through cpu:0 ---- */

/* A [rows, cols] weight of `dtype` holding `values` 64 bytes into its buffer; *seen gets what
 * the device computes with: the dtype's rounding, for fp8 the code times a block scale that
 * differs from one 128x128 block to the next (scales stored after the weights). */
static moira_dtensor_t dense_weight(moira_dtype_t dtype, const float *values, int64_t rows,
                                    int64_t cols, float *seen) {
    size_t n = (size_t)(rows * cols), data = n * moira_dtype_size(dtype);
    int64_t scale_cols = (cols + 127) / 128, scale_rows = (rows + 127) / 128;
    size_t scale_offset = (64 + data + 3) / 4 * 4;
    size_t total = dtype == MOIRA_DTYPE_F8_E4M3
                       ? scale_offset + (size_t)(scale_rows * scale_cols) * sizeof(float)
                       : 64 + data;
    unsigned char *storage = xcalloc(total, 1);
    if (dtype == MOIRA_DTYPE_F8_E4M3) {
        float *scales = (float *)(storage + scale_offset);
        for (int64_t i = 0; i < scale_rows * scale_cols; i++)
            scales[i] = 0.002f * (float)(1 + i % scale_cols + 3 * (i / scale_cols));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                float scale = scales[r / 128 * scale_cols + c / 128];
                uint8_t code = moira_f32_to_fp8_e4m3(values[r * cols + c] / scale);
                storage[64 + (size_t)(r * cols + c)] = code;
                seen[r * cols + c] = moira_fp8_e4m3_to_f32(code) * scale;
            }
    } else {
        moira_convert_from_f32(dtype, values, storage + 64, n);
        moira_convert_to_f32(dtype, storage + 64, seen, n);
    }
    moira_dtensor_t t = tensor(buffer_with(storage, total), 64, dtype, 2, rows, cols, 0);
    t.scale_offset = dtype == MOIRA_DTYPE_F8_E4M3 ? scale_offset : 0;
    free(storage);
    return t;
}

/* rows x cols f32 `values` as a column slice starting at column `col0` of rows `stride` wide,
 * the rest of each row holding `gap` (a slice when stride > cols, else a plain matrix). */
static moira_dtensor_t slice_of(const float *values, int64_t rows, int64_t cols, int64_t stride,
                                int64_t col0, float gap) {
    float *wide = xcalloc((size_t)(rows * stride), sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < stride; c++)
            wide[r * stride + c] = c >= col0 && c < col0 + cols ? values[r * cols + c - col0] : gap;
    moira_dtensor_t t = tensor(buffer_with(wide, (size_t)(rows * stride) * 4), (size_t)col0 * 4,
                               MOIRA_DTYPE_F32, 2, rows, cols, 0);
    t.row_stride = stride;
    free(wide);
    return t;
}

/* The slice's values back, and whether every element outside it still holds NaN. */
static float *read_slice(const moira_dtensor_t *t, int64_t col0, bool *out_gaps_nan) {
    int64_t rows = t->shape[0], cols = t->shape[1], stride = t->row_stride;
    float *wide = read_floats(t->buffer, 0, (size_t)(rows * stride));
    float *values = xcalloc((size_t)(rows * cols), sizeof(float));
    *out_gaps_nan = true;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < stride; c++) {
            if (c >= col0 && c < col0 + cols)
                values[r * cols + c - col0] = wide[r * stride + c];
            else
                *out_gaps_nan &= isnan(wide[r * stride + c]);
        }
    free(wide);
    return values;
}

/* The instruction-set runs the dense tests go through: every level this CPU has (MOIRA_CPU_ISA
 * forced), and on AVX512_BF16 bf16 math too. */
typedef struct isa_run {
    const char *isa;
    bool bf16_math;
} isa_run_t;

static int isa_runs(isa_run_t runs[MOIRA_CPU_ISA_COUNT + 1]) {
    int n = 0;
    for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++) {
        if (!testing_isa(isa)) continue;
        runs[n++] = (isa_run_t){moira_cpu_isa_name((moira_cpu_isa_t)isa), false};
        if (isa == MOIRA_CPU_ISA_AVX512_BF16)
            runs[n++] = (isa_run_t){moira_cpu_isa_name((moira_cpu_isa_t)isa), true};
    }
    return n;
}

/* Forces one run's instruction set (and bf16 math). */
static void enter_run(const isa_run_t *run) {
    setenv("MOIRA_CPU_ISA", run->isa, 1);
    if (run->bf16_math)
        setenv("MOIRA_CPU_BF16_MATH", "bf16", 1);
    else
        unsetenv("MOIRA_CPU_BF16_MATH");
}

/* The limit a run's results are held to for weights of `dtype`: f32, except bf16 weights under
 * bf16 math. */
static double run_limit(const isa_run_t *run, moira_dtype_t dtype) {
    return run->bf16_math && dtype == MOIRA_DTYPE_BF16 ? moira_precision_nmse_limit(dtype)
                                                       : F32_LIMIT;
}

static const moira_dtype_t dense_dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_F16, MOIRA_DTYPE_BF16,
                                             MOIRA_DTYPE_F8_E4M3};

typedef struct linear_case {
    int64_t T, N, K;
    int64_t x_pad, y_pad; /* extra columns around the x and y slices; 0: contiguous */
    float beta;
} linear_case_t;

/* One LINEAR case in one dtype through every instruction-set run, against y0 * beta + x W^T in
 * double on the weights the device sees; the output's gaps must keep their NaN. */
static void check_linear(const linear_case_t *c, moira_dtype_t dtype, uint64_t seed) {
    int64_t T = c->T, N = c->N, K = c->K;
    float *w = uniform((size_t)(N * K), seed, -0.3f, 0.3f);
    float *seen = xcalloc((size_t)(N * K), sizeof(float));
    float *x = uniform((size_t)(T * K), seed + 1, -1, 1);
    float *y0 = uniform((size_t)(T * N), seed + 2, -1, 1);
    double *ref = xcalloc((size_t)(T * N), sizeof(double));
    moira_dtensor_t wv = dense_weight(dtype, w, N, K, seen);
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++)
            ref[t * N + n] = c->beta * (double)y0[t * N + n] + ref_dot(x + t * K, seen + n * K, K);
    int64_t x0 = c->x_pad ? 3 : 0, yc0 = c->y_pad ? 5 : 0;
    moira_dtensor_t xv = slice_of(x, T, K, K + c->x_pad, x0, 1e30f);
    moira_linear_params_t params = {.beta = c->beta};
    isa_run_t runs[MOIRA_CPU_ISA_COUNT + 1];
    for (int i = 0, n = isa_runs(runs); i < n; i++) {
        enter_run(&runs[i]);
        double limit = run_limit(&runs[i], dtype);
        moira_dtensor_t yv = slice_of(y0, T, N, N + c->y_pad, yc0, NAN);
        moira_dtensor_t operands[3] = {xv, wv, yv};
        CHECK_OK(launch(MOIRA_OP_LINEAR, &params, sizeof(params), operands, 3));
        bool gaps_nan = false;
        float *got = read_slice(&yv, yc0, &gaps_nan);
        double nmse = moira_test_nmse(got, ref, (size_t)(T * N));
        CHECK_MSG(nmse <= limit && gaps_nan,
                  "linear %s %s%s T=%lld N=%lld K=%lld beta %g: NMSE %.3g%s",
                  moira_dtype_name(dtype), runs[i].isa, runs[i].bf16_math ? " (bf16 math)" : "",
                  (long long)T, (long long)N, (long long)K, (double)c->beta, nmse,
                  gaps_nan ? "" : ", wrote outside its slice");
        free(got);
        moira_buffer_free(yv.buffer);
    }
    moira_buffer_free(xv.buffer);
    moira_buffer_free(wv.buffer);
    free(w), free(seen), free(x), free(y0), free(ref);
}

/* Decode batches of 1 to 8 tokens (one tile, or two for 7 and 8) on odd sizes with strided
 * x and y; a 67-token prefill whose f32 depth splits into two chunks; 300 tokens (two passes)
 * whose bf16 depth splits and whose K is odd (bf16 pairs padded). */
static void test_dense_linear(void) {
    uint64_t seed = 600;
    for (size_t d = 0; d < sizeof(dense_dtypes) / sizeof(*dense_dtypes); d++) {
        for (int64_t T = 1; T <= 8; T++) {
            linear_case_t c = {T, 37, 45, 11, 7, T % 2 ? 0.0f : 1.0f};
            check_linear(&c, dense_dtypes[d], seed += 3);
        }
        const linear_case_t prefill = {67, 130, 1100, 6, 9, 1.0f};
        const linear_case_t passes = {300, 21, 2101, 0, 0, 0.5f};
        check_linear(&prefill, dense_dtypes[d], seed += 3);
        check_linear(&passes, dense_dtypes[d], seed += 3);
    }
}

/* An fp8 weight's packed copy is made at upload (prepare_weights) and dropped when its scales
 * are rewritten: doubling every scale must double the next launch's output. */
static void test_dense_fp8_scales(void) {
    const int64_t T = 3, N = 40, K = 150;
    float *w = uniform((size_t)(N * K), 700, -0.3f, 0.3f);
    float *seen = xcalloc((size_t)(N * K), sizeof(float));
    float *x = uniform((size_t)(T * K), 701, -1, 1);
    moira_dtensor_t wv = dense_weight(MOIRA_DTYPE_F8_E4M3, w, N, K, seen);
    CHECK_OK(moira_device_prepare_weights(device, MOIRA_OP_LINEAR, &wv, 1));
    moira_cpu_packed_t *packed = NULL;
    CHECK_OK(moira_cpu_packed_acquire_widened(pool, &wv, &packed));
    CHECK_MSG(packed && packed->panel_dtype == MOIRA_DTYPE_F32 && packed->scale_bytes == 4 * 2,
              "fp8 weight not packed into f32 panels at upload");
    moira_cpu_packed_release(packed);
    unsetenv("MOIRA_CPU_ISA");
    unsetenv("MOIRA_CPU_BF16_MATH");
    moira_dtensor_t xv =
        tensor(buffer_with(x, (size_t)(T * K) * 4), 0, MOIRA_DTYPE_F32, 2, T, K, 0);
    moira_dtensor_t yv =
        tensor(buffer_with(NULL, (size_t)(T * N) * 4), 0, MOIRA_DTYPE_F32, 2, T, N, 0);
    moira_linear_params_t params = {.beta = 0};
    double *ref = xcalloc((size_t)(T * N), sizeof(double));
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            float scales[2];
            CHECK_OK(moira_queue_read(queue, wv.buffer, wv.scale_offset, scales, sizeof(scales)));
            CHECK_OK(moira_queue_finish(queue));
            scales[0] *= 2, scales[1] *= 2;
            CHECK_OK(moira_queue_write(queue, wv.buffer, wv.scale_offset, scales, sizeof(scales)));
            CHECK_OK(moira_queue_finish(queue)); /* `scales` goes out of scope */
        }
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++)
                ref[t * N + n] = (round + 1) * ref_dot(x + t * K, seen + n * K, K);
        moira_dtensor_t operands[3] = {xv, wv, yv};
        CHECK_OK(launch(MOIRA_OP_LINEAR, &params, sizeof(params), operands, 3));
        float *got = read_floats(yv.buffer, 0, (size_t)(T * N));
        double nmse = moira_test_nmse(got, ref, (size_t)(T * N));
        CHECK_MSG(nmse <= F32_LIMIT, "fp8 linear, %s scales: NMSE %.3g",
                  round ? "doubled" : "first", nmse);
        free(got);
    }
    moira_buffer_free(wv.buffer), moira_buffer_free(xv.buffer), moira_buffer_free(yv.buffer);
    free(w), free(seen), free(x), free(ref);
}

/* SWIGLU's fused path (W1 and W3 of one panel type) in every dtype, and the separate path (W1
 * bf16, W3 f32: different panel types), against beta * y0 + W2 (silu(W1 x) * (W3 x)) in double. */
static void check_swiglu(int64_t T, const moira_dtype_t dtypes[3], float beta, uint64_t seed) {
    const int64_t D = 67, I = 45;
    int64_t sizes[3][2] = {{I, D}, {I, D}, {D, I}};
    float *w[3], *seen[3];
    moira_dtensor_t wv[3];
    for (int m = 0; m < 3; m++) {
        w[m] = uniform((size_t)(I * D), seed + (uint64_t)m, -0.3f, 0.3f);
        seen[m] = xcalloc((size_t)(I * D), sizeof(float));
        wv[m] = dense_weight(dtypes[m], w[m], sizes[m][0], sizes[m][1], seen[m]);
    }
    float *x = uniform((size_t)(T * D), seed + 3, -1, 1);
    float *y0 = uniform((size_t)(T * D), seed + 4, -1, 1);
    double *ref = xcalloc((size_t)(T * D), sizeof(double)), *h = xcalloc((size_t)I, sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < I; i++)
            h[i] = ref_swiglu(ref_dot(x + t * D, seen[0] + i * D, D),
                              ref_dot(x + t * D, seen[1] + i * D, D));
        for (int64_t d = 0; d < D; d++) {
            double sum = beta * (double)y0[t * D + d];
            for (int64_t i = 0; i < I; i++)
                sum += (double)seen[2][d * I + i] * h[i];
            ref[t * D + d] = sum;
        }
    }
    moira_dtensor_t xv =
        tensor(buffer_with(x, (size_t)(T * D) * 4), 0, MOIRA_DTYPE_F32, 2, T, D, 0);
    moira_swiglu_params_t params = {.beta = beta};
    isa_run_t runs[MOIRA_CPU_ISA_COUNT + 1];
    for (int r = 0, n = isa_runs(runs); r < n; r++) {
        enter_run(&runs[r]);
        double limit = F32_LIMIT;
        for (int m = 0; m < 3; m++)
            limit = run_limit(&runs[r], dtypes[m]) > limit ? run_limit(&runs[r], dtypes[m]) : limit;
        moira_dtensor_t yv =
            tensor(buffer_with(y0, (size_t)(T * D) * 4), 0, MOIRA_DTYPE_F32, 2, T, D, 0);
        moira_dtensor_t operands[5] = {xv, wv[0], wv[1], wv[2], yv};
        CHECK_OK(launch(MOIRA_OP_SWIGLU, &params, sizeof(params), operands, 5));
        float *got = read_floats(yv.buffer, 0, (size_t)(T * D));
        double nmse = moira_test_nmse(got, ref, (size_t)(T * D));
        CHECK_MSG(nmse <= limit, "swiglu %s/%s/%s %s%s T=%lld beta %g: NMSE %.3g",
                  moira_dtype_name(dtypes[0]), moira_dtype_name(dtypes[1]),
                  moira_dtype_name(dtypes[2]), runs[r].isa, runs[r].bf16_math ? " (bf16 math)" : "",
                  (long long)T, (double)beta, nmse);
        free(got);
        moira_buffer_free(yv.buffer);
    }
    for (int m = 0; m < 3; m++) {
        moira_buffer_free(wv[m].buffer);
        free(w[m]), free(seen[m]);
    }
    moira_buffer_free(xv.buffer);
    free(x), free(y0), free(ref), free(h);
}

/* Decode (1 and 8 tokens) and a prefill of 70, every dtype, plus the mixed-dtype fallback. */
static void test_dense_swiglu(void) {
    uint64_t seed = 800;
    for (size_t d = 0; d < sizeof(dense_dtypes) / sizeof(*dense_dtypes); d++) {
        moira_dtype_t same[3] = {dense_dtypes[d], dense_dtypes[d], dense_dtypes[d]};
        check_swiglu(1, same, 0.0f, seed += 5);
        check_swiglu(8, same, 1.0f, seed += 5);
        check_swiglu(70, same, 0.0f, seed += 5);
    }
    const moira_dtype_t mixed[3] = {MOIRA_DTYPE_BF16, MOIRA_DTYPE_F32, MOIRA_DTYPE_F16};
    check_swiglu(5, mixed, 1.0f, seed += 5);
}

/* MLA_ABSORB_OUT with heads whose V rows start on a panel (nope 16, v 16: the packed path) and
 * with ones that do not (nope 12, v 10: rows widened one by one), latent 37 (odd). */
static void check_absorb_out(int32_t nope, int32_t v, int64_t T, moira_dtype_t dtype,
                             uint64_t seed) {
    const int64_t H = 3, L = 37, B = H * (nope + v);
    moira_mla_params_t p = {.n_heads = (int32_t)H,
                            .nope_dim = nope,
                            .rope_dim = 8,
                            .v_dim = v,
                            .kv_lora_rank = (int32_t)L,
                            .scale = 1.0f};
    float *w = uniform((size_t)(B * L), seed, -0.3f, 0.3f);
    float *seen = xcalloc((size_t)(B * L), sizeof(float));
    float *o_lat = uniform((size_t)(T * H * L), seed + 1, -1, 1);
    double *ref = xcalloc((size_t)(T * H * v), sizeof(double));
    moira_dtensor_t wv = dense_weight(dtype, w, B, L, seen);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < v; j++)
                ref[(t * H + h) * v + j] =
                    ref_dot(o_lat + (t * H + h) * L, seen + (h * (nope + v) + nope + j) * L, L);
    moira_dtensor_t ov =
        tensor(buffer_with(o_lat, (size_t)(T * H * L) * 4), 0, MOIRA_DTYPE_F32, 2, T, H * L, 0);
    isa_run_t runs[MOIRA_CPU_ISA_COUNT + 1];
    for (int r = 0, n = isa_runs(runs); r < n; r++) {
        enter_run(&runs[r]);
        double limit = run_limit(&runs[r], dtype);
        moira_dtensor_t out =
            tensor(buffer_with(NULL, (size_t)(T * H * v) * 4), 0, MOIRA_DTYPE_F32, 2, T, H * v, 0);
        moira_dtensor_t operands[3] = {ov, wv, out};
        CHECK_OK(launch(MOIRA_OP_MLA_ABSORB_OUT, &p, sizeof(p), operands, 3));
        float *got = read_floats(out.buffer, 0, (size_t)(T * H * v));
        double nmse = moira_test_nmse(got, ref, (size_t)(T * H * v));
        CHECK_MSG(nmse <= limit, "mla_absorb_out nope %d v %d %s %s%s T=%lld: NMSE %.3g", nope, v,
                  moira_dtype_name(dtype), runs[r].isa, runs[r].bf16_math ? " (bf16 math)" : "",
                  (long long)T, nmse);
        free(got);
        moira_buffer_free(out.buffer);
    }
    moira_buffer_free(wv.buffer), moira_buffer_free(ov.buffer);
    free(w), free(seen), free(o_lat), free(ref);
}

/* Both head layouts at 1 and 5 tokens, bf16 and fp8. */
static void test_dense_absorb_out(void) {
    check_absorb_out(16, 16, 1, MOIRA_DTYPE_BF16, 900);
    check_absorb_out(16, 16, 5, MOIRA_DTYPE_F8_E4M3, 910);
    check_absorb_out(12, 10, 5, MOIRA_DTYPE_BF16, 920);
}

/* With no argument every level this CPU has is tested; with a level's name (portable, avx2,
 * avx512, avx512_bf16) only that one, and the test is skipped (77) where the CPU lacks it, so
 * CTest shows which levels this machine really covered. */
int main(int argc, char **argv) {
    if (argc > 1) {
        for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++)
            if (!strcmp(argv[1], moira_cpu_isa_name((moira_cpu_isa_t)isa))) only_isa = isa;
        if (only_isa < 0) {
            fprintf(stderr, "test_cpu_simd: unknown instruction set '%s'\n", argv[1]);
            return 2;
        }
        if (!moira_cpu_isa_supported((moira_cpu_isa_t)only_isa)) {
            printf("test_cpu_simd: this CPU has no %s, skipped\n", argv[1]);
            return 77;
        }
    }
    CHECK_OK(moira_runtime_init());
    CHECK_OK(moira_device_find("cpu:0", &device));
    if (!device) return moira_test_finish("test_cpu_simd");
    CHECK_OK(moira_queue_create(device, &queue));
    CHECK_OK(moira_threadpool_create(2, -1, &pool));
    printf("best instruction set here: %s\n", moira_cpu_isa_name(moira_cpu_isa_best()));
    for (int isa = 0; isa < MOIRA_CPU_ISA_COUNT; isa++)
        if (!moira_cpu_isa_supported((moira_cpu_isa_t)isa))
            printf("  %s: not supported by this CPU, not tested\n",
                   moira_cpu_isa_name((moira_cpu_isa_t)isa));
    if (only_isa < 0) test_packing();
    test_tiles();
    test_grouped_ffn();
    test_attention();
    test_dense_linear();
    test_dense_swiglu();
    test_dense_absorb_out();
    unsetenv("MOIRA_CPU_ISA");
    unsetenv("MOIRA_CPU_BF16_MATH");
    if (only_isa < 0) test_dense_fp8_scales();
    moira_threadpool_destroy(pool);
    moira_queue_destroy(queue);
    moira_runtime_shutdown();
    return moira_test_finish("test_cpu_simd");
}

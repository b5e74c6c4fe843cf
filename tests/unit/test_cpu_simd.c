/* The cpu backend's SIMD paths against independent double-precision references: the packed
 * panel layout, every GEMM tile shape of every instruction set this CPU runs, the grouped expert
 * FFN and the blocked MLA attention through cpu:0 with each instruction set forced
 * (MOIRA_CPU_ISA), and the lifetime of packed weight copies (built once, dropped when their
 * window is written).
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
 * original f32 weights; columns past out_cols must keep their NaN. */
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
    for (int64_t i = 0; i < rows * stride; i++)
        out[i] = NAN;
    moira_cpu_tile_t tile = {.rows = rows,
                             .streams = streams,
                             .depth = depth,
                             .out = out,
                             .out_stride = stride,
                             .out_cols = out_cols,
                             .epilogue = epilogue};
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
            ref[r * out_cols + c] = value;
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
              streams, (long long)K, epilogue == MOIRA_CPU_EPILOGUE_SWIGLU ? "swiglu" : "store",
              nmse, margins_kept ? "kept" : "written");
    free(w), free(x), free(hi), free(lo), free(panels), free(out), free(ref), free(got);
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
    moira_threadpool_destroy(pool);
    moira_queue_destroy(queue);
    moira_runtime_shutdown();
    return moira_test_finish("test_cpu_simd");
}

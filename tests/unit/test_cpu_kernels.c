/* The cpu backend's kernels, run through the real runtime (cpu:0, buffers, a queue), against
 * independent double-precision implementations written here.
 *
 * Weights are stored in every weight dtype; the references read the same rounded (for fp8:
 * dequantised with the same block scales) values, so only accumulation differs and every dtype
 * must reach the f32 limit of DESIGN.md §4. Sizes are odd on purpose (T = 1, 13, 70; D = 67;
 * fp8 N = 130, K = 200 straddling the 128-blocks), operands are column slices of wider rows
 * where ops/op.h allows, and outputs start as NaN so a kernel that reads what it should only
 * write is caught. The last part is a table of launches moira_op_validate must reject. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/device.h"
#include "runtime/tensor.h"
#include "tests/unit/testing.h"

#define F32_LIMIT 1e-6         /* NMSE, DESIGN.md §4 */
#define ELEMENTWISE_LIMIT 1e-7 /* elementwise ops with f32 math */

static moira_device_t *device;
static moira_queue_t *queue;

static const moira_dtype_t weight_dtypes[] = {MOIRA_DTYPE_F32, MOIRA_DTYPE_F16, MOIRA_DTYPE_BF16,
                                              MOIRA_DTYPE_F8_E4M3};
#define N_WEIGHT_DTYPES (int)(sizeof(weight_dtypes) / sizeof(weight_dtypes[0]))

static const moira_dtensor_t ABSENT = {0};

/* ---- Host helpers ---- */

static void *xmalloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_cpu_kernels: out of memory\n");
        exit(1);
    }
    return p;
}

static float *random_floats(size_t n, uint64_t seed, float lo, float hi) {
    float *values = xmalloc(n * sizeof(float));
    moira_test_fill_uniform(values, n, seed, lo, hi);
    return values;
}

static double *doubles(size_t n) {
    return xmalloc(n * sizeof(double));
}

static void check_nmse(const char *what, const float *got, const double *ref, size_t n,
                       double limit) {
    double nmse = moira_test_nmse(got, ref, n);
    CHECK_MSG(nmse <= limit, "%s: NMSE %.3g above %.1g", what, nmse, limit);
}

/* ---- Device helpers: every buffer a test makes is freed by release_buffers ---- */

#define MAX_BUFFERS 256
static moira_buffer_t *buffers[MAX_BUFFERS];
static int n_buffers;

static moira_buffer_t *new_buffer(size_t bytes) {
    moira_buffer_t *buffer = NULL;
    moira_status_t status = moira_buffer_alloc(device, bytes, -1, &buffer);
    if (status || n_buffers == MAX_BUFFERS) {
        fprintf(stderr, "test_cpu_kernels: cannot allocate a buffer: %s\n",
                moira_status_message(status));
        exit(1);
    }
    buffers[n_buffers++] = buffer;
    return buffer;
}

static void release_buffers(void) {
    CHECK_OK(moira_queue_finish(queue));
    for (int i = 0; i < n_buffers; i++)
        moira_buffer_free(buffers[i]);
    n_buffers = 0;
}

static void write_now(moira_buffer_t *buffer, size_t offset, const void *src, size_t bytes) {
    CHECK_OK(moira_queue_write(queue, buffer, offset, src, bytes));
    CHECK_OK(moira_queue_finish(queue));
}

static void read_now(moira_buffer_t *buffer, size_t offset, void *dst, size_t bytes) {
    CHECK_OK(moira_queue_read(queue, buffer, offset, dst, bytes));
    CHECK_OK(moira_queue_finish(queue));
}

static moira_dtensor_t make_view(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype,
                                 int rank, const int64_t *shape, int64_t row_stride) {
    moira_dtensor_t view = {
        .buffer = buffer, .offset = offset, .dtype = dtype, .rank = rank, .row_stride = row_stride};
    for (int i = 0; i < rank; i++)
        view.shape[i] = shape[i];
    return view;
}

/* A contiguous tensor holding `data`, or zeros when `data` is NULL. */
static moira_dtensor_t upload(moira_dtype_t dtype, const void *data, int rank,
                              const int64_t *shape) {
    moira_dtensor_t view = make_view(NULL, 0, dtype, rank, shape, 0);
    size_t bytes = (size_t)moira_dtensor_numel(&view) * moira_dtype_size(dtype);
    view.buffer = new_buffer(bytes);
    void *zeros = data ? NULL : xmalloc(bytes);
    if (bytes) write_now(view.buffer, 0, data ? data : zeros, bytes);
    free(zeros);
    return view;
}

/* A contiguous f32 output pre-filled with NaN. */
static moira_dtensor_t nan_output(int rank, const int64_t *shape) {
    moira_dtensor_t view = make_view(NULL, 0, MOIRA_DTYPE_F32, rank, shape, 0);
    size_t n = (size_t)moira_dtensor_numel(&view);
    float *fill = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        fill[i] = NAN;
    view = upload(MOIRA_DTYPE_F32, fill, rank, shape);
    free(fill);
    return view;
}

/* [rows, cols] f32 as columns col0 .. col0+cols-1 of rows `stride` wide, the rest `fill`. */
static moira_dtensor_t upload_slice(const float *data, int64_t rows, int64_t cols, int64_t stride,
                                    int64_t col0, float fill) {
    float *wide = xmalloc((size_t)(rows * stride) * sizeof(float));
    for (int64_t i = 0; i < rows * stride; i++)
        wide[i] = fill;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            wide[r * stride + col0 + c] = data ? data[r * cols + c] : fill;
    moira_buffer_t *buffer = new_buffer((size_t)(rows * stride) * sizeof(float));
    write_now(buffer, 0, wide, (size_t)(rows * stride) * sizeof(float));
    free(wide);
    return make_view(buffer, (size_t)col0 * sizeof(float), MOIRA_DTYPE_F32, 2,
                     (int64_t[]){rows, cols}, stride);
}

/* Reads an f32 tensor (possibly strided) into a dense host array. */
static float *download(const moira_dtensor_t *tensor) {
    int64_t cols = tensor->shape[tensor->rank - 1];
    int64_t rows = cols ? moira_dtensor_numel(tensor) / cols : 0;
    int64_t stride = moira_dtensor_row_stride(tensor);
    float *dense = xmalloc((size_t)(rows * cols) * sizeof(float));
    size_t span = moira_dtensor_span_bytes(tensor);
    float *raw = xmalloc(span);
    if (span) read_now(tensor->buffer, tensor->offset, raw, span);
    for (int64_t r = 0; r < rows; r++)
        memcpy(dense + r * cols, raw + r * stride, (size_t)cols * sizeof(float));
    free(raw);
    return dense;
}

static int32_t *download_i32(const moira_dtensor_t *tensor) {
    size_t n = (size_t)moira_dtensor_numel(tensor);
    int32_t *values = xmalloc(n * sizeof(int32_t));
    if (n) read_now(tensor->buffer, tensor->offset, values, n * sizeof(int32_t));
    return values;
}

/* Whether the elements of a slice's buffer outside the slice still hold `fill`. */
static bool gaps_untouched(const moira_dtensor_t *slice, float fill) {
    int64_t stride = slice->row_stride, rows = slice->shape[0], cols = slice->shape[1];
    int64_t col0 = (int64_t)(slice->offset / sizeof(float));
    float *wide = xmalloc((size_t)(rows * stride) * sizeof(float));
    read_now(slice->buffer, 0, wide, (size_t)(rows * stride) * sizeof(float));
    bool untouched = true;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < stride; c++) {
            if (c >= col0 && c < col0 + cols) continue;
            float v = wide[r * stride + c];
            if (isnan(fill) ? !isnan(v) : v != fill) untouched = false;
        }
    free(wide);
    return untouched;
}

/* Stores `values` ([matrices, rows, cols]) as `dtype` behind a 64-byte offset and writes into
 * `seen` the f32 values a kernel reads back. fp8 gets per-block scales that make each 128x128
 * block use the full e4m3 range, with deliberately different magnitudes per block. */
static moira_dtensor_t upload_weight(moira_dtype_t dtype, int64_t matrices, int64_t rows,
                                     int64_t cols, const float *values, float *seen) {
    const size_t offset = 64;
    size_t n = (size_t)(matrices * rows * cols);
    size_t element = moira_dtype_size(dtype);
    int64_t scale_rows = (rows + 127) / 128, scale_cols = (cols + 127) / 128;
    size_t n_scales = (size_t)(matrices * scale_rows * scale_cols);
    size_t data_bytes = n * element;
    size_t scale_offset = (offset + data_bytes + 3) / 4 * 4;
    size_t total = dtype == MOIRA_DTYPE_F8_E4M3 ? scale_offset + n_scales * sizeof(float)
                                                : offset + data_bytes;
    unsigned char *storage = xmalloc(total);
    if (dtype != MOIRA_DTYPE_F8_E4M3) {
        moira_convert_from_f32(dtype, values, storage + offset, n);
        moira_convert_to_f32(dtype, storage + offset, seen, n);
    } else {
        float *scales = (float *)(storage + scale_offset);
        uint8_t *codes = storage + offset;
        for (int64_t m = 0; m < matrices; m++)
            for (int64_t br = 0; br < scale_rows; br++)
                for (int64_t bc = 0; bc < scale_cols; bc++) {
                    float block_gain = 0.25f * (float)(1 + br + 3 * bc + m);
                    float amax = 0;
                    for (int64_t r = br * 128; r < rows && r < (br + 1) * 128; r++)
                        for (int64_t c = bc * 128; c < cols && c < (bc + 1) * 128; c++) {
                            float v = fabsf(values[(m * rows + r) * cols + c]) * block_gain;
                            if (v > amax) amax = v;
                        }
                    float scale = amax > 0 ? amax / 448.0f : 1.0f;
                    scales[(m * scale_rows + br) * scale_cols + bc] = scale;
                    for (int64_t r = br * 128; r < rows && r < (br + 1) * 128; r++)
                        for (int64_t c = bc * 128; c < cols && c < (bc + 1) * 128; c++) {
                            size_t i = (size_t)((m * rows + r) * cols + c);
                            codes[i] = moira_f32_to_fp8_e4m3(values[i] * block_gain / scale);
                            seen[i] = moira_fp8_e4m3_to_f32(codes[i]) * scale;
                        }
                }
    }
    moira_buffer_t *buffer = new_buffer(total);
    write_now(buffer, 0, storage, total);
    free(storage);
    int64_t shape3[3] = {matrices, rows, cols};
    moira_dtensor_t view = matrices == 1 ? make_view(buffer, offset, dtype, 2, shape3 + 1, 0)
                                         : make_view(buffer, offset, dtype, 3, shape3, 0);
    view.scale_offset = dtype == MOIRA_DTYPE_F8_E4M3 ? scale_offset : 0;
    return view;
}

/* Packed experts always keep their leading E dimension, even for one expert. */
static moira_dtensor_t upload_experts(moira_dtype_t dtype, int64_t experts, int64_t rows,
                                      int64_t cols, const float *values, float *seen) {
    moira_dtensor_t view = upload_weight(dtype, experts, rows, cols, values, seen);
    if (view.rank == 2) {
        view.rank = 3;
        view.shape[2] = view.shape[1];
        view.shape[1] = view.shape[0];
        view.shape[0] = 1;
    }
    return view;
}

static moira_status_t run_op(int op, const void *params, size_t params_size,
                             const moira_dtensor_t *operands, int n_operands) {
    moira_op_launch_t launch = {
        .op = op, .params = params, .params_size = params_size, .n_operands = n_operands};
    memcpy(launch.operands, operands, (size_t)n_operands * sizeof(*operands));
    MOIRA_RETURN_IF_ERROR(moira_queue_launch(queue, &launch));
    return moira_queue_finish(queue);
}

#define OPERANDS(...)                                                                              \
    (moira_dtensor_t[]) {                                                                          \
        __VA_ARGS__                                                                                \
    }
#define RUN(op, params, ...)                                                                       \
    run_op(op, &(params), sizeof(params), OPERANDS(__VA_ARGS__),                                   \
           (int)(sizeof(OPERANDS(__VA_ARGS__)) / sizeof(moira_dtensor_t)))

/* ---- Double-precision references ---- */

static double ref_dot(const float *a, const float *b, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

static double ref_silu(double z) {
    return z / (1.0 + exp(-z));
}

/* y[t] = W2 (silu(W1 x[t]) * (W3 x[t])) for one expert's weights. */
static void ref_swiglu_row(const float *x, const float *w1, const float *w3, const float *w2,
                           int64_t hidden, int64_t inter, double *y) {
    double *h = doubles((size_t)inter);
    for (int64_t i = 0; i < inter; i++)
        h[i] = ref_silu(ref_dot(x, w1 + i * hidden, hidden)) * ref_dot(x, w3 + i * hidden, hidden);
    for (int64_t d = 0; d < hidden; d++) {
        double sum = 0;
        for (int64_t i = 0; i < inter; i++)
            sum += (double)w2[d * inter + i] * h[i];
        y[d] = sum;
    }
    free(h);
}

/* ---- RMSNORM ---- */

static void test_rmsnorm(void) {
    const int64_t token_counts[] = {1, 13, 300};
    const int64_t n = 67, stride = 80, col0 = 5;
    for (int c = 0; c < 3; c++) {
        int64_t T = token_counts[c];
        float *x = random_floats((size_t)(T * n), 10 + (uint64_t)c, -2, 2);
        float *w = random_floats((size_t)n, 20, 0.5f, 1.5f);
        double *ref = doubles((size_t)(T * n));
        for (int64_t t = 0; t < T; t++) {
            double ss = 0;
            for (int64_t i = 0; i < n; i++)
                ss += (double)x[t * n + i] * x[t * n + i];
            double inv = 1.0 / sqrt(ss / (double)n + 1e-6);
            for (int64_t i = 0; i < n; i++)
                ref[t * n + i] = x[t * n + i] * inv * w[i];
        }
        moira_rmsnorm_params_t params = {.eps = 1e-6f};
        moira_dtensor_t xs = upload_slice(x, T, n, stride, col0, 7.0f);
        moira_dtensor_t wv = upload(MOIRA_DTYPE_F32, w, 1, (int64_t[]){n});
        moira_dtensor_t ys = upload_slice(NULL, T, n, stride + 3, 2, NAN);
        CHECK_OK(RUN(MOIRA_OP_RMSNORM, params, xs, wv, ys));
        float *got = download(&ys);
        check_nmse("rmsnorm (strided)", got, ref, (size_t)(T * n), ELEMENTWISE_LIMIT);
        CHECK_MSG(gaps_untouched(&ys, NAN), "rmsnorm wrote outside its output slice");
        free(got);

        CHECK_OK(RUN(MOIRA_OP_RMSNORM, params, xs, wv, xs)); /* in place */
        got = download(&xs);
        check_nmse("rmsnorm (in place)", got, ref, (size_t)(T * n), ELEMENTWISE_LIMIT);
        CHECK_MSG(gaps_untouched(&xs, 7.0f), "in-place rmsnorm wrote outside its slice");
        free(got);
        free(x);
        free(w);
        free(ref);
        release_buffers();
    }
}

/* ---- ROPE ---- */

static void test_rope(void) {
    const int64_t T = 13, heads = 3, head_stride = 24, rope_offset = 8, rope_dim = 16;
    const int64_t C = heads * head_stride, stride = C + 9;
    moira_rope_params_t params = {.n_heads = (int32_t)heads,
                                  .head_stride = (int32_t)head_stride,
                                  .rope_offset = (int32_t)rope_offset,
                                  .rope_dim = (int32_t)rope_dim,
                                  .cos_sin_scale = 1.25f};
    for (int i = 0; i < rope_dim / 2; i++)
        params.inv_freq[i] = pow(10000.0, -2.0 * i / (double)rope_dim);
    float *x = random_floats((size_t)(T * C), 30, -1, 1);
    int32_t positions[13];
    for (int t = 0; t < T; t++)
        positions[t] = t * 7919 % 40000 + (t == 0 ? 0 : 3);
    double *ref = doubles((size_t)(T * C));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < C; i++)
            ref[t * C + i] = x[t * C + i];
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < rope_dim / 2; i++) {
                int64_t at = t * C + h * head_stride + rope_offset + 2 * i;
                double angle = positions[t] * params.inv_freq[i];
                double c = cos(angle) * 1.25, s = sin(angle) * 1.25;
                ref[at] = x[at] * c - x[at + 1] * s;
                ref[at + 1] = x[at] * s + x[at + 1] * c;
            }
    }
    moira_dtensor_t xs = upload_slice(x, T, C, stride, 4, 3.0f);
    moira_dtensor_t pos = upload(MOIRA_DTYPE_I32, positions, 1, (int64_t[]){T});
    moira_dtensor_t ys = upload_slice(NULL, T, C, C + 1, 1, NAN);
    CHECK_OK(RUN(MOIRA_OP_ROPE, params, xs, pos, ys));
    float *got = download(&ys);
    check_nmse("rope (strided)", got, ref, (size_t)(T * C), ELEMENTWISE_LIMIT);
    bool copied = true;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++)
            if ((i % head_stride < rope_offset || i % head_stride >= rope_offset + rope_dim) &&
                got[t * C + i] != x[t * C + i])
                copied = false;
    CHECK_MSG(copied, "rope changed elements outside the rope slices");
    free(got);
    CHECK_OK(RUN(MOIRA_OP_ROPE, params, xs, pos, xs));
    got = download(&xs);
    check_nmse("rope (in place)", got, ref, (size_t)(T * C), ELEMENTWISE_LIMIT);
    CHECK_MSG(gaps_untouched(&xs, 3.0f), "in-place rope wrote outside its slice");
    free(got);
    free(x);
    free(ref);
    release_buffers();
}

/* ---- LINEAR ---- */

static void test_linear(void) {
    const int64_t token_counts[] = {1, 13, 70};
    const int64_t K = 200, N = 130;
    for (int d = 0; d < N_WEIGHT_DTYPES; d++) {
        moira_dtype_t dtype = weight_dtypes[d];
        float *w = random_floats((size_t)(N * K), 40 + (uint64_t)d, -0.1f, 0.1f);
        float *seen = xmalloc((size_t)(N * K) * sizeof(float));
        moira_dtensor_t wv = upload_weight(dtype, 1, N, K, w, seen);
        for (int c = 0; c < 3; c++) {
            int64_t T = token_counts[c];
            float *x = random_floats((size_t)(T * K), 50 + (uint64_t)c, -1, 1);
            float *y0 = random_floats((size_t)(T * N), 60 + (uint64_t)c, -1, 1);
            double *ref = doubles((size_t)(T * N));
            double *ref_acc = doubles((size_t)(T * N));
            for (int64_t t = 0; t < T; t++)
                for (int64_t n = 0; n < N; n++) {
                    ref[t * N + n] = ref_dot(x + t * K, seen + n * K, K);
                    ref_acc[t * N + n] = y0[t * N + n] + ref[t * N + n];
                }
            char what[96];
            moira_dtensor_t xs = upload_slice(x, T, K, K + 11, 3, 1e30f);
            moira_dtensor_t ys = upload_slice(NULL, T, N, N + 5, 5, NAN);
            moira_linear_params_t overwrite = {.beta = 0};
            CHECK_OK(RUN(MOIRA_OP_LINEAR, overwrite, xs, wv, ys));
            float *got = download(&ys);
            snprintf(what, sizeof(what), "linear %s T=%lld", moira_dtype_name(dtype), (long long)T);
            check_nmse(what, got, ref, (size_t)(T * N), F32_LIMIT);
            CHECK_MSG(gaps_untouched(&ys, NAN), "%s wrote outside its output slice", what);
            free(got);

            moira_dtensor_t yacc = upload(MOIRA_DTYPE_F32, y0, 2, (int64_t[]){T, N});
            moira_linear_params_t accumulate = {.beta = 1};
            CHECK_OK(RUN(MOIRA_OP_LINEAR, accumulate, xs, wv, yacc));
            got = download(&yacc);
            snprintf(what, sizeof(what), "linear beta=1 %s T=%lld", moira_dtype_name(dtype),
                     (long long)T);
            check_nmse(what, got, ref_acc, (size_t)(T * N), F32_LIMIT);
            free(got);
            free(x);
            free(y0);
            free(ref);
            free(ref_acc);
        }
        free(w);
        free(seen);
        release_buffers();
    }
}

/* ---- SWIGLU ---- */

static void test_swiglu(void) {
    const int64_t token_counts[] = {1, 13, 70};
    const int64_t D = 67, I = 45;
    for (int d = 0; d < N_WEIGHT_DTYPES; d++) {
        moira_dtype_t dtype = weight_dtypes[d];
        float *w1 = random_floats((size_t)(I * D), 70, -0.2f, 0.2f);
        float *w3 = random_floats((size_t)(I * D), 71, -0.2f, 0.2f);
        float *w2 = random_floats((size_t)(D * I), 72, -0.2f, 0.2f);
        float *s1 = xmalloc((size_t)(I * D) * sizeof(float));
        float *s3 = xmalloc((size_t)(I * D) * sizeof(float));
        float *s2 = xmalloc((size_t)(D * I) * sizeof(float));
        moira_dtensor_t v1 = upload_weight(dtype, 1, I, D, w1, s1);
        moira_dtensor_t v3 = upload_weight(dtype, 1, I, D, w3, s3);
        moira_dtensor_t v2 = upload_weight(dtype, 1, D, I, w2, s2);
        for (int c = 0; c < 3; c++) {
            int64_t T = token_counts[c];
            float *x = random_floats((size_t)(T * D), 73 + (uint64_t)c, -1, 1);
            float *y0 = random_floats((size_t)(T * D), 76 + (uint64_t)c, -1, 1);
            double *ref = doubles((size_t)(T * D));
            for (int64_t t = 0; t < T; t++)
                ref_swiglu_row(x + t * D, s1, s3, s2, D, I, ref + t * D);
            moira_dtensor_t xv = upload(MOIRA_DTYPE_F32, x, 2, (int64_t[]){T, D});
            moira_dtensor_t yv = nan_output(2, (int64_t[]){T, D});
            moira_swiglu_params_t overwrite = {.beta = 0};
            CHECK_OK(RUN(MOIRA_OP_SWIGLU, overwrite, xv, v1, v3, v2, yv));
            float *got = download(&yv);
            char what[96];
            snprintf(what, sizeof(what), "swiglu %s T=%lld", moira_dtype_name(dtype), (long long)T);
            check_nmse(what, got, ref, (size_t)(T * D), F32_LIMIT);
            free(got);
            for (int64_t i = 0; i < T * D; i++)
                ref[i] += y0[i];
            moira_dtensor_t yacc = upload(MOIRA_DTYPE_F32, y0, 2, (int64_t[]){T, D});
            moira_swiglu_params_t accumulate = {.beta = 1};
            CHECK_OK(RUN(MOIRA_OP_SWIGLU, accumulate, xv, v1, v3, v2, yacc));
            got = download(&yacc);
            snprintf(what, sizeof(what), "swiglu beta=1 %s T=%lld", moira_dtype_name(dtype),
                     (long long)T);
            check_nmse(what, got, ref, (size_t)(T * D), F32_LIMIT);
            free(got);
            free(x);
            free(y0);
            free(ref);
        }
        free(w1), free(w3), free(w2), free(s1), free(s3), free(s2);
        release_buffers();
    }
}

/* ---- GATE ---- */

typedef struct ranked {
    double value;
    int index;
} ranked_t;

/* Descending value, ties to the lower index: the order DESIGN.md §4 asks for. */
static int by_rank(const void *a, const void *b) {
    const ranked_t *x = a, *y = b;
    if (x->value != y->value) return x->value > y->value ? -1 : 1;
    return x->index - y->index;
}

/* The router of DESIGN.md §4, with sorting where the kernel scans. */
static void ref_gate(const moira_gate_params_t *p, const float *x, const float *w,
                     const float *bias, int64_t T, int64_t D, int32_t *idx, double *weight,
                     double *selection) {
    int E = p->n_experts, group_size = p->n_experts / p->n_group;
    double *scores = doubles((size_t)E);
    ranked_t *ranks = xmalloc((size_t)E * sizeof(ranked_t));
    for (int64_t t = 0; t < T; t++) {
        double max_logit = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) {
            scores[e] = ref_dot(x + t * D, w + e * D, D);
            if (scores[e] > max_logit) max_logit = scores[e];
        }
        for (int e = 0; e < E; e++) {
            if (p->scoring == MOIRA_SCORING_SOFTMAX) {
                scores[e] = exp(scores[e] - max_logit);
                sum += scores[e];
            } else {
                scores[e] = 1.0 / (1.0 + exp(-scores[e]));
            }
        }
        double *sel = selection + t * E;
        for (int e = 0; e < E; e++) {
            if (p->scoring == MOIRA_SCORING_SOFTMAX) scores[e] /= sum;
            sel[e] = scores[e] + (bias ? bias[e] : 0);
        }
        if (p->n_group > 1) {
            /* Group score: the best (plus, with a bias, the second best) selection score. */
            ranked_t groups[64];
            for (int g = 0; g < p->n_group; g++) {
                double best = -INFINITY, second = -INFINITY;
                for (int i = 0; i < group_size; i++) {
                    double v = sel[g * group_size + i];
                    if (v > best) {
                        second = best;
                        best = v;
                    } else if (v > second) {
                        second = v;
                    }
                }
                groups[g] = (ranked_t){bias ? best + second : best, g};
            }
            qsort(groups, (size_t)p->n_group, sizeof(ranked_t), by_rank);
            for (int g = p->topk_group; g < p->n_group; g++)
                for (int i = 0; i < group_size; i++)
                    sel[groups[g].index * group_size + i] = -INFINITY;
        }
        for (int e = 0; e < E; e++)
            ranks[e] = (ranked_t){sel[e], e};
        qsort(ranks, (size_t)E, sizeof(ranked_t), by_rank);
        double total = 0;
        for (int j = 0; j < p->top_k; j++)
            total += scores[ranks[j].index];
        for (int j = 0; j < p->top_k; j++) {
            idx[t * p->top_k + j] = ranks[j].index;
            double v = scores[ranks[j].index];
            if (p->norm_topk_prob) v /= total + 1e-20;
            weight[t * p->top_k + j] = v * p->routed_scaling_factor;
        }
    }
    int32_t capacity = INT32_MAX;
    if (p->capacity_factor > 0)
        capacity = (int32_t)ceil((double)p->capacity_factor * (double)(T * p->top_k) / E);
    int32_t *load = xmalloc((size_t)E * sizeof(int32_t));
    for (int64_t a = 0; a < T * p->top_k; a++) {
        if (load[idx[a]] >= capacity) {
            idx[a] = -1;
            weight[a] = 0;
        } else {
            load[idx[a]]++;
        }
    }
    free(load);
    free(scores);
    free(ranks);
}

typedef struct gate_case {
    const char *name;
    moira_gate_params_t params;
    bool bias;
    int64_t tokens, hidden;
    bool ties; /* the second half of W's rows copies the first, and row 1 copies row 0 */
} gate_case_t;

static void test_gate(void) {
    /* clang-format off */
    const gate_case_t cases[] = {
        {"softmax, no groups", {.n_experts = 8, .top_k = 2, .n_group = 1, .topk_group = 1,
         .scoring = MOIRA_SCORING_SOFTMAX, .routed_scaling_factor = 1.0f}, false, 13, 67, false},
        {"sigmoid, bias, groups", {.n_experts = 16, .top_k = 4, .n_group = 4, .topk_group = 2,
         .scoring = MOIRA_SCORING_SIGMOID, .norm_topk_prob = 1, .routed_scaling_factor = 2.5f},
         true, 40, 67, false},
        {"groups without bias", {.n_experts = 12, .top_k = 3, .n_group = 3, .topk_group = 2,
         .scoring = MOIRA_SCORING_SOFTMAX, .norm_topk_prob = 1, .routed_scaling_factor = 1.0f},
         false, 1, 67, false},
        {"capacity 1.0", {.n_experts = 16, .top_k = 4, .n_group = 4, .topk_group = 2,
         .scoring = MOIRA_SCORING_SIGMOID, .norm_topk_prob = 1, .routed_scaling_factor = 2.5f,
         .capacity_factor = 1.0f}, true, 40, 67, false},
        {"capacity 0.5, no groups", {.n_experts = 8, .top_k = 2, .n_group = 1, .topk_group = 1,
         .scoring = MOIRA_SCORING_SOFTMAX, .routed_scaling_factor = 1.0f,
         .capacity_factor = 0.5f}, false, 13, 67, false},
        {"exact ties", {.n_experts = 16, .top_k = 5, .n_group = 4, .topk_group = 2,
         .scoring = MOIRA_SCORING_SOFTMAX, .norm_topk_prob = 1, .routed_scaling_factor = 1.0f},
         false, 13, 67, true},
    };
    /* clang-format on */
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const gate_case_t *gc = &cases[c];
        int64_t T = gc->tokens, D = gc->hidden, E = gc->params.n_experts, k = gc->params.top_k;
        float *x = random_floats((size_t)(T * D), 80 + c, -1, 1);
        float *w = random_floats((size_t)(E * D), 90 + c, -0.3f, 0.3f);
        float *bias = random_floats((size_t)E, 100 + c, -0.2f, 0.2f);
        if (gc->ties) {
            memcpy(w + E / 2 * D, w, (size_t)(E / 2 * D) * sizeof(float));
            memcpy(w + D, w, (size_t)D * sizeof(float));
        }
        for (int dt = 0; dt < N_WEIGHT_DTYPES; dt++) {
            moira_dtype_t dtype = weight_dtypes[dt];
            float *seen = xmalloc((size_t)(E * D) * sizeof(float));
            moira_dtensor_t wv = upload_weight(dtype, 1, E, D, w, seen);
            int32_t *ref_idx = xmalloc((size_t)(T * k) * sizeof(int32_t));
            double *ref_weight = doubles((size_t)(T * k));
            double *ref_selection = doubles((size_t)(T * E));
            ref_gate(&gc->params, x, seen, gc->bias ? bias : NULL, T, D, ref_idx, ref_weight,
                     ref_selection);
            moira_dtensor_t xv = upload(MOIRA_DTYPE_F32, x, 2, (int64_t[]){T, D});
            moira_dtensor_t bv =
                gc->bias ? upload(MOIRA_DTYPE_F32, bias, 1, (int64_t[]){E}) : ABSENT;
            moira_dtensor_t idx_v = upload(MOIRA_DTYPE_I32, NULL, 2, (int64_t[]){T, k});
            moira_dtensor_t weight_v = nan_output(2, (int64_t[]){T, k});
            moira_dtensor_t sel_v = nan_output(2, (int64_t[]){T, E});
            CHECK_OK(RUN(MOIRA_OP_GATE, gc->params, xv, wv, bv, idx_v, weight_v, sel_v));
            int32_t *idx = download_i32(&idx_v);
            float *weight = download(&weight_v);
            float *selection = download(&sel_v);
            char what[128];
            snprintf(what, sizeof(what), "gate %s %s T=%lld", gc->name, moira_dtype_name(dtype),
                     (long long)T);
            int mismatched = 0, dropped = 0;
            for (int64_t a = 0; a < T * k; a++) {
                mismatched += idx[a] != ref_idx[a];
                dropped += ref_idx[a] < 0;
            }
            CHECK_MSG(mismatched == 0, "%s: %d of %lld indices differ", what, mismatched,
                      (long long)(T * k));
            if (gc->params.capacity_factor > 0)
                CHECK_MSG(dropped > 0, "%s: the case should drop assignments", what);
            check_nmse(what, weight, ref_weight, (size_t)(T * k), F32_LIMIT);
            check_nmse(what, selection, ref_selection, (size_t)(T * E), F32_LIMIT);

            /* Without the optional operands the routing is the same. */
            moira_dtensor_t idx2_v = upload(MOIRA_DTYPE_I32, NULL, 2, (int64_t[]){T, k});
            CHECK_OK(RUN(MOIRA_OP_GATE, gc->params, xv, wv, bv, idx2_v, weight_v, ABSENT));
            int32_t *idx2 = download_i32(&idx2_v);
            CHECK_MSG(!memcmp(idx, idx2, (size_t)(T * k) * sizeof(int32_t)),
                      "%s: selection output changed the routing", what);
            free(idx), free(idx2), free(weight), free(selection), free(seen);
            free(ref_idx), free(ref_weight), free(ref_selection);
            release_buffers();
        }
        free(x), free(w), free(bias);
    }

    moira_gate_params_t p = {.n_experts = 16, .top_k = 4, .capacity_factor = 0};
    CHECK(moira_gate_capacity(&p, 13) == INT32_MAX);
    p.capacity_factor = 1.0f;
    CHECK(moira_gate_capacity(&p, 13) == 4); /* ceil(3.25) */
    p.capacity_factor = 1.25f;
    CHECK(moira_gate_capacity(&p, 13) == 5); /* ceil(4.0625) */
    p.capacity_factor = 1.1f;                /* 1.10000002f * 40 * 4 / 16 is 11, not 12 */
    CHECK(moira_gate_capacity(&p, 40) == 11);
    p.capacity_factor = 2.0f;
    CHECK(moira_gate_capacity(&p, 40) == 20);
}

/* ---- MOE_DISPATCH, MOE_FFN, MOE_COMBINE ---- */

/* Routing with a busy expert (more than one row block), an idle one and dropped slots. */
static void make_routing(int64_t T, int64_t k, int E, int32_t *idx, float *weight) {
    float *r = random_floats((size_t)(T * k), 110, 0, 1);
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) {
            int32_t e;
            if (j == 0)
                e = 0; /* expert 0 gets every token */
            else
                e = 1 + (int32_t)((t * 7 + j * 3) % (E - 2)); /* never the last expert */
            if ((t * k + j) % 11 == 5) e = -1;
            idx[t * k + j] = e;
            weight[t * k + j] = e < 0 ? 0 : 0.2f + r[t * k + j];
        }
    free(r);
}

static void test_dispatch_ffn_combine(void) {
    const int64_t T = 37, k = 3, D = 67, I = 45;
    const int E = 6;
    int32_t idx[37 * 3];
    float topk_weight[37 * 3];
    make_routing(T, k, E, idx, topk_weight);

    /* Reference dispatch: expert by expert, assignments in order. */
    int32_t ref_offsets[7] = {0}, ref_sorted[37 * 3], ref_pos[37 * 3];
    int32_t row = 0;
    for (int e = 0; e < E; e++) {
        ref_offsets[e] = row;
        for (int64_t a = 0; a < T * k; a++)
            if (idx[a] == e) {
                ref_sorted[row] = (int32_t)a;
                ref_pos[a] = row++;
            }
    }
    ref_offsets[E] = row;
    for (int64_t a = 0; a < T * k; a++)
        if (idx[a] < 0) ref_pos[a] = -1;

    float *x = random_floats((size_t)(T * D), 120, -1, 1);
    float *w1 = random_floats((size_t)(E * I * D), 121, -0.2f, 0.2f);
    float *w3 = random_floats((size_t)(E * I * D), 122, -0.2f, 0.2f);
    float *w2 = random_floats((size_t)(E * D * I), 123, -0.2f, 0.2f);
    float *y0 = random_floats((size_t)(T * D), 124, -1, 1);
    float *s1 = xmalloc((size_t)(E * I * D) * sizeof(float));
    float *s3 = xmalloc((size_t)(E * I * D) * sizeof(float));
    float *s2 = xmalloc((size_t)(E * D * I) * sizeof(float));
    double *ref_ys = doubles((size_t)(T * k * D));
    double *ref_y = doubles((size_t)(T * D));
    for (int dt = 0; dt < N_WEIGHT_DTYPES; dt++) {
        moira_dtype_t dtype = weight_dtypes[dt];
        moira_dtensor_t v1 = upload_experts(dtype, E, I, D, w1, s1);
        moira_dtensor_t v3 = upload_experts(dtype, E, I, D, w3, s3);
        moira_dtensor_t v2 = upload_experts(dtype, E, D, I, w2, s2);
        moira_dtensor_t idx_v = upload(MOIRA_DTYPE_I32, idx, 2, (int64_t[]){T, k});
        moira_dtensor_t offsets_v = upload(MOIRA_DTYPE_I32, NULL, 1, (int64_t[]){E + 1});
        moira_dtensor_t sorted_v = upload(MOIRA_DTYPE_I32, NULL, 1, (int64_t[]){T * k});
        moira_dtensor_t pos_v = upload(MOIRA_DTYPE_I32, NULL, 1, (int64_t[]){T * k});
        moira_moe_dispatch_params_t dispatch = {.n_experts = E};
        CHECK_OK(RUN(MOIRA_OP_MOE_DISPATCH, dispatch, idx_v, offsets_v, sorted_v, pos_v));
        if (dt == 0) {
            int32_t *offsets = download_i32(&offsets_v);
            int32_t *sorted = download_i32(&sorted_v);
            int32_t *pos = download_i32(&pos_v);
            CHECK(!memcmp(offsets, ref_offsets, sizeof(ref_offsets)));
            CHECK(!memcmp(sorted, ref_sorted, (size_t)row * sizeof(int32_t)));
            CHECK(!memcmp(pos, ref_pos, sizeof(ref_pos)));
            CHECK_MSG(ref_offsets[1] - ref_offsets[0] > 16 && ref_offsets[E] == ref_offsets[E - 1],
                      "routing should have a busy and an idle expert");
            bool tail_cleared = true;
            for (int64_t p = row; p < T * k; p++)
                tail_cleared &= sorted[p] == -1;
            CHECK_MSG(tail_cleared, "moe_dispatch left the unused tail of sorted_rows");
            free(offsets), free(sorted), free(pos);
        }

        /* FFN on the sorted rows; unused tail rows are never written. */
        for (int32_t p = 0; p < row; p++) {
            int32_t a = ref_sorted[p], e = idx[a];
            ref_swiglu_row(x + a / k * D, s1 + (int64_t)e * I * D, s3 + (int64_t)e * I * D,
                           s2 + (int64_t)e * D * I, D, I, ref_ys + p * D);
        }
        moira_dtensor_t xv = upload(MOIRA_DTYPE_F32, x, 2, (int64_t[]){T, D});
        moira_dtensor_t ys_v = nan_output(2, (int64_t[]){T * k, D});
        moira_moe_ffn_params_t ffn = {.top_k = (int32_t)k};
        CHECK_OK(RUN(MOIRA_OP_MOE_FFN, ffn, xv, v1, v3, v2, offsets_v, sorted_v, ys_v));
        float *ys = download(&ys_v);
        char what[96];
        snprintf(what, sizeof(what), "moe_ffn %s", moira_dtype_name(dtype));
        check_nmse(what, ys, ref_ys, (size_t)(row * D), F32_LIMIT);
        bool tail_untouched = true;
        for (int64_t i = row * D; i < T * k * D; i++)
            tail_untouched &= isnan(ys[i]);
        CHECK_MSG(tail_untouched, "%s wrote rows past the last expert's", what);

        /* Combine closes the round trip: y = beta*y + sum_j w * FFN_idx(x). */
        for (int beta = 0; beta <= 1; beta++) {
            for (int64_t t = 0; t < T; t++)
                for (int64_t d = 0; d < D; d++) {
                    double sum = beta ? y0[t * D + d] : 0;
                    for (int64_t j = 0; j < k; j++)
                        if (ref_pos[t * k + j] >= 0)
                            sum += topk_weight[t * k + j] * ref_ys[ref_pos[t * k + j] * D + d];
                    ref_y[t * D + d] = sum;
                }
            moira_dtensor_t w_v = upload(MOIRA_DTYPE_F32, topk_weight, 2, (int64_t[]){T, k});
            moira_dtensor_t pos2_v = upload(MOIRA_DTYPE_I32, ref_pos, 2, (int64_t[]){T, k});
            moira_dtensor_t y_v = beta ? upload(MOIRA_DTYPE_F32, y0, 2, (int64_t[]){T, D})
                                       : nan_output(2, (int64_t[]){T, D});
            moira_moe_combine_params_t combine = {.beta = (float)beta};
            CHECK_OK(RUN(MOIRA_OP_MOE_COMBINE, combine, ys_v, pos2_v, w_v, y_v));
            float *y = download(&y_v);
            snprintf(what, sizeof(what), "dispatch/ffn/combine %s beta=%d", moira_dtype_name(dtype),
                     beta);
            check_nmse(what, y, ref_y, (size_t)(T * D), F32_LIMIT);
            free(y);
        }
        free(ys);
        release_buffers();
    }
    free(x), free(w1), free(w3), free(w2), free(y0), free(s1), free(s3), free(s2);
    free(ref_ys), free(ref_y);
}

/* Indices come from device memory: bad ones must fail the launch, not write astray. */
static void test_moe_bad_indices(void) {
    int32_t idx[4] = {0, 1, 7, -1};
    moira_dtensor_t idx_v = upload(MOIRA_DTYPE_I32, idx, 2, (int64_t[]){2, 2});
    moira_dtensor_t offsets_v = upload(MOIRA_DTYPE_I32, NULL, 1, (int64_t[]){4 + 1});
    moira_dtensor_t sorted_v = upload(MOIRA_DTYPE_I32, NULL, 1, (int64_t[]){4});
    moira_dtensor_t pos_v = upload(MOIRA_DTYPE_I32, NULL, 1, (int64_t[]){4});
    moira_moe_dispatch_params_t dispatch = {.n_experts = 4};
    CHECK_CODE(RUN(MOIRA_OP_MOE_DISPATCH, dispatch, idx_v, offsets_v, sorted_v, pos_v),
               MOIRA_CODE_INVALID_ARGUMENT);
    int32_t pos[4] = {0, 9, -1, 2};
    moira_dtensor_t pos2_v = upload(MOIRA_DTYPE_I32, pos, 2, (int64_t[]){2, 2});
    float w[4] = {1, 1, 1, 1};
    moira_dtensor_t w_v = upload(MOIRA_DTYPE_F32, w, 2, (int64_t[]){2, 2});
    moira_dtensor_t ys_v = nan_output(2, (int64_t[]){4, 3});
    moira_dtensor_t y_v = nan_output(2, (int64_t[]){2, 3});
    moira_moe_combine_params_t combine = {.beta = 0};
    CHECK_CODE(RUN(MOIRA_OP_MOE_COMBINE, combine, ys_v, pos2_v, w_v, y_v),
               MOIRA_CODE_INVALID_ARGUMENT);
    release_buffers();
}

/* ---- MLA ---- */

enum { MLA_H = 3, MLA_NOPE = 16, MLA_ROPE = 8, MLA_V = 12, MLA_L = 40 };
#define MLA_Q (MLA_H * (MLA_NOPE + MLA_ROPE))
#define MLA_KV (MLA_H * (MLA_NOPE + MLA_V))

static moira_mla_params_t mla_params(int cache_len) {
    return (moira_mla_params_t){.n_heads = MLA_H,
                                .nope_dim = MLA_NOPE,
                                .rope_dim = MLA_ROPE,
                                .v_dim = MLA_V,
                                .kv_lora_rank = MLA_L,
                                .cache_len = cache_len,
                                .scale = 1.0f / sqrtf(MLA_NOPE + MLA_ROPE)};
}

/* softmax over the visible keys, in double. */
static void ref_attend(const double *scores, const bool *visible, int64_t n_keys,
                       const float *values, int64_t value_stride, int64_t width, double *out) {
    double max_score = -INFINITY, sum = 0;
    for (int64_t s = 0; s < n_keys; s++)
        if (visible[s] && scores[s] > max_score) max_score = scores[s];
    for (int64_t j = 0; j < width; j++)
        out[j] = 0;
    for (int64_t s = 0; s < n_keys; s++) {
        if (!visible[s]) continue;
        double p = exp(scores[s] - max_score);
        sum += p;
        for (int64_t j = 0; j < width; j++)
            out[j] += p * values[s * value_stride + j];
    }
    for (int64_t j = 0; j < width; j++)
        out[j] = sum > 0 ? out[j] / sum : 0;
}

static void test_mla_attention(void) {
    const int64_t token_counts[] = {1, 13};
    for (int c = 0; c < 2; c++) {
        int64_t T = token_counts[c];
        moira_mla_params_t params = mla_params(0);
        float *q = random_floats((size_t)(T * MLA_Q), 130, -1, 1);
        float *kv = random_floats((size_t)(T * MLA_KV), 131, -1, 1);
        float *k_pe = random_floats((size_t)(T * MLA_ROPE), 132, -1, 1);
        int32_t positions[13];
        for (int64_t t = 0; t < T; t++)
            positions[t] = (int32_t)(t / 2 + 4); /* pairs share */
        double *ref = doubles((size_t)(T * MLA_H * MLA_V));
        double scores[13];
        bool visible[13];
        for (int64_t t = 0; t < T; t++)
            for (int h = 0; h < MLA_H; h++) {
                const float *qh = q + t * MLA_Q + h * (MLA_NOPE + MLA_ROPE);
                for (int64_t s = 0; s < T; s++) {
                    const float *kh = kv + s * MLA_KV + h * (MLA_NOPE + MLA_V);
                    visible[s] = positions[s] <= positions[t];
                    scores[s] = (ref_dot(qh, kh, MLA_NOPE) +
                                 ref_dot(qh + MLA_NOPE, k_pe + s * MLA_ROPE, MLA_ROPE)) *
                                params.scale;
                }
                ref_attend(scores, visible, T, kv + h * (MLA_NOPE + MLA_V) + MLA_NOPE, MLA_KV,
                           MLA_V, ref + t * MLA_H * MLA_V + h * MLA_V);
            }
        moira_dtensor_t qv = upload(MOIRA_DTYPE_F32, q, 2, (int64_t[]){T, MLA_Q});
        moira_dtensor_t kvv = upload(MOIRA_DTYPE_F32, kv, 2, (int64_t[]){T, MLA_KV});
        moira_dtensor_t kpe = upload_slice(k_pe, T, MLA_ROPE, MLA_L + MLA_ROPE, MLA_L, 5.0f);
        moira_dtensor_t pos = upload(MOIRA_DTYPE_I32, positions, 1, (int64_t[]){T});
        moira_dtensor_t out = nan_output(2, (int64_t[]){T, MLA_H * MLA_V});
        CHECK_OK(RUN(MOIRA_OP_MLA_ATTENTION, params, qv, kvv, kpe, pos, out));
        float *got = download(&out);
        check_nmse(T == 1 ? "mla_attention T=1" : "mla_attention T=13", got, ref,
                   (size_t)(T * MLA_H * MLA_V), F32_LIMIT);
        free(got), free(q), free(kv), free(k_pe), free(ref);
        release_buffers();
    }
}

/* The three absorbed ops one by one, for every kv_b_proj dtype. */
static void test_mla_absorbed(void) {
    const int64_t S = 13, T = 4;
    const int32_t positions[4] = {0, 5, 12, 20}; /* the last one sees the whole cache */
    float *q = random_floats((size_t)(T * MLA_Q), 140, -1, 1);
    float *cache = random_floats((size_t)(S * MLA_L), 141, -1, 1);
    float *k_pe = random_floats((size_t)(S * MLA_ROPE), 142, -1, 1);
    float *q_lat = random_floats((size_t)(T * MLA_H * MLA_L), 143, -1, 1);
    float *o_lat = random_floats((size_t)(T * MLA_H * MLA_L), 144, -1, 1);
    float *w = random_floats((size_t)(MLA_KV * MLA_L), 145, -0.3f, 0.3f);
    float *seen = xmalloc((size_t)(MLA_KV * MLA_L) * sizeof(float));
    double *ref = doubles((size_t)(T * MLA_H * MLA_L));
    moira_mla_params_t params = mla_params((int)S);
    for (int dt = 0; dt < N_WEIGHT_DTYPES; dt++) {
        moira_dtype_t dtype = weight_dtypes[dt];
        moira_dtensor_t wv = upload_weight(dtype, 1, MLA_KV, MLA_L, w, seen);
        moira_dtensor_t qv = upload(MOIRA_DTYPE_F32, q, 2, (int64_t[]){T, MLA_Q});
        char what[96];

        for (int64_t t = 0; t < T; t++)
            for (int h = 0; h < MLA_H; h++)
                for (int l = 0; l < MLA_L; l++) {
                    double sum = 0;
                    for (int i = 0; i < MLA_NOPE; i++)
                        sum += (double)q[t * MLA_Q + h * (MLA_NOPE + MLA_ROPE) + i] *
                               seen[(h * (MLA_NOPE + MLA_V) + i) * MLA_L + l];
                    ref[(t * MLA_H + h) * MLA_L + l] = sum;
                }
        moira_dtensor_t q_lat_v = nan_output(2, (int64_t[]){T, MLA_H * MLA_L});
        CHECK_OK(RUN(MOIRA_OP_MLA_ABSORB_Q, params, qv, wv, q_lat_v));
        float *got = download(&q_lat_v);
        snprintf(what, sizeof(what), "mla_absorb_q %s", moira_dtype_name(dtype));
        check_nmse(what, got, ref, (size_t)(T * MLA_H * MLA_L), F32_LIMIT);
        free(got);

        for (int64_t t = 0; t < T; t++)
            for (int h = 0; h < MLA_H; h++)
                for (int j = 0; j < MLA_V; j++) {
                    const float *row = seen + (h * (MLA_NOPE + MLA_V) + MLA_NOPE + j) * MLA_L;
                    ref[(t * MLA_H + h) * MLA_V + j] =
                        ref_dot(o_lat + (t * MLA_H + h) * MLA_L, row, MLA_L);
                }
        moira_dtensor_t o_lat_v = upload(MOIRA_DTYPE_F32, o_lat, 2, (int64_t[]){T, MLA_H * MLA_L});
        moira_dtensor_t out_v = nan_output(2, (int64_t[]){T, MLA_H * MLA_V});
        CHECK_OK(RUN(MOIRA_OP_MLA_ABSORB_OUT, params, o_lat_v, wv, out_v));
        got = download(&out_v);
        snprintf(what, sizeof(what), "mla_absorb_out %s", moira_dtype_name(dtype));
        check_nmse(what, got, ref, (size_t)(T * MLA_H * MLA_V), F32_LIMIT);
        free(got);
        release_buffers();
    }

    double scores[13];
    bool visible[13];
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < MLA_H; h++) {
            const float *ql = q_lat + (t * MLA_H + h) * MLA_L;
            const float *qpe = q + t * MLA_Q + h * (MLA_NOPE + MLA_ROPE) + MLA_NOPE;
            for (int64_t s = 0; s < S; s++) {
                visible[s] = s <= positions[t];
                scores[s] = (ref_dot(ql, cache + s * MLA_L, MLA_L) +
                             ref_dot(qpe, k_pe + s * MLA_ROPE, MLA_ROPE)) *
                            params.scale;
            }
            ref_attend(scores, visible, S, cache, MLA_L, MLA_L, ref + (t * MLA_H + h) * MLA_L);
        }
    moira_dtensor_t q_lat_v = upload(MOIRA_DTYPE_F32, q_lat, 2, (int64_t[]){T, MLA_H * MLA_L});
    moira_dtensor_t qv = upload(MOIRA_DTYPE_F32, q, 2, (int64_t[]){T, MLA_Q});
    moira_dtensor_t cv = upload(MOIRA_DTYPE_F32, cache, 2, (int64_t[]){S, MLA_L});
    moira_dtensor_t kv = upload(MOIRA_DTYPE_F32, k_pe, 2, (int64_t[]){S, MLA_ROPE});
    moira_dtensor_t pv = upload(MOIRA_DTYPE_I32, positions, 1, (int64_t[]){T});
    moira_dtensor_t o_v = nan_output(2, (int64_t[]){T, MLA_H * MLA_L});
    CHECK_OK(RUN(MOIRA_OP_MLA_DECODE_ATTENTION, params, q_lat_v, qv, cv, kv, pv, o_v));
    float *got = download(&o_v);
    check_nmse("mla_decode_attention", got, ref, (size_t)(T * MLA_H * MLA_L), F32_LIMIT);
    free(got);
    release_buffers();
    free(q), free(cache), free(k_pe), free(q_lat), free(o_lat), free(w), free(seen), free(ref);
}

/* Naive and absorbed MLA must agree (DESIGN.md §4): kv = c W_kv_b^T feeds the naive form; the
 * absorbed form sees only c, k_pe and W_kv_b. */
static void test_mla_forms_agree(void) {
    const int64_t T = 13;
    moira_mla_params_t params = mla_params((int)T);
    float *q = random_floats((size_t)(T * MLA_Q), 150, -1, 1);
    float *cache = random_floats((size_t)(T * MLA_L), 151, -1, 1);
    float *k_pe = random_floats((size_t)(T * MLA_ROPE), 152, -1, 1);
    float *w = random_floats((size_t)(MLA_KV * MLA_L), 153, -0.3f, 0.3f);
    float *kv = xmalloc((size_t)(T * MLA_KV) * sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < MLA_KV; r++)
            kv[t * MLA_KV + r] = (float)ref_dot(cache + t * MLA_L, w + r * MLA_L, MLA_L);
    int32_t positions[13];
    for (int t = 0; t < T; t++)
        positions[t] = t;
    moira_dtensor_t qv = upload(MOIRA_DTYPE_F32, q, 2, (int64_t[]){T, MLA_Q});
    moira_dtensor_t kvv = upload(MOIRA_DTYPE_F32, kv, 2, (int64_t[]){T, MLA_KV});
    moira_dtensor_t kpe = upload(MOIRA_DTYPE_F32, k_pe, 2, (int64_t[]){T, MLA_ROPE});
    moira_dtensor_t pos = upload(MOIRA_DTYPE_I32, positions, 1, (int64_t[]){T});
    moira_dtensor_t cv = upload(MOIRA_DTYPE_F32, cache, 2, (int64_t[]){T, MLA_L});
    moira_dtensor_t wv = upload(MOIRA_DTYPE_F32, w, 2, (int64_t[]){MLA_KV, MLA_L});
    moira_dtensor_t naive = nan_output(2, (int64_t[]){T, MLA_H * MLA_V});
    moira_dtensor_t q_lat = nan_output(2, (int64_t[]){T, MLA_H * MLA_L});
    moira_dtensor_t o_lat = nan_output(2, (int64_t[]){T, MLA_H * MLA_L});
    moira_dtensor_t absorbed = nan_output(2, (int64_t[]){T, MLA_H * MLA_V});
    CHECK_OK(RUN(MOIRA_OP_MLA_ATTENTION, params, qv, kvv, kpe, pos, naive));
    CHECK_OK(RUN(MOIRA_OP_MLA_ABSORB_Q, params, qv, wv, q_lat));
    CHECK_OK(RUN(MOIRA_OP_MLA_DECODE_ATTENTION, params, q_lat, qv, cv, kpe, pos, o_lat));
    CHECK_OK(RUN(MOIRA_OP_MLA_ABSORB_OUT, params, o_lat, wv, absorbed));
    float *a = download(&naive), *b = download(&absorbed);
    double nmse = moira_test_nmse_f32(b, a, (size_t)(T * MLA_H * MLA_V));
    CHECK_MSG(nmse <= F32_LIMIT, "naive and absorbed MLA differ: NMSE %.3g", nmse);
    free(a), free(b), free(q), free(cache), free(k_pe), free(w), free(kv);
    release_buffers();
}

/* ---- Validation ---- */

/* Valid launches that the table below breaks one field at a time. */
enum {
    BASE_LINEAR,
    BASE_RMSNORM,
    BASE_ROPE,
    BASE_GATE,
    BASE_MOE_FFN,
    BASE_COMBINE,
    BASE_DECODE,
    N_BASES
};

typedef enum change {
    SET_DTYPE,      /* operands[operand].dtype = value */
    SET_DIM,        /* operands[operand].shape[dim] = value */
    SET_RANK,       /* operands[operand].rank = value */
    DROP_BUFFER,    /* operands[operand].buffer = NULL */
    SET_ROW_STRIDE, /* operands[operand].row_stride = value */
    SET_OFFSET,     /* operands[operand].offset = value */
    SET_SCALE_OFFSET,
    ALIAS_OPERAND_0, /* operands[operand] moved into operands[0]'s memory, `value` bytes on */
    SET_PARAM_I32,   /* *(int32_t *)(params + dim) = value */
    SET_PARAM_F32,   /* *(float *)(params + dim) = value */
    SET_PARAMS_SIZE,
    SET_N_OPERANDS,
} change_t;

typedef struct bad_launch {
    const char *why;
    int base;
    change_t change;
    int operand;
    int dim; /* dimension index, or byte offset into the params */
    double value;
} bad_launch_t;

#define P(type, field) (int)offsetof(type, field)

/* clang-format off */
static const bad_launch_t bad_launches[] = {
    {"weight of integer type", BASE_LINEAR, SET_DTYPE, 1, 0, MOIRA_DTYPE_I32},
    {"f16 activations", BASE_LINEAR, SET_DTYPE, 0, 0, MOIRA_DTYPE_F16},
    {"weight K differs from x", BASE_LINEAR, SET_DIM, 1, 1, 199},
    {"output N differs from W", BASE_LINEAR, SET_DIM, 2, 1, 131},
    {"output T differs from x", BASE_LINEAR, SET_DIM, 2, 0, 12},
    {"x rank 3", BASE_LINEAR, SET_RANK, 0, 0, 3},
    {"missing x", BASE_LINEAR, DROP_BUFFER, 0, 0, 0},
    {"missing weight", BASE_LINEAR, DROP_BUFFER, 1, 0, 0},
    {"row_stride shorter than the row", BASE_LINEAR, SET_ROW_STRIDE, 0, 0, 150},
    {"row_stride on a contiguous-only weight", BASE_LINEAR, SET_ROW_STRIDE, 1, 0, 256},
    {"misaligned offset", BASE_LINEAR, SET_OFFSET, 0, 0, 2},
    {"tensor past its buffer", BASE_LINEAR, SET_OFFSET, 2, 0, 64},
    {"fp8 scales past the buffer", BASE_LINEAR, SET_SCALE_OFFSET, 1, 0, 1 << 20},
    {"output overlapping the input", BASE_LINEAR, ALIAS_OPERAND_0, 2, 0, 0},
    {"params of the wrong size", BASE_LINEAR, SET_PARAMS_SIZE, 0, 0, 8},
    {"too few operands", BASE_LINEAR, SET_N_OPERANDS, 0, 0, 2},
    {"beta NaN", BASE_LINEAR, SET_PARAM_F32, 0, P(moira_linear_params_t, beta), NAN},
    {"norm weight of bf16", BASE_RMSNORM, SET_DTYPE, 1, 0, MOIRA_DTYPE_BF16},
    {"norm weight of the wrong length", BASE_RMSNORM, SET_DIM, 1, 0, 66},
    {"partially overlapping in-place output", BASE_RMSNORM, ALIAS_OPERAND_0, 2, 0, 4},
    {"negative eps", BASE_RMSNORM, SET_PARAM_F32, 0, P(moira_rmsnorm_params_t, eps), -1},
    {"odd rope dim", BASE_ROPE, SET_PARAM_I32, 0, P(moira_rope_params_t, rope_dim), 7},
    {"rope dim over the maximum", BASE_ROPE, SET_PARAM_I32, 0, P(moira_rope_params_t, rope_dim),
     2 * MOIRA_ROPE_MAX_PAIRS + 2},
    {"rope slice outside the head", BASE_ROPE, SET_PARAM_I32, 0,
     P(moira_rope_params_t, rope_offset), 12},
    {"last head outside the row", BASE_ROPE, SET_PARAM_I32, 0, P(moira_rope_params_t, n_heads), 4},
    {"f32 positions", BASE_ROPE, SET_DTYPE, 1, 0, MOIRA_DTYPE_F32},
    {"top_k above n_experts", BASE_GATE, SET_PARAM_I32, 0, P(moira_gate_params_t, top_k), 17},
    {"n_group not dividing n_experts", BASE_GATE, SET_PARAM_I32, 0,
     P(moira_gate_params_t, n_group), 3},
    {"topk_group above n_group", BASE_GATE, SET_PARAM_I32, 0, P(moira_gate_params_t, topk_group),
     5},
    {"unknown scoring", BASE_GATE, SET_PARAM_I32, 0, P(moira_gate_params_t, scoring), 7},
    {"negative capacity factor", BASE_GATE, SET_PARAM_F32, 0,
     P(moira_gate_params_t, capacity_factor), -1},
    {"bias of the wrong length", BASE_GATE, SET_DIM, 2, 0, 17},
    {"missing topk_idx", BASE_GATE, DROP_BUFFER, 3, 0, 0},
    {"topk_idx of f32", BASE_GATE, SET_DTYPE, 3, 0, MOIRA_DTYPE_F32},
    {"selection of the wrong width", BASE_GATE, SET_DIM, 5, 1, 15},
    {"W1 hidden size differs", BASE_MOE_FFN, SET_DIM, 1, 2, 68},
    {"W3 expert count differs", BASE_MOE_FFN, SET_DIM, 2, 0, 5},
    {"W2 not packed per expert", BASE_MOE_FFN, SET_RANK, 3, 0, 2},
    {"expert_offsets without the end", BASE_MOE_FFN, SET_DIM, 4, 0, 6},
    {"ys rows not T*k", BASE_MOE_FFN, SET_DIM, 6, 0, 36},
    {"ys rows not T*k (combine)", BASE_COMBINE, SET_DIM, 0, 0, 110},
    {"combine weights of the wrong shape", BASE_COMBINE, SET_DIM, 2, 1, 2},
    {"cache longer than cache_len", BASE_DECODE, SET_DIM, 2, 0, 14},
    {"q_lat of the wrong width", BASE_DECODE, SET_DIM, 0, 1, MLA_H * MLA_L + 1},
    {"zero heads", BASE_DECODE, SET_PARAM_I32, 0, P(moira_mla_params_t, n_heads), 0},
};
/* clang-format on */

typedef struct base_launch {
    moira_op_launch_t launch;
    unsigned char params[MOIRA_OP_MAX_PARAMS_BYTES];
} base_launch_t;

static moira_op_launch_t make_launch(int op, const void *params, size_t size,
                                     const moira_dtensor_t *operands, int n) {
    moira_op_launch_t launch = {.op = op, .params = params, .params_size = size, .n_operands = n};
    memcpy(launch.operands, operands, (size_t)n * sizeof(*operands));
    return launch;
}

#define BASE(slot, op, params_value, ...)                                                          \
    do {                                                                                           \
        memcpy((slot)->params, &(params_value), sizeof(params_value));                             \
        (slot)->launch =                                                                           \
            make_launch(op, (slot)->params, sizeof(params_value), OPERANDS(__VA_ARGS__),           \
                        (int)(sizeof(OPERANDS(__VA_ARGS__)) / sizeof(moira_dtensor_t)));           \
    } while (0)

/* Buffers of the right sizes; contents do not matter to validation. */
static moira_dtensor_t blank(moira_dtype_t dtype, int rank, const int64_t *shape) {
    moira_dtensor_t view = make_view(NULL, 0, dtype, rank, shape, 0);
    view.buffer = new_buffer(moira_dtensor_span_bytes(&view));
    return view;
}

static void make_bases(base_launch_t *bases) {
    float *w = random_floats(130 * 200, 160, -1, 1);
    float *seen = xmalloc(130 * 200 * sizeof(float));
    moira_dtensor_t fp8 = upload_weight(MOIRA_DTYPE_F8_E4M3, 1, 130, 200, w, seen);
    free(w), free(seen);
    moira_linear_params_t linear = {.beta = 0};
    BASE(&bases[BASE_LINEAR], MOIRA_OP_LINEAR, linear, upload_slice(NULL, 13, 200, 210, 0, 0), fp8,
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, 130}));
    moira_rmsnorm_params_t rmsnorm = {.eps = 1e-6f};
    moira_dtensor_t x = blank(MOIRA_DTYPE_F32, 2, (int64_t[]){14, 67}); /* a spare row */
    x.shape[0] = 13;
    BASE(&bases[BASE_RMSNORM], MOIRA_OP_RMSNORM, rmsnorm, x,
         blank(MOIRA_DTYPE_F32, 1, (int64_t[]){67}), x);
    moira_rope_params_t rope = {
        .n_heads = 3, .head_stride = 24, .rope_offset = 8, .rope_dim = 16, .cos_sin_scale = 1};
    moira_dtensor_t rx = blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, 72});
    BASE(&bases[BASE_ROPE], MOIRA_OP_ROPE, rope, rx, blank(MOIRA_DTYPE_I32, 1, (int64_t[]){13}),
         rx);
    moira_gate_params_t gate = {.n_experts = 16,
                                .top_k = 4,
                                .n_group = 4,
                                .topk_group = 2,
                                .scoring = MOIRA_SCORING_SIGMOID,
                                .routed_scaling_factor = 1};
    BASE(&bases[BASE_GATE], MOIRA_OP_GATE, gate, blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, 67}),
         blank(MOIRA_DTYPE_BF16, 2, (int64_t[]){16, 67}),
         blank(MOIRA_DTYPE_F32, 1, (int64_t[]){16}), blank(MOIRA_DTYPE_I32, 2, (int64_t[]){13, 4}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, 4}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, 16}));
    moira_moe_ffn_params_t ffn = {.top_k = 3};
    BASE(&bases[BASE_MOE_FFN], MOIRA_OP_MOE_FFN, ffn,
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, 67}),
         blank(MOIRA_DTYPE_F16, 3, (int64_t[]){6, 45, 67}),
         blank(MOIRA_DTYPE_F16, 3, (int64_t[]){6, 45, 67}),
         blank(MOIRA_DTYPE_F16, 3, (int64_t[]){6, 67, 45}),
         blank(MOIRA_DTYPE_I32, 1, (int64_t[]){7}), blank(MOIRA_DTYPE_I32, 1, (int64_t[]){39}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){39, 67}));
    moira_moe_combine_params_t combine = {.beta = 1};
    BASE(&bases[BASE_COMBINE], MOIRA_OP_MOE_COMBINE, combine,
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){111, 67}),
         blank(MOIRA_DTYPE_I32, 2, (int64_t[]){37, 3}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){37, 3}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){37, 67}));
    moira_mla_params_t mla = mla_params(13);
    BASE(&bases[BASE_DECODE], MOIRA_OP_MLA_DECODE_ATTENTION, mla,
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){2, MLA_H * MLA_L}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){2, MLA_Q}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, MLA_L}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){13, MLA_ROPE}),
         blank(MOIRA_DTYPE_I32, 1, (int64_t[]){2}),
         blank(MOIRA_DTYPE_F32, 2, (int64_t[]){2, MLA_H * MLA_L}));
}

static void apply_change(const bad_launch_t *bad, moira_op_launch_t *launch,
                         unsigned char *params) {
    moira_dtensor_t *operand = &launch->operands[bad->operand];
    switch (bad->change) {
    case SET_DTYPE:
        operand->dtype = (moira_dtype_t)bad->value;
        break;
    case SET_DIM:
        operand->shape[bad->dim] = (int64_t)bad->value;
        break;
    case SET_RANK:
        operand->rank = (int)bad->value;
        break;
    case DROP_BUFFER:
        operand->buffer = NULL;
        break;
    case SET_ROW_STRIDE:
        operand->row_stride = (int64_t)bad->value;
        break;
    case SET_OFFSET:
        operand->offset = (size_t)bad->value;
        break;
    case SET_SCALE_OFFSET:
        operand->scale_offset = (size_t)bad->value;
        break;
    case ALIAS_OPERAND_0:
        operand->buffer = launch->operands[0].buffer;
        operand->offset = launch->operands[0].offset + (size_t)bad->value;
        operand->row_stride = 0;
        break;
    case SET_PARAM_I32: {
        int32_t value = (int32_t)bad->value;
        memcpy(params + bad->dim, &value, sizeof(value));
        break;
    }
    case SET_PARAM_F32: {
        float value = (float)bad->value;
        memcpy(params + bad->dim, &value, sizeof(value));
        break;
    }
    case SET_PARAMS_SIZE:
        launch->params_size = (size_t)bad->value;
        break;
    case SET_N_OPERANDS:
        launch->n_operands = (int)bad->value;
        break;
    }
}

static void test_validation(void) {
    base_launch_t bases[N_BASES];
    make_bases(bases);
    for (int b = 0; b < N_BASES; b++) {
        bases[b].launch.params = bases[b].params;
        CHECK_OK(moira_op_validate(&bases[b].launch));
    }
    for (size_t i = 0; i < sizeof(bad_launches) / sizeof(bad_launches[0]); i++) {
        const bad_launch_t *bad = &bad_launches[i];
        base_launch_t copy = bases[bad->base];
        copy.launch.params = copy.params;
        apply_change(bad, &copy.launch, copy.params);
        moira_status_t status = moira_op_validate(&copy.launch);
        CHECK_MSG(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT,
                  "validation accepted a launch with %s", bad->why);
        if (status) printf("  rejected %-40s %s\n", bad->why, moira_status_message(status));
        moira_status_free(status);
    }

    /* The message names the op, the operand and both shapes. */
    base_launch_t copy = bases[BASE_MOE_FFN];
    copy.launch.params = copy.params;
    copy.launch.operands[1].shape[2] = 68;
    moira_status_t status = moira_op_validate(&copy.launch);
    CHECK_MSG(!strcmp(moira_status_message(status),
                      "moe_ffn: operand 1 (W1) has shape [6, 45, 68], expected [6, 45, 67]"),
              "unexpected message: %s", moira_status_message(status));
    moira_status_free(status);

    /* Optional operands may be absent; required ones may not. */
    copy = bases[BASE_GATE];
    copy.launch.params = copy.params;
    copy.launch.operands[2] = ABSENT;
    copy.launch.operands[5] = ABSENT;
    CHECK_OK(moira_op_validate(&copy.launch));

    /* Column slices of one buffer with the same row pitch do not overlap: x = columns [0, 200),
     * y = columns [200, 330) of rows 330 wide. */
    copy = bases[BASE_LINEAR];
    copy.launch.params = copy.params;
    moira_buffer_t *wide = new_buffer(13 * 330 * sizeof(float));
    copy.launch.operands[0] = make_view(wide, 0, MOIRA_DTYPE_F32, 2, (int64_t[]){13, 200}, 330);
    copy.launch.operands[2] =
        make_view(wide, 200 * sizeof(float), MOIRA_DTYPE_F32, 2, (int64_t[]){13, 130}, 330);
    CHECK_OK(moira_op_validate(&copy.launch));
    copy.launch.operands[2].offset -= sizeof(float); /* now shares a column */
    CHECK_CODE(moira_op_validate(&copy.launch), MOIRA_CODE_INVALID_ARGUMENT);

    CHECK(moira_device_supports(device, MOIRA_OP_MOE_FFN, MOIRA_DTYPE_F8_E4M3));
    CHECK(moira_device_supports(device, MOIRA_OP_LINEAR, MOIRA_DTYPE_BF16));
    CHECK(!moira_device_supports(device, MOIRA_OP_LINEAR, MOIRA_DTYPE_I32));
    CHECK(!moira_device_supports(device, MOIRA_OP_COUNT, MOIRA_DTYPE_F32));
    CHECK(!strcmp(moira_op_name(MOIRA_OP_MLA_DECODE_ATTENTION), "mla_decode_attention"));
    release_buffers();
}

int main(void) {
    /* Several threads even on a one-core machine, so the parallel paths run. */
    setenv("MOIRA_CPU_THREADS", "4", 0);
    moira_status_t status = moira_runtime_init();
    if (!status) status = moira_device_find("cpu:0", &device);
    if (!status) status = moira_queue_create(device, &queue);
    if (status) return moira_status_report(status);

    test_rmsnorm();
    test_rope();
    test_linear();
    test_swiglu();
    test_gate();
    test_dispatch_ffn_combine();
    test_moe_bad_indices();
    test_mla_attention();
    test_mla_absorbed();
    test_mla_forms_agree();
    test_validation();

    moira_queue_destroy(queue);
    moira_runtime_shutdown();
    return moira_test_finish("test_cpu_kernels");
}

/* The cpu's dense projections over MXFP4 and INT8 weights (backends/cpu/quant_linear.c) through
 * the device: LINEAR with x and y as column slices of wider rows (the gaps must stay untouched),
 * overwriting and accumulating (beta 1), and SWIGLU, at 1, 13 and 70 tokens, against an fp64
 * reference written here on the dequantised weights (runtime/weight_format.h decodes them), held
 * to the limit of what the device computes activations in (int8's with the VNNI tiles). And the
 * E8M0 scale bytes 0 and 255 reach the tiles' exact decoding: 2^-127 and NaN, not 0 and inf. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/device.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"
#include "tests/unit/testing.h"

static moira_device_t *device;
static moira_queue_t *queue;
static double limit;

/* A device buffer holding `bytes` of `src`; freed by the caller. */
static moira_buffer_t *upload_bytes(const void *src, size_t bytes) {
    moira_buffer_t *buffer = NULL;
    CHECK_OK(moira_buffer_alloc(device, bytes, -1, &buffer));
    CHECK_OK(moira_queue_write(queue, buffer, 0, src, bytes));
    CHECK_OK(moira_queue_finish(queue));
    return buffer;
}

/* A quantised host weight (data and scales) as one device buffer: data at 0, scales after. */
static moira_dtensor_t upload_quantized(const moira_tensor_t *q, moira_buffer_t **out_buffer) {
    size_t data = moira_tensor_nbytes(q);
    size_t scale_offset = (data + 63) / 64 * 64;
    size_t scales = moira_weight_scale_bytes(q->dtype, q->shape[0], q->shape[1]);
    unsigned char *image = calloc(1, scale_offset + scales);
    memcpy(image, q->data, data);
    memcpy(image + scale_offset, q->scale->data, scales);
    *out_buffer = upload_bytes(image, scale_offset + scales);
    free(image);
    moira_dtensor_t view = {.buffer = *out_buffer, .dtype = q->dtype, .rank = 2};
    view.shape[0] = q->shape[0];
    view.shape[1] = q->shape[1];
    view.scale_offset = scale_offset;
    return view;
}

/* Random f32 weights [rows, cols] quantised to `dtype`; `deq` gets the values they stand for. */
static void make_weight(moira_dtype_t dtype, int64_t rows, int64_t cols, uint64_t seed,
                        moira_tensor_t *q, moira_tensor_t *scale, float *deq) {
    moira_tensor_t w;
    CHECK_OK(moira_tensor_alloc_f32(rows, cols, &w));
    moira_test_fill_uniform(w.data, (size_t)(rows * cols), seed, -0.2f, 0.2f);
    CHECK_OK(moira_tensor_convert(&w, dtype, q, scale));
    q->scale = scale;
    for (int64_t r = 0; r < rows; r++)
        moira_tensor_row_to_f32(q, r, deq + r * cols);
    moira_tensor_release(&w);
}

/* y[t, n] = sum_k x[t, k] w[n, k] in fp64. */
static void ref_linear(const float *x, const float *w, int64_t tokens, int64_t n, int64_t k,
                       double *y) {
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t j = 0; j < n; j++) {
            double sum = 0;
            for (int64_t i = 0; i < k; i++)
                sum += (double)x[t * k + i] * w[j * k + i];
            y[t * n + j] = sum;
        }
}

/* LINEAR [T, K] x [N, K]^T with x and y slices of wider rows, beta 0 then 1. */
static void check_linear(moira_dtype_t dtype, int64_t tokens) {
    enum { K = 224, N = 130, X_STRIDE = K + 9, Y_STRIDE = N + 7, X0 = 3, Y0 = 5 };
    moira_tensor_t q, scale;
    float *deq = malloc((size_t)(N * K) * sizeof(float));
    make_weight(dtype, N, K, 7 + (uint64_t)tokens, &q, &scale, deq);
    float *x = malloc((size_t)(tokens * X_STRIDE) * sizeof(float));
    float *xd = malloc((size_t)(tokens * K) * sizeof(float));
    float *y = malloc((size_t)(tokens * Y_STRIDE) * sizeof(float));
    moira_test_fill_uniform(x, (size_t)(tokens * X_STRIDE), 11 + (uint64_t)tokens, -1, 1);
    for (int64_t t = 0; t < tokens; t++)
        memcpy(xd + t * K, x + t * X_STRIDE + X0, K * sizeof(float));
    moira_test_fill_uniform(y, (size_t)(tokens * Y_STRIDE), 13 + (uint64_t)tokens, -1, 1);
    double *ref = malloc((size_t)(tokens * N) * sizeof(double));
    ref_linear(xd, deq, tokens, N, K, ref);
    moira_buffer_t *wb, *xb = upload_bytes(x, (size_t)(tokens * X_STRIDE) * 4);
    moira_dtensor_t w = upload_quantized(&q, &wb);
    moira_dtensor_t xv = {.buffer = xb,
                          .offset = X0 * 4,
                          .dtype = MOIRA_DTYPE_F32,
                          .rank = 2,
                          .shape = {tokens, K},
                          .row_stride = X_STRIDE};
    float *got = malloc((size_t)(tokens * Y_STRIDE) * sizeof(float));
    float *dense = malloc((size_t)(tokens * N) * sizeof(float));
    double *want = malloc((size_t)(tokens * N) * sizeof(double));
    for (int beta = 0; beta <= 1; beta++) {
        moira_buffer_t *yb = upload_bytes(y, (size_t)(tokens * Y_STRIDE) * 4);
        moira_dtensor_t yv = {.buffer = yb,
                              .offset = Y0 * 4,
                              .dtype = MOIRA_DTYPE_F32,
                              .rank = 2,
                              .shape = {tokens, N},
                              .row_stride = Y_STRIDE};
        moira_linear_params_t p = {.beta = (float)beta};
        CHECK_OK(moira_launch_op(queue, MOIRA_OP_LINEAR, &p, sizeof(p), 3,
                                 (moira_dtensor_t[]){xv, w, yv}));
        CHECK_OK(moira_queue_read(queue, yb, 0, got, (size_t)(tokens * Y_STRIDE) * 4));
        CHECK_OK(moira_queue_finish(queue));
        int touched = 0;
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t c = 0; c < Y_STRIDE; c++) {
                bool inside = c >= Y0 && c < Y0 + N;
                if (inside) {
                    dense[t * N + c - Y0] = got[t * Y_STRIDE + c];
                    want[t * N + c - Y0] = ref[t * N + c - Y0] + beta * y[t * Y_STRIDE + c];
                } else {
                    touched += got[t * Y_STRIDE + c] != y[t * Y_STRIDE + c];
                }
            }
        double nmse = moira_test_nmse(dense, want, (size_t)(tokens * N));
        CHECK_MSG(nmse <= limit, "linear %s T=%lld beta %d: NMSE %.3g above %.1g",
                  moira_dtype_name(dtype), (long long)tokens, beta, nmse, limit);
        CHECK_MSG(!touched, "linear %s T=%lld: %d values outside the output slice written",
                  moira_dtype_name(dtype), (long long)tokens, touched);
        moira_buffer_free(yb);
    }
    moira_buffer_free(wb);
    moira_buffer_free(xb);
    moira_tensor_release(&q);
    moira_tensor_release(&scale);
    free(deq), free(x), free(xd), free(y), free(ref), free(got), free(dense), free(want);
}

/* SWIGLU y = y + W2 (silu(W1 x) * (W3 x)), D = 96, I = 160 (the fused gate/up pairs). */
static void check_swiglu(moira_dtype_t dtype, int64_t tokens) {
    enum { D = 96, I = 160 };
    moira_tensor_t q[3], s[3];
    float *deq[3];
    moira_buffer_t *wb[3];
    moira_dtensor_t wv[3];
    for (int i = 0; i < 3; i++) {
        int64_t rows = i < 2 ? I : D, cols = i < 2 ? D : I;
        deq[i] = malloc((size_t)(rows * cols) * sizeof(float));
        make_weight(dtype, rows, cols, 30 + (uint64_t)i, &q[i], &s[i], deq[i]);
        wv[i] = upload_quantized(&q[i], &wb[i]);
    }
    float *x = malloc((size_t)(tokens * D) * sizeof(float));
    float *y = malloc((size_t)(tokens * D) * sizeof(float));
    moira_test_fill_uniform(x, (size_t)(tokens * D), 41, -1, 1);
    moira_test_fill_uniform(y, (size_t)(tokens * D), 43, -1, 1);
    double *gate = malloc((size_t)(tokens * I) * sizeof(double));
    double *up = malloc((size_t)(tokens * I) * sizeof(double));
    double *want = malloc((size_t)(tokens * D) * sizeof(double));
    ref_linear(x, deq[0], tokens, I, D, gate);
    ref_linear(x, deq[1], tokens, I, D, up);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t d = 0; d < D; d++) {
            double sum = 0;
            for (int64_t i = 0; i < I; i++) {
                double g = gate[t * I + i];
                sum += (g / (1.0 + exp(-g))) * up[t * I + i] * deq[2][d * I + i];
            }
            want[t * D + d] = y[t * D + d] + sum;
        }
    moira_buffer_t *xb = upload_bytes(x, (size_t)(tokens * D) * 4);
    moira_buffer_t *yb = upload_bytes(y, (size_t)(tokens * D) * 4);
    moira_dtensor_t xv = {.buffer = xb, .dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {tokens, D}};
    moira_dtensor_t yv = xv;
    yv.buffer = yb;
    moira_swiglu_params_t p = {.beta = 1};
    CHECK_OK(moira_launch_op(queue, MOIRA_OP_SWIGLU, &p, sizeof(p), 5,
                             (moira_dtensor_t[]){xv, wv[0], wv[1], wv[2], yv}));
    float *got = malloc((size_t)(tokens * D) * sizeof(float));
    CHECK_OK(moira_queue_read(queue, yb, 0, got, (size_t)(tokens * D) * 4));
    CHECK_OK(moira_queue_finish(queue));
    double nmse = moira_test_nmse(got, want, (size_t)(tokens * D));
    CHECK_MSG(nmse <= limit, "swiglu %s T=%lld: NMSE %.3g above %.1g", moira_dtype_name(dtype),
              (long long)tokens, nmse, limit);
    for (int i = 0; i < 3; i++) {
        moira_buffer_free(wb[i]);
        moira_tensor_release(&q[i]);
        moira_tensor_release(&s[i]);
        free(deq[i]);
    }
    moira_buffer_free(xb);
    moira_buffer_free(yb);
    free(x), free(y), free(gate), free(up), free(want), free(got);
}

/* Rows of 32 weights of 1.0 (E2M1 code 2) with scale bytes 0, 255 and 127, times inputs of 1.0:
 * 32 x 2^-127, NaN and 32 (hand-computed; the inputs quantise exactly). */
static void check_extreme_scales(void) {
    unsigned char data[16 * 16], scales[16];
    memset(data, 0x22, sizeof(data));
    memset(scales, 127, sizeof(scales));
    scales[0] = 0;
    scales[1] = 255;
    moira_tensor_t s = moira_tensor_view(MOIRA_DTYPE_E8M0, 2, (int64_t[]){16, 1}, scales);
    moira_tensor_t q = moira_tensor_view(MOIRA_DTYPE_MXFP4, 2, (int64_t[]){16, 32}, data);
    q.scale = &s;
    moira_buffer_t *wb, *xb, *yb;
    moira_dtensor_t w = upload_quantized(&q, &wb);
    float x[32], y[16];
    for (int i = 0; i < 32; i++)
        x[i] = 1.0f;
    xb = upload_bytes(x, sizeof(x));
    yb = upload_bytes(x, sizeof(y));
    moira_dtensor_t xv = {.buffer = xb, .dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {1, 32}};
    moira_dtensor_t yv = {.buffer = yb, .dtype = MOIRA_DTYPE_F32, .rank = 2, .shape = {1, 16}};
    moira_linear_params_t p = {.beta = 0};
    CHECK_OK(
        moira_launch_op(queue, MOIRA_OP_LINEAR, &p, sizeof(p), 3, (moira_dtensor_t[]){xv, w, yv}));
    CHECK_OK(moira_queue_read(queue, yb, 0, y, sizeof(y)));
    CHECK_OK(moira_queue_finish(queue));
    double tiny = 32.0 * ldexp(1.0, -127);
    CHECK_MSG(fabs(y[0] - tiny) < 1e-2 * tiny, "scale byte 0: %g, want %g", y[0], tiny);
    CHECK_MSG(isnan(y[1]), "scale byte 255: %g, want NaN", y[1]);
    CHECK_MSG(fabs(y[2] - 32.0) < 1e-4, "scale byte 127: %g, want 32", y[2]);
    moira_buffer_free(wb);
    moira_buffer_free(xb);
    moira_buffer_free(yb);
}

int main(void) {
    setenv("MOIRA_CPU_THREADS", "2", 0);
    moira_status_t status = moira_runtime_init();
    if (!status) status = moira_device_find("cpu:0", &device);
    if (!status) status = moira_queue_create(device, &queue);
    if (status) return moira_status_report(status);
    const moira_device_info_t *info = moira_device_info(device);
    limit = fmax(moira_precision_nmse_limit(info->compute_precision),
                 moira_precision_nmse_limit(info->quantized_precision));
    const moira_dtype_t dtypes[2] = {MOIRA_DTYPE_MXFP4, MOIRA_DTYPE_INT8};
    const int64_t tokens[3] = {1, 13, 70};
    for (int d = 0; d < 2; d++)
        for (int t = 0; t < 3; t++) {
            check_linear(dtypes[d], tokens[t]);
            check_swiglu(dtypes[d], tokens[t]);
        }
    check_extreme_scales();
    moira_queue_destroy(queue);
    moira_runtime_shutdown();
    return moira_test_finish("test_cpu_quant_linear");
}

/* The cpu's int8 tiles for quantised experts (backends/cpu/quant_panels.h) against an fp64
 * reference written here: the activations quantised by the same rule (int8 per block of 32, a
 * step of amax / 127) and the weights dequantised by runtime/weight_format.h, multiplied in
 * double. What is left is only f32 rounding, so the NMSE bound is tight (1e-10): a wrong
 * nibble, scale or offset anywhere shows. Odd shapes: rows not a multiple of 16, an INT8 depth
 * not a multiple of 32, 1 to 4 rows, 1, 2, 4 and 6 panels, SwiGLU pairs. Skips (77) without VNNI.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/quant_panels.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"
#include "tests/unit/testing.h"

static double silu(double z) {
    return z / (1 + exp(-z));
}

/* One format, one shape: `n_rows` activation rows of depth `cols` against the panels of a
 * [16 * panels, cols] matrix (the last panel short by `short_by` rows). */
static void check_shape(moira_dtype_t dtype, int64_t cols, int n_rows, int streams, bool swiglu,
                        int short_by, uint64_t seed) {
    moira_cpu_qtile_fn tile = moira_cpu_qtile_kernel(dtype);
    int64_t rows = 16 * streams - short_by, blocks = moira_cpu_quant_blocks(cols);
    int pairs = swiglu ? streams / 2 : 0;
    moira_tensor_t w, q, scale;
    CHECK_OK(moira_tensor_alloc_f32(rows, cols, &w));
    moira_test_fill_uniform(w.data, (size_t)(rows * cols), seed, -1, 1);
    CHECK_OK(moira_tensor_convert(&w, dtype, &q, &scale));
    size_t panel_bytes = moira_cpu_quant_panel_bytes(dtype, cols);
    unsigned char *panels = aligned_alloc(64, 6 * panel_bytes);
    for (int s = 0; s < streams; s++)
        moira_cpu_quant_pack_panel(dtype, q.data, scale.data, rows, cols, s,
                                   panels + s * panel_bytes);
    float x[4][256];
    int8_t xq[4][256];
    float xs[4][8];
    int32_t xc[4][8];
    moira_cpu_qtile_t t = {.rows = n_rows, .streams = streams, .blocks = blocks, .swiglu = swiglu};
    float out[4][96];
    t.out = &out[0][0];
    t.out_stride = 96;
    t.out_cols = swiglu ? 16 * pairs - short_by : (int)rows;
    for (int s = 0; s < streams; s++)
        t.panels[s] = panels + s * panel_bytes;
    float factor = dtype == MOIRA_DTYPE_MXFP4 ? 0.5f : 1.0f;
    for (int r = 0; r < n_rows; r++) {
        moira_test_fill_uniform(x[r], (size_t)cols, seed + 100 + (uint64_t)r, -2, 2);
        moira_cpu_quantize_row(x[r], cols, blocks, moira_cpu_quant_offset(dtype), factor, xq[r],
                               xs[r], xc[r]);
        t.xq[r] = xq[r], t.xs[r] = xs[r], t.xc[r] = xc[r];
    }
    memset(out, 0, sizeof(out));
    tile(&t);
    /* The reference: exactly dequantised weights times exactly dequantised activations. */
    double ref[4][96];
    float wrow[256];
    for (int r = 0; r < n_rows; r++) {
        for (int64_t j = 0; j < rows; j++) {
            moira_tensor_row_to_f32(&q, j, wrow);
            double sum = 0;
            for (int64_t k = 0; k < cols; k++) {
                /* xs includes MXFP4's 1/2 (its bytes hold 2 * e2m1): take it back out. */
                double xv = (double)xq[r][k] * xs[r][k / 32] / factor;
                sum += (double)wrow[k] * xv;
            }
            ref[r][j] = sum;
        }
    }
    float got[384];
    double want[384];
    int n = 0;
    for (int r = 0; r < n_rows; r++) {
        for (int c = 0; c < t.out_cols; c++) {
            got[n] = out[r][c];
            /* SwiGLU: pair q is rows 32q .. 32q + 15 (gate) and 32q + 16 .. (up). */
            int q = c / 16, j = c % 16;
            want[n++] = swiglu ? silu(ref[r][32 * q + j]) * ref[r][32 * q + 16 + j] : ref[r][c];
        }
    }
    double nmse = moira_test_nmse(got, want, (size_t)n);
    CHECK_MSG(nmse < 1e-10, "%s cols %lld rows %d streams %d%s: NMSE %.3g", moira_dtype_name(dtype),
              (long long)cols, n_rows, streams, swiglu ? " swiglu" : "", nmse);
    free(panels);
    moira_tensor_release(&q);
    moira_tensor_release(&scale);
    moira_tensor_release(&w);
}

/* E8M0 scale bytes 0 and 255 are 2^-127 and NaN (OCP MX), not the 0 and inf a bare shift of the
 * byte into an f32 exponent gives: panels holding one are found at packing time
 * (moira_cpu_quant_extreme) and run the exact tile. Rows of 32 weights of 1.0 (E2M1 code 2) against
 * activations of 1.0: row 0 (scale byte 0) sums to 32 * 2^-127, row 1 (255) is NaN, row 2 (127)
 * is 32. */
static void check_scale_extremes(void) {
    moira_cpu_qtile_fn tile = moira_cpu_qtile_kernel(MOIRA_DTYPE_MXFP4);
    unsigned char data[16 * 16], scales[16];
    memset(data, 0x22, sizeof(data));
    memset(scales, 127, sizeof(scales));
    scales[0] = 0;
    scales[1] = 255;
    size_t panel_bytes = moira_cpu_quant_panel_bytes(MOIRA_DTYPE_MXFP4, 32);
    unsigned char *panel = aligned_alloc(64, panel_bytes);
    moira_cpu_quant_pack_panel(MOIRA_DTYPE_MXFP4, data, scales, 16, 32, 0, panel);
    float x[32], xs[1], out[16];
    int8_t xq[32];
    int32_t xc[1];
    for (int k = 0; k < 32; k++)
        x[k] = 1.0f;
    moira_cpu_quantize_row(x, 32, 1, moira_cpu_quant_offset(MOIRA_DTYPE_MXFP4), 0.5f, xq, xs, xc);
    CHECK(moira_cpu_quant_extreme(MOIRA_DTYPE_MXFP4, scales, sizeof(scales)));
    CHECK(!moira_cpu_quant_extreme(MOIRA_DTYPE_MXFP4, scales + 2, sizeof(scales) - 2));
    moira_cpu_qtile_t t = {
        .rows = 1, .streams = 1, .blocks = 1, .out = out, .out_cols = 16, .exact_scales = true};
    t.xq[0] = xq, t.xs[0] = xs, t.xc[0] = xc, t.panels[0] = panel;
    tile(&t);
    double tiny = 32.0 * ldexp(1.0, -127);
    CHECK_MSG(fabs(out[0] - tiny) < 1e-2 * tiny, "scale byte 0: %g, want %g", out[0], tiny);
    CHECK_MSG(isnan(out[1]), "scale byte 255: %g, want NaN", out[1]);
    CHECK_MSG(fabs(out[2] - 32.0) < 1e-5, "scale byte 127: %g, want 32", out[2]);
    free(panel);
}

int main(void) {
    if (!moira_cpu_qtile_kernel(MOIRA_DTYPE_MXFP4)) {
        printf("test_cpu_quant: this CPU has no AVX-512 VNNI tile: skipped\n");
        return MOIRA_TEST_SKIP;
    }
    check_scale_extremes();
    uint64_t seed = 1;
    moira_dtype_t dtypes[2] = {MOIRA_DTYPE_MXFP4, MOIRA_DTYPE_INT8};
    for (int d = 0; d < 2; d++) {
        int64_t depths[3] = {32, 96, 256};
        int64_t odd = 72; /* INT8 only: a padded last block */
        for (int i = 0; i < (d ? 4 : 3); i++) {
            int64_t cols = i < 3 ? depths[i] : odd;
            for (int rows = 1; rows <= 4; rows++) {
                check_shape(dtypes[d], cols, rows, 1, false, 3, seed++);
                check_shape(dtypes[d], cols, rows, 2, false, 5, seed++);
                check_shape(dtypes[d], cols, rows, 2, true, 0, seed++);
                if (rows == 1) { /* 6 panels: the decode tile */
                    check_shape(dtypes[d], cols, rows, 6, false, 9, seed++);
                    check_shape(dtypes[d], cols, rows, 6, true, 0, seed++);
                }
                if (rows > 2) continue; /* 4 panels: tiles of 1 and 2 rows */
                check_shape(dtypes[d], cols, rows, 4, false, 7, seed++);
                check_shape(dtypes[d], cols, rows, 4, true, 0, seed++);
            }
        }
    }
    return moira_test_finish("test_cpu_quant");
}

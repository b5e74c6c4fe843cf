/* The Cube's int8 mode (davinci.h): W8A8 GEMMs with s32 accumulation and the dequantisation on
 * the way out, fractal by fractal as the hardware walks them. */
#include <string.h>

#include "backends/npu/davinci.h"
#include "backends/npu/fractal_nz.h"

#define K0 32                               /* int8 elements per fractal row: 32 bytes */
#define S8_FRACTAL (MOIRA_NPU_FRACTAL * K0) /* bytes of a 16 x 32 fractal */

static int64_t round32(int64_t n) {
    return (n + K0 - 1) / K0 * K0;
}

/* Byte index of (row, col) in an int8 NZ tile of `rows` rows: 16 x 32 fractals, column-block
 * major. */
static int64_t nz8_index(int64_t rows, int64_t row, int64_t col) {
    return ((col / K0) * moira_npu_round16(rows) + row) * K0 + col % K0;
}

/* Rows are copied as stored (the bytes are already int8): ND2NZ without a cast. */
void moira_npu_load_nd2nz_s8(moira_npu_core_t *core, moira_npu_region_t dst,
                             const moira_npu_gm_matrix_t *src, int64_t row0, int64_t col0,
                             int64_t rows, int64_t cols) {
    if (!moira_npu_ok(core)) return;
    size_t bytes = (size_t)(moira_npu_round16(rows) * round32(cols));
    int8_t *l1 = moira_npu_checked(core, dst, MOIRA_NPU_L1, bytes, "DataCopy GM->L1 (ND2NZ s8)");
    if (!l1) return;
    if (src->dtype != MOIRA_DTYPE_INT8 || row0 < 0 || col0 < 0 || row0 + rows > src->rows ||
        col0 + cols > src->cols) {
        moira_npu_fault(core, "ND2NZ s8: tile [%lld+%lld, %lld+%lld] of a [%lld, %lld] %s matrix",
                        (long long)row0, (long long)rows, (long long)col0, (long long)cols,
                        (long long)src->rows, (long long)src->cols, moira_dtype_name(src->dtype));
        return;
    }
    memset(l1, 0, bytes);
    for (int64_t r = 0; r < rows; r++) {
        int64_t row = row0 + r;
        if (src->row_map) row = src->row_map[row] / src->row_map_div;
        const int8_t *from = (const int8_t *)src->data + (row + src->row_base) * src->cols + col0;
        for (int64_t c = 0; c < cols; c++)
            l1[nz8_index(rows, r, c)] = from[c];
    }
    core->cost.mte2_bytes += (uint64_t)(rows * cols);
    if (src->row_map) core->cost.scalar_ops += (uint64_t)rows;
}

/* L0A: 16 x 32 fractals row-block major, the order the Cube walks A. */
void moira_npu_load_l0a_s8(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                           int64_t m, int64_t k) {
    size_t bytes = (size_t)(moira_npu_round16(m) * round32(k));
    const int8_t *l1 = moira_npu_checked(core, src, MOIRA_NPU_L1, bytes, "LoadData L1->L0A s8");
    int8_t *l0a = moira_npu_checked(core, dst, MOIRA_NPU_L0A, bytes, "LoadData L1->L0A s8");
    if (!l1 || !l0a) return;
    int64_t m1 = moira_npu_round16(m) / 16, k1 = round32(k) / K0;
    for (int64_t mi = 0; mi < m1; mi++)
        for (int64_t ki = 0; ki < k1; ki++)
            for (int r = 0; r < 16; r++)
                for (int c = 0; c < K0; c++)
                    l0a[(mi * k1 + ki) * S8_FRACTAL + r * K0 + c] =
                        l1[nz8_index(m, mi * 16 + r, ki * K0 + c)];
    core->cost.mte1_bytes += bytes;
}

/* L0B: 32 x 16 fractals k-block major, each holding its 16 columns' 32 k values in a row. */
void moira_npu_load_l0b_s8(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                           int64_t k, int64_t n) {
    size_t bytes = (size_t)(moira_npu_round16(n) * round32(k));
    const int8_t *l1 = moira_npu_checked(core, src, MOIRA_NPU_L1, bytes, "LoadData L1->L0B s8");
    int8_t *l0b = moira_npu_checked(core, dst, MOIRA_NPU_L0B, bytes, "LoadData L1->L0B s8");
    if (!l1 || !l0b) return;
    int64_t k1 = round32(k) / K0, n1 = moira_npu_round16(n) / 16;
    for (int64_t ki = 0; ki < k1; ki++)
        for (int64_t ni = 0; ni < n1; ni++)
            for (int nn = 0; nn < 16; nn++)
                for (int kk = 0; kk < K0; kk++)
                    l0b[(ki * n1 + ni) * S8_FRACTAL + nn * K0 + kk] =
                        l1[nz8_index(n, ni * 16 + nn, ki * K0 + kk)];
    core->cost.mte1_bytes += bytes;
}

/* Integer products and sums are exact (|sum| < 2^31 for k below 2^17), so the order does not
 * matter. One 16 x 32 x 16 fractal step is one Cube cycle in int8 mode, twice bf16's depth. */
void moira_npu_mmad_s8(moira_npu_core_t *core, moira_npu_region_t c, moira_npu_region_t a,
                       moira_npu_region_t b, int64_t m, int64_t k, int64_t n, bool accumulate) {
    if (!moira_npu_ok(core)) return;
    int64_t m1 = moira_npu_round16(m) / 16, k1 = round32(k) / K0, n1 = moira_npu_round16(n) / 16;
    const int8_t *l0a =
        moira_npu_checked(core, a, MOIRA_NPU_L0A, (size_t)(m1 * k1) * S8_FRACTAL, "Mmad s8 A");
    const int8_t *l0b =
        moira_npu_checked(core, b, MOIRA_NPU_L0B, (size_t)(k1 * n1) * S8_FRACTAL, "Mmad s8 B");
    int32_t *l0c = moira_npu_checked(core, c, MOIRA_NPU_L0C, (size_t)(m1 * n1) * 1024, "Mmad s8 C");
    if (!l0a || !l0b || !l0c) return;
    int64_t rows = m1 * 16;
    for (int64_t mi = 0; mi < m1; mi++)
        for (int64_t ni = 0; ni < n1; ni++)
            for (int r = 0; r < 16; r++)
                for (int j = 0; j < 16; j++) {
                    int32_t *out = &l0c[moira_npu_nz_index(rows, mi * 16 + r, ni * 16 + j)];
                    int32_t acc = accumulate ? *out : 0;
                    for (int64_t ki = 0; ki < k1; ki++) {
                        const int8_t *fa = l0a + (mi * k1 + ki) * S8_FRACTAL + r * K0;
                        const int8_t *fb = l0b + (ki * n1 + ni) * S8_FRACTAL + j * K0;
                        for (int kk = 0; kk < K0; kk++)
                            acc += (int32_t)fa[kk] * fb[kk];
                    }
                    *out = acc;
                }
    core->cost.cube_fractals += (uint64_t)(m1 * n1 * k1);
}

/* Each s32 sum becomes f32 once and is scaled by its token's and its weight row's scales. */
void moira_npu_fixpipe_deq(moira_npu_core_t *core, float *gm, int64_t gm_stride,
                           moira_npu_region_t src, int64_t tile_rows, int64_t m, int64_t n,
                           const float *row_scale, const float *col_scale, bool atomic_add) {
    size_t bytes = (size_t)moira_npu_nz_elements(tile_rows, n) * 4;
    const int32_t *l0c = moira_npu_checked(core, src, MOIRA_NPU_L0C, bytes, "Fixpipe s32->f32");
    if (!l0c) return;
    if (m > moira_npu_round16(tile_rows)) {
        moira_npu_fault(core, "Fixpipe s32: %lld rows of a %lld-row tile", (long long)m,
                        (long long)tile_rows);
        return;
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) {
            float value =
                (float)l0c[moira_npu_nz_index(tile_rows, r, j)] * (row_scale[r] * col_scale[j]);
            float *out = gm + r * gm_stride + j;
            *out = atomic_add ? *out + value : value;
        }
    core->cost.mte3_bytes += (uint64_t)(m * n) * 4 * (atomic_add ? 2 : 1);
    /* the per-token scale: one vector multiply over the tile */
    core->cost.vector_repeats += (uint64_t)(m * n + 63) / 64;
}

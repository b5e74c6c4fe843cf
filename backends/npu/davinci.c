/* The emulated DaVinci AI core (davinci.h). */
#include "backends/npu/davinci.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/npu/fractal_nz.h"
#include "runtime/mxfp4.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"

#define LANES_PER_REPEAT 64 /* 256 bytes of f32 */
#define FRACTAL_ELEMS (MOIRA_NPU_FRACTAL * MOIRA_NPU_FRACTAL)
#define ND2NZ_MAX_COLS 512

/* Names as Ascend's documentation writes them, for fault messages. */
const char *moira_npu_mem_name(moira_npu_mem_t mem) {
    static const char *names[MOIRA_NPU_MEM_COUNT] = {"L1", "L0A", "L0B", "L0C", "UB"};
    return mem >= 0 && mem < MOIRA_NPU_MEM_COUNT ? names[mem] : "?";
}

/* Each buffer gets exactly its DaVinci capacity, so an overflow cannot land in a neighbour. */
moira_status_t moira_npu_core_init(moira_npu_core_t *core, int index,
                                   const moira_npu_spec_t *spec) {
    memset(core, 0, sizeof(*core));
    core->index = index;
    core->spec = spec;
    uint32_t capacity[MOIRA_NPU_MEM_COUNT] = {spec->l1_bytes, spec->l0a_bytes, spec->l0b_bytes,
                                              spec->l0c_bytes, spec->ub_bytes};
    uint32_t alignment[MOIRA_NPU_MEM_COUNT] = {spec->l1_align, spec->l0a_align, spec->l0b_align,
                                               spec->l0c_align, spec->ub_align};
    for (int m = 0; m < MOIRA_NPU_MEM_COUNT; m++) {
        core->capacity[m] = capacity[m];
        core->alignment[m] = alignment[m] ? alignment[m] : 1;
        core->mem[m] = aligned_alloc(512, (capacity[m] + 511) / 512 * 512);
        if (!core->mem[m]) {
            moira_npu_core_release(core);
            return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC,
                                    "cannot back AI core %d's %s (%u bytes)", index,
                                    moira_npu_mem_name((moira_npu_mem_t)m), capacity[m]);
        }
    }
    return MOIRA_OK_STATUS;
}

/* Frees the buffers and any fault left over. */
void moira_npu_core_release(moira_npu_core_t *core) {
    for (int m = 0; m < MOIRA_NPU_MEM_COUNT; m++) {
        free(core->mem[m]);
        core->mem[m] = NULL;
    }
    moira_status_free(core->fault);
    core->fault = MOIRA_OK_STATUS;
}

/* A kernel starts on an idle core: nothing allocated, nothing counted, no fault. */
void moira_npu_core_begin(moira_npu_core_t *core, const char *kernel) {
    memset(core->allocated, 0, sizeof(core->allocated));
    memset(&core->cost, 0, sizeof(core->cost));
    moira_status_free(core->fault);
    core->fault = MOIRA_OK_STATUS;
    core->kernel = kernel;
}

/* The first fault is the one that explains the failure; later ones are its consequences. */
void moira_npu_fault(moira_npu_core_t *core, const char *fmt, ...) {
    if (core->fault) return;
    char message[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    core->fault = moira_acl_status(MOIRA_ACL_ERROR_RT_AICORE_EXCEPTION, "AI core %d, kernel %s: %s",
                                   core->index, core->kernel ? core->kernel : "?", message);
}

/* A bump allocator per buffer, like TPipe::InitBuffer: regions are aligned for the buffer. */
moira_npu_region_t moira_npu_alloc(moira_npu_core_t *core, moira_npu_mem_t mem, size_t bytes) {
    moira_npu_region_t empty = {mem, 0, 0};
    if (!moira_npu_ok(core)) return empty;
    uint32_t align = core->alignment[mem];
    size_t rounded = (bytes + align - 1) / align * align;
    size_t start = core->allocated[mem];
    if (rounded > core->capacity[mem] - start) {
        moira_npu_fault(core, "%s overflow: %zu more bytes asked with %zu of %u in use",
                        moira_npu_mem_name(mem), bytes, start, core->capacity[mem]);
        return empty;
    }
    core->allocated[mem] = (uint32_t)(start + rounded);
    return (moira_npu_region_t){mem, (uint32_t)start, (uint32_t)rounded};
}

/* The one place local addresses are formed: the region must start on the buffer's alignment,
 * and `bytes` must fit both the region and the physical buffer. */
void *moira_npu_checked(moira_npu_core_t *core, moira_npu_region_t region, moira_npu_mem_t want,
                        size_t bytes, const char *instruction) {
    if (!moira_npu_ok(core)) return NULL;
    if (region.mem != want) {
        moira_npu_fault(core, "%s: operand in %s, expected %s", instruction,
                        moira_npu_mem_name(region.mem), moira_npu_mem_name(want));
        return NULL;
    }
    if (region.offset % core->alignment[want] != 0) {
        moira_npu_fault(core, "%s: %s address 0x%x is not %u-byte aligned", instruction,
                        moira_npu_mem_name(want), region.offset, core->alignment[want]);
        return NULL;
    }
    if (bytes > region.bytes || (size_t)region.offset + bytes > core->capacity[want]) {
        moira_npu_fault(core,
                        "%s: %zu bytes at %s 0x%x overflow the %u-byte operand (buffer "
                        "holds %u bytes)",
                        instruction, bytes, moira_npu_mem_name(want), region.offset, region.bytes,
                        core->capacity[want]);
        return NULL;
    }
    return core->mem[want] + region.offset;
}

/* The scalar unit reads and writes local memory through the same checks as instructions. */
void *moira_npu_scalar_ptr(moira_npu_core_t *core, moira_npu_region_t region, size_t bytes) {
    return moira_npu_checked(core, region, region.mem, bytes, "scalar access");
}

/* ---- Data movement ---- */

void moira_npu_copy_gm_to_ub(moira_npu_core_t *core, moira_npu_region_t dst, const void *gm,
                             size_t bytes) {
    size_t padded = (bytes + 31) / 32 * 32;
    unsigned char *ub = moira_npu_checked(core, dst, MOIRA_NPU_UB, padded, "DataCopyPad GM->UB");
    if (!ub) return;
    if (bytes) memcpy(ub, gm, bytes);
    memset(ub + bytes, 0, padded - bytes);
    core->cost.mte2_bytes += bytes;
}

/* Only the bytes asked for leave the UB, so padding never reaches GM. */
void moira_npu_copy_ub_to_gm(moira_npu_core_t *core, void *gm, moira_npu_region_t src,
                             size_t bytes) {
    unsigned char *ub = moira_npu_checked(core, src, MOIRA_NPU_UB, bytes, "DataCopyPad UB->GM");
    if (!ub) return;
    if (bytes) memcpy(gm, ub, bytes);
    core->cost.mte3_bytes += bytes;
}

/* Columns [col0, col0 + cols) of a quantised row, decoded and scaled in f32. */
static void read_quantized_row(const moira_npu_gm_matrix_t *src, int64_t row, int64_t col0,
                               int64_t cols, float *out) {
    int64_t width = src->cols;
    for (int64_t c = 0; c < cols; c++) {
        int64_t k = col0 + c;
        if (src->dtype == MOIRA_DTYPE_INT8) {
            float scale = 1.0f;
            if (src->format_scales) memcpy(&scale, src->format_scales + 4 * row, sizeof(scale));
            out[c] = (float)(int8_t)src->data[row * width + k] * scale;
            continue;
        }
        uint8_t byte = src->data[row * (width / 2) + k / 2];
        float scale = src->format_scales
                          ? moira_e8m0_to_f32(src->format_scales[row * (width / 32) + k / 32])
                          : 1.0f;
        out[c] = moira_e2m1_to_f32(k & 1 ? byte >> 4 : byte) * scale;
    }
}

/* One source row's columns as f32, fp8 block scales applied. */
static void read_row(const moira_npu_gm_matrix_t *src, int64_t row, int64_t col0, int64_t cols,
                     float *out) {
    size_t element = moira_dtype_size(src->dtype);
    row += src->row_base;
    if (moira_dtype_is_quantized(src->dtype)) {
        read_quantized_row(src, row, col0, cols, out);
        return;
    }
    const unsigned char *p = src->data + ((size_t)(row * src->row_stride + col0)) * element;
    moira_convert_to_f32(src->dtype, p, out, (size_t)cols);
    if (src->dtype != MOIRA_DTYPE_F8_E4M3) return;
    const float *scales = src->scales + (row / MOIRA_FP8_BLOCK) * src->scale_cols;
    for (int64_t c = 0; c < cols; c++)
        out[c] *= scales[(col0 + c) / MOIRA_FP8_BLOCK];
}

/* The Cube takes only the two 16-bit float types. */
static bool cube_type_ok(moira_npu_core_t *core, moira_dtype_t cube_dtype, const char *what) {
    if (cube_dtype == MOIRA_DTYPE_BF16 || cube_dtype == MOIRA_DTYPE_F16) return true;
    moira_npu_fault(core, "%s: the Cube takes bf16 or f16, not %s", what,
                    moira_dtype_name(cube_dtype));
    return false;
}

/* Rows are read in ND from GM (through the row map for gathered activations) and laid out NZ. */
void moira_npu_load_nd2nz(moira_npu_core_t *core, moira_npu_region_t dst, moira_dtype_t cube_dtype,
                          const moira_npu_gm_matrix_t *src, int64_t row0, int64_t col0,
                          int64_t rows, int64_t cols) {
    if (!moira_npu_ok(core) || !cube_type_ok(core, cube_dtype, "ND2NZ")) return;
    size_t bytes = (size_t)moira_npu_nz_elements(rows, cols) * 2;
    uint16_t *l1 = moira_npu_checked(core, dst, MOIRA_NPU_L1, bytes, "DataCopy GM->L1 (ND2NZ)");
    if (!l1) return;
    if (cols > ND2NZ_MAX_COLS || row0 < 0 || col0 < 0 || row0 + rows > src->rows ||
        col0 + cols > src->cols) {
        moira_npu_fault(core, "ND2NZ: tile [%lld+%lld, %lld+%lld] outside a [%lld, %lld] matrix",
                        (long long)row0, (long long)rows, (long long)col0, (long long)cols,
                        (long long)src->rows, (long long)src->cols);
        return;
    }
    memset(l1, 0, bytes);
    float values[ND2NZ_MAX_COLS];
    for (int64_t r = 0; r < rows; r++) {
        int64_t row = row0 + r;
        if (src->row_map) row = src->row_map[row] / src->row_map_div;
        read_row(src, row, col0, cols, values);
        for (int64_t c = 0; c < cols; c++)
            l1[moira_npu_nz_index(rows, r, c)] = cube_dtype == MOIRA_DTYPE_BF16
                                                     ? moira_f32_to_bf16(values[c])
                                                     : moira_f32_to_f16(values[c]);
    }
    /* Bytes as stored: quantised rows at their format's size, with their scales. */
    core->cost.mte2_bytes += moira_dtype_is_quantized(src->dtype)
                                 ? (uint64_t)rows * (moira_weight_row_bytes(src->dtype, cols) +
                                                     moira_weight_scale_bytes(src->dtype, 1, cols))
                                 : (uint64_t)(rows * cols) * moira_dtype_size(src->dtype);
    if (src->row_map) core->cost.scalar_ops += (uint64_t)rows;
    if (src->dtype != cube_dtype)
        core->cost.vector_repeats +=
            (uint64_t)(rows * cols + LANES_PER_REPEAT - 1) / LANES_PER_REPEAT;
}

/* L0A holds fractals row-block major, the order the Cube walks A. */
void moira_npu_load_l0a(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                        int64_t m, int64_t k) {
    size_t bytes = (size_t)moira_npu_nz_elements(m, k) * 2;
    const uint16_t *l1 = moira_npu_checked(core, src, MOIRA_NPU_L1, bytes, "LoadData L1->L0A");
    uint16_t *l0a = moira_npu_checked(core, dst, MOIRA_NPU_L0A, bytes, "LoadData L1->L0A");
    if (!l1 || !l0a) return;
    int64_t m1 = moira_npu_round16(m) / 16, k1 = moira_npu_round16(k) / 16;
    for (int64_t mi = 0; mi < m1; mi++)
        for (int64_t ki = 0; ki < k1; ki++)
            for (int r = 0; r < 16; r++)
                for (int c = 0; c < 16; c++)
                    l0a[(mi * k1 + ki) * FRACTAL_ELEMS + r * 16 + c] =
                        l1[moira_npu_nz_index(m, mi * 16 + r, ki * 16 + c)];
    core->cost.mte1_bytes += bytes;
}

/* L0B holds fractals k-block major with each fractal transposed, the order the Cube walks B. */
void moira_npu_load_l0b(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                        int64_t k, int64_t n, bool src_is_nk) {
    size_t bytes = (size_t)moira_npu_nz_elements(k, n) * 2;
    const uint16_t *l1 = moira_npu_checked(core, src, MOIRA_NPU_L1, bytes, "LoadData L1->L0B");
    uint16_t *l0b = moira_npu_checked(core, dst, MOIRA_NPU_L0B, bytes, "LoadData L1->L0B");
    if (!l1 || !l0b) return;
    int64_t k1 = moira_npu_round16(k) / 16, n1 = moira_npu_round16(n) / 16;
    for (int64_t ki = 0; ki < k1; ki++)
        for (int64_t ni = 0; ni < n1; ni++)
            for (int nn = 0; nn < 16; nn++)
                for (int kk = 0; kk < 16; kk++) {
                    int64_t row_k = ki * 16 + kk, col_n = ni * 16 + nn;
                    int64_t from = src_is_nk ? moira_npu_nz_index(n, col_n, row_k)
                                             : moira_npu_nz_index(k, row_k, col_n);
                    l0b[(ki * n1 + ni) * FRACTAL_ELEMS + nn * 16 + kk] = l1[from];
                }
    core->cost.mte1_bytes += bytes;
}

/* Products of two bf16 (or two f16) values are exact in f32, so the only rounding is the f32
 * accumulation, in k order within each fractal and fractal by fractal along k, as the Cube's adder
 * tree into L0C does up to summation order. */
void moira_npu_mmad(moira_npu_core_t *core, moira_npu_region_t c, moira_npu_region_t a,
                    moira_npu_region_t b, moira_dtype_t cube_dtype, int64_t m, int64_t k, int64_t n,
                    bool accumulate) {
    if (!moira_npu_ok(core) || !cube_type_ok(core, cube_dtype, "Mmad")) return;
    int64_t m1 = moira_npu_round16(m) / 16, k1 = moira_npu_round16(k) / 16;
    int64_t n1 = moira_npu_round16(n) / 16;
    const uint16_t *l0a =
        moira_npu_checked(core, a, MOIRA_NPU_L0A, (size_t)(m1 * k1) * 512, "Mmad A");
    const uint16_t *l0b =
        moira_npu_checked(core, b, MOIRA_NPU_L0B, (size_t)(k1 * n1) * 512, "Mmad B");
    float *l0c = moira_npu_checked(core, c, MOIRA_NPU_L0C, (size_t)(m1 * n1) * 1024, "Mmad C");
    if (!l0a || !l0b || !l0c) return;
    int64_t rows = m1 * 16;
    float fa[FRACTAL_ELEMS], fb[FRACTAL_ELEMS];
    for (int64_t mi = 0; mi < m1; mi++)
        for (int64_t ni = 0; ni < n1; ni++) {
            float acc[FRACTAL_ELEMS];
            for (int r = 0; r < 16; r++)
                for (int j = 0; j < 16; j++)
                    acc[r * 16 + j] =
                        accumulate ? l0c[moira_npu_nz_index(rows, mi * 16 + r, ni * 16 + j)] : 0;
            for (int64_t ki = 0; ki < k1; ki++) {
                const uint16_t *fra = l0a + (mi * k1 + ki) * FRACTAL_ELEMS;
                const uint16_t *frb = l0b + (ki * n1 + ni) * FRACTAL_ELEMS;
                moira_convert_to_f32(cube_dtype, fra, fa, FRACTAL_ELEMS);
                moira_convert_to_f32(cube_dtype, frb, fb, FRACTAL_ELEMS);
                for (int r = 0; r < 16; r++)
                    for (int j = 0; j < 16; j++) {
                        float sum = 0;
                        for (int kk = 0; kk < 16; kk++)
                            sum += fa[r * 16 + kk] * fb[j * 16 + kk];
                        acc[r * 16 + j] += sum;
                    }
                core->cost.cube_fractals++;
            }
            for (int r = 0; r < 16; r++)
                for (int j = 0; j < 16; j++)
                    l0c[moira_npu_nz_index(rows, mi * 16 + r, ni * 16 + j)] = acc[r * 16 + j];
        }
}

/* FIXPIPE converts on the way out; atomic add lets split or residual results accumulate in GM. */
void moira_npu_fixpipe(moira_npu_core_t *core, void *gm, moira_dtype_t dtype, int64_t gm_stride,
                       moira_npu_region_t src, int64_t tile_rows, int64_t m, int64_t n,
                       bool atomic_add) {
    size_t bytes = (size_t)moira_npu_nz_elements(tile_rows, n) * 4;
    const float *l0c = moira_npu_checked(core, src, MOIRA_NPU_L0C, bytes, "Fixpipe L0C->GM");
    if (!l0c) return;
    if (m > moira_npu_round16(tile_rows) ||
        (dtype != MOIRA_DTYPE_F32 && dtype != MOIRA_DTYPE_F16 && dtype != MOIRA_DTYPE_BF16) ||
        (atomic_add && dtype != MOIRA_DTYPE_F32)) {
        moira_npu_fault(core, "Fixpipe: %lld rows of a %lld-row tile to %s%s", (long long)m,
                        (long long)tile_rows, moira_dtype_name(dtype),
                        atomic_add ? " with atomic add" : "");
        return;
    }
    size_t element = moira_dtype_size(dtype);
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) {
            float value = l0c[moira_npu_nz_index(tile_rows, r, j)];
            unsigned char *out = (unsigned char *)gm + (size_t)(r * gm_stride + j) * element;
            if (dtype == MOIRA_DTYPE_F32) {
                float *f = (float *)out;
                *f = atomic_add ? *f + value : value;
            } else {
                moira_convert_from_f32(dtype, &value, out, 1);
            }
        }
    core->cost.mte3_bytes += (uint64_t)(m * n) * element * (atomic_add ? 2 : 1);
}

/* ---- Vector unit ---- */

static uint64_t repeats(int64_t count) {
    return (uint64_t)(count + LANES_PER_REPEAT - 1) / LANES_PER_REPEAT;
}

/* f32 vector operands are checked like every other local access. */
static float *vector_operand(moira_npu_core_t *core, moira_npu_region_t region, int64_t count,
                             const char *instruction) {
    return moira_npu_checked(core, region, MOIRA_NPU_UB, (size_t)count * 4, instruction);
}

/* One lane of a binary vector instruction. */
static float apply(moira_npu_vop_t op, float x, float y) {
    switch (op) {
    case MOIRA_NPU_VADD:
        return x + y;
    case MOIRA_NPU_VSUB:
        return x - y;
    case MOIRA_NPU_VMUL:
        return x * y;
    case MOIRA_NPU_VDIV:
        return x / y;
    case MOIRA_NPU_VMAX:
        return x > y ? x : y;
    }
    return x;
}

/* f16 operands are widened, combined in f32 and rounded once: for these five operations that is
 * the correctly rounded f16 result (f32 carries more than twice f16's precision). */
void moira_npu_vbinary(moira_npu_core_t *core, moira_npu_vop_t op, moira_dtype_t dtype,
                       moira_npu_region_t dst, moira_npu_region_t a, moira_npu_region_t b,
                       int64_t count) {
    static const char *names[] = {"Add", "Sub", "Mul", "Div", "Max"};
    if (dtype != MOIRA_DTYPE_F32 && dtype != MOIRA_DTYPE_F16) {
        moira_npu_fault(core, "%s: vector operands are f32 or f16, not %s", names[op],
                        moira_dtype_name(dtype));
        return;
    }
    size_t bytes = (size_t)count * moira_dtype_size(dtype);
    void *d = moira_npu_checked(core, dst, MOIRA_NPU_UB, bytes, names[op]);
    const void *x = moira_npu_checked(core, a, MOIRA_NPU_UB, bytes, names[op]);
    const void *y = moira_npu_checked(core, b, MOIRA_NPU_UB, bytes, names[op]);
    if (!d || !x || !y) return;
    if (dtype == MOIRA_DTYPE_F32) {
        for (int64_t i = 0; i < count; i++)
            ((float *)d)[i] = apply(op, ((const float *)x)[i], ((const float *)y)[i]);
    } else {
        for (int64_t i = 0; i < count; i++)
            ((uint16_t *)d)[i] =
                moira_f32_to_f16(apply(op, moira_f16_to_f32(((const uint16_t *)x)[i]),
                                       moira_f16_to_f32(((const uint16_t *)y)[i])));
    }
    core->cost.vector_repeats += (bytes + 255) / 256;
}

/* Bytes of a packed bit mask for `count` elements, as the UB stores it (32-byte blocks). */
static size_t mask_bytes(int64_t count) {
    return ((size_t)(count + 7) / 8 + 31) / 32 * 32;
}

/* Masks are how vector code branches: compare once, then select. */
void moira_npu_vcompare_scalar(moira_npu_core_t *core, moira_npu_region_t mask,
                               moira_npu_region_t src, moira_npu_cmp_t cmp, float scalar,
                               int64_t count) {
    const float *s = vector_operand(core, src, count, "CompareScalar");
    uint8_t *m = moira_npu_checked(core, mask, MOIRA_NPU_UB, mask_bytes(count), "CompareScalar");
    if (!s || !m) return;
    memset(m, 0, mask_bytes(count));
    for (int64_t i = 0; i < count; i++) {
        bool bit = false;
        switch (cmp) {
        case MOIRA_NPU_CMP_LT:
            bit = s[i] < scalar;
            break;
        case MOIRA_NPU_CMP_LE:
            bit = s[i] <= scalar;
            break;
        case MOIRA_NPU_CMP_GT:
            bit = s[i] > scalar;
            break;
        case MOIRA_NPU_CMP_GE:
            bit = s[i] >= scalar;
            break;
        case MOIRA_NPU_CMP_EQ:
            bit = s[i] == scalar;
            break;
        }
        if (bit) m[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    core->cost.vector_repeats += repeats(count);
}

/* Applies a mask without branches, as the hardware does. */
void moira_npu_vselect(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t mask,
                       moira_npu_region_t src, float otherwise, int64_t count) {
    float *d = vector_operand(core, dst, count, "Select");
    const float *s = vector_operand(core, src, count, "Select");
    const uint8_t *m = moira_npu_checked(core, mask, MOIRA_NPU_UB, mask_bytes(count), "Select");
    if (!d || !s || !m) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = (m[i / 8] >> (i % 8)) & 1 ? s[i] : otherwise;
    core->cost.vector_repeats += repeats(count);
}

/* Index vectors (key positions, offsets) without a trip through the scalar unit. */
void moira_npu_vindex(moira_npu_core_t *core, moira_npu_region_t dst, float first, int64_t count) {
    float *d = vector_operand(core, dst, count, "ArithProgression");
    if (!d) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = first + (float)i;
    core->cost.vector_repeats += repeats(count);
}

/* Scaling by a scalar register, one repeat per 64 lanes. */
void moira_npu_vmuls(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                     float scalar, int64_t count) {
    float *d = vector_operand(core, dst, count, "Muls");
    const float *s = vector_operand(core, src, count, "Muls");
    if (!d || !s) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = s[i] * scalar;
    core->cost.vector_repeats += repeats(count);
}

/* Adding a scalar register, one repeat per 64 lanes. */
void moira_npu_vadds(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                     float scalar, int64_t count) {
    float *d = vector_operand(core, dst, count, "Adds");
    const float *s = vector_operand(core, src, count, "Adds");
    if (!d || !s) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = s[i] + scalar;
    core->cost.vector_repeats += repeats(count);
}

/* Exp in fp32, as softmax needs. */
void moira_npu_vexp(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                    int64_t count) {
    float *d = vector_operand(core, dst, count, "Exp");
    const float *s = vector_operand(core, src, count, "Exp");
    if (!d || !s) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = expf(s[i]);
    core->cost.vector_repeats += repeats(count);
}

/* Sigmoid is Muls, Exp, Adds and a reciprocal on the hardware: four repeats per 64 lanes. */
void moira_npu_vsigmoid(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                        int64_t count) {
    float *d = vector_operand(core, dst, count, "Sigmoid");
    const float *s = vector_operand(core, src, count, "Sigmoid");
    if (!d || !s) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = 1.0f / (1.0f + expf(-s[i]));
    core->cost.vector_repeats += 4 * repeats(count);
}

/* Fills a region with a scalar (zeroing accumulators, masking). */
void moira_npu_vdup(moira_npu_core_t *core, moira_npu_region_t dst, float value, int64_t count) {
    float *d = vector_operand(core, dst, count, "Duplicate");
    if (!d) return;
    for (int64_t i = 0; i < count; i++)
        d[i] = value;
    core->cost.vector_repeats += repeats(count);
}

/* A pairwise tree, as the hardware's repeat-then-lane reduction sums. */
static float tree_sum(const float *values, int64_t count) {
    if (count <= 8) {
        float sum = 0;
        for (int64_t i = 0; i < count; i++)
            sum += values[i];
        return sum;
    }
    int64_t half = count / 2;
    return tree_sum(values, half) + tree_sum(values + half, count - half);
}

/* The sum leaves the vector unit for the scalar unit, which costs one extra step. */
float moira_npu_vreduce_sum(moira_npu_core_t *core, moira_npu_region_t src, int64_t count) {
    const float *s = vector_operand(core, src, count, "ReduceSum");
    if (!s) return 0;
    core->cost.vector_repeats += repeats(count) + 1;
    core->cost.scalar_ops += 1;
    return tree_sum(s, count);
}

/* The maximum leaves the vector unit for the scalar unit, which costs one extra step. */
float moira_npu_vreduce_max(moira_npu_core_t *core, moira_npu_region_t src, int64_t count) {
    const float *s = vector_operand(core, src, count, "ReduceMax");
    if (!s) return 0;
    float best = -INFINITY;
    for (int64_t i = 0; i < count; i++)
        if (s[i] > best) best = s[i];
    core->cost.vector_repeats += repeats(count) + 1;
    core->cost.scalar_ops += 1;
    return best;
}

/* Gathers within the UB by index; an index past the source is a fault, not a stray read. */
void moira_npu_vgather(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                       moira_npu_region_t index, int64_t count) {
    float *d = vector_operand(core, dst, count, "Gather");
    const int32_t *idx = (const int32_t *)vector_operand(core, index, count, "Gather");
    const float *s = moira_npu_checked(core, src, MOIRA_NPU_UB, 4, "Gather");
    if (!d || !idx || !s) return;
    int64_t limit = src.bytes / 4;
    for (int64_t i = 0; i < count; i++) {
        if (idx[i] < 0 || idx[i] >= limit) {
            moira_npu_fault(core, "Gather: index %d outside a %lld-element source", idx[i],
                            (long long)limit);
            return;
        }
    }
    for (int64_t i = 0; i < count; i++)
        d[i] = s[idx[i]];
    core->cost.vector_repeats += repeats(count);
}

/* Only the casts the vector unit has: between f32 and the 16-bit floats, and i32 to f32. */
void moira_npu_vcast(moira_npu_core_t *core, moira_npu_region_t dst, moira_dtype_t dst_dtype,
                     moira_npu_region_t src, moira_dtype_t src_dtype, int64_t count) {
    bool narrow_ok = dst_dtype == MOIRA_DTYPE_F16 || dst_dtype == MOIRA_DTYPE_BF16;
    bool to_f32 = dst_dtype == MOIRA_DTYPE_F32 &&
                  (src_dtype == MOIRA_DTYPE_F16 || src_dtype == MOIRA_DTYPE_BF16);
    bool from_f32 = src_dtype == MOIRA_DTYPE_F32 && narrow_ok;
    bool int_to_f32 = src_dtype == MOIRA_DTYPE_I32 && dst_dtype == MOIRA_DTYPE_F32;
    if (!to_f32 && !from_f32 && !int_to_f32) {
        moira_npu_fault(core, "Cast %s -> %s is not a vector cast", moira_dtype_name(src_dtype),
                        moira_dtype_name(dst_dtype));
        return;
    }
    void *d = moira_npu_checked(core, dst, MOIRA_NPU_UB,
                                (size_t)count * moira_dtype_size(dst_dtype), "Cast");
    const void *s = moira_npu_checked(core, src, MOIRA_NPU_UB,
                                      (size_t)count * moira_dtype_size(src_dtype), "Cast");
    if (!d || !s) return;
    if (int_to_f32) {
        for (int64_t i = 0; i < count; i++)
            ((float *)d)[i] = (float)((const int32_t *)s)[i];
    } else if (to_f32) {
        moira_convert_to_f32(src_dtype, s, d, (size_t)count);
    } else {
        moira_convert_from_f32(dst_dtype, s, d, (size_t)count);
    }
    core->cost.vector_repeats += repeats(count);
}

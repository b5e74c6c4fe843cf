/* The emulated DaVinci AI core: its local buffers, data-move instructions, the Cube and the
 * Vector units. Kernels (kernels_*.c) are written against this interface only, the way Ascend C
 * kernels are written against the core's instructions.
 *
 * Every core owns L1 (512 KB), L0A and L0B (64 KB each), L0C (128 KB) and the Unified Buffer
 * (192 KB). A kernel carves them with moira_npu_alloc (like Ascend C's TPipe::InitBuffer) and
 * names pieces as regions. Every instruction checks its operands: a region outside its buffer, a
 * start address off the buffer's alignment (32 B for UB and L1, 512 B for L0A/L0B, 64 B for L0C)
 * or a length past the region is a fault. A fault is sticky like an AI core exception: the core
 * stops executing (later instructions do nothing) and the launch fails with
 * ACL_ERROR_RT_AICORE_EXCEPTION naming the instruction, core and addresses.
 *
 * Global memory (GM) is the HBM that moira_acl_malloc hands out; kernels address it with plain
 * pointers that moira_op_validate has already bounds-checked against their buffers.
 *
 * Numerics: the Cube multiplies bf16 or fp16 inputs (moira_npu_load_nd2nz rounds to that type on
 * the way into L1) and accumulates in fp32 in L0C; Vector instructions compute in fp32. The
 * kernels feed the Cube bf16: activations arrive as f32 and bf16 keeps their range. */
#ifndef MOIRA_BACKENDS_NPU_DAVINCI_H
#define MOIRA_BACKENDS_NPU_DAVINCI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/npu/acl.h"
#include "backends/npu/cost_model.h"
#include "runtime/dtype.h"

typedef enum moira_npu_mem {
    MOIRA_NPU_L1 = 0,
    MOIRA_NPU_L0A,
    MOIRA_NPU_L0B,
    MOIRA_NPU_L0C,
    MOIRA_NPU_UB,
    MOIRA_NPU_MEM_COUNT,
} moira_npu_mem_t;

const char *moira_npu_mem_name(moira_npu_mem_t mem);

/* A piece of one local buffer: `bytes` from byte `offset`. A value, never owning anything. */
typedef struct moira_npu_region {
    moira_npu_mem_t mem;
    uint32_t offset, bytes;
} moira_npu_region_t;

/* One AI core's state. Kernels get a core from the launch and never keep it. */
typedef struct moira_npu_core {
    int index;
    const moira_npu_spec_t *spec;            /* borrowed */
    unsigned char *mem[MOIRA_NPU_MEM_COUNT]; /* owned: the local buffers */
    uint32_t capacity[MOIRA_NPU_MEM_COUNT], alignment[MOIRA_NPU_MEM_COUNT];
    uint32_t allocated[MOIRA_NPU_MEM_COUNT];
    moira_npu_cost_t cost;
    moira_status_t fault; /* owned; the first fault, OK while the core runs */
    const char *kernel;   /* static name for messages */
} moira_npu_core_t;

/* Allocates the local buffers of a core of `spec`. Release with moira_npu_core_release. */
moira_status_t moira_npu_core_init(moira_npu_core_t *core, int index, const moira_npu_spec_t *spec);
void moira_npu_core_release(moira_npu_core_t *core);

/* Starts a kernel on the core: buffers empty, counters zero, no fault. */
void moira_npu_core_begin(moira_npu_core_t *core, const char *kernel);

static inline bool moira_npu_ok(const moira_npu_core_t *core) {
    return core->fault == MOIRA_OK_STATUS;
}

/* Records a fault (the first one wins). */
void moira_npu_fault(moira_npu_core_t *core, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Takes `bytes` (rounded up to the buffer's alignment) from local buffer `mem`; past its capacity
 * it faults and returns an empty region. */
moira_npu_region_t moira_npu_alloc(moira_npu_core_t *core, moira_npu_mem_t mem, size_t bytes);

/* The part of `region` from `byte_offset`, `bytes` long (checked when an instruction uses it). */
static inline moira_npu_region_t moira_npu_sub(moira_npu_region_t region, size_t byte_offset,
                                               size_t bytes) {
    return (moira_npu_region_t){region.mem, region.offset + (uint32_t)byte_offset, (uint32_t)bytes};
}

/* Scalar-unit access to `bytes` of a region: the checked host address, or NULL after a fault.
 * Callers count their scalar work with moira_npu_scalar. */
void *moira_npu_scalar_ptr(moira_npu_core_t *core, moira_npu_region_t region, size_t bytes);

static inline void moira_npu_scalar(moira_npu_core_t *core, uint64_t ops) {
    core->cost.scalar_ops += ops;
}

/* ---- Data movement (MTE2 in, MTE3 and FIXPIPE out, MTE1 inside) ---- */

/* GM -> UB (DataCopyPad): copies `bytes` to `dst` and zero-pads to the 32-byte block. */
void moira_npu_copy_gm_to_ub(moira_npu_core_t *core, moira_npu_region_t dst, const void *gm,
                             size_t bytes);

/* UB -> GM (DataCopyPad): exactly `bytes` leave. */
void moira_npu_copy_ub_to_gm(moira_npu_core_t *core, void *gm, moira_npu_region_t src,
                             size_t bytes);

/* A matrix in GM as a matmul operand: any float dtype (fp8 with its 128x128 block scales), rows
 * `row_stride` elements apart, optionally gathered through a row map (GM row of tile row r is
 * row_map[r] / row_map_div). */
typedef struct moira_npu_gm_matrix {
    const unsigned char *data; /* element (0, 0), borrowed */
    moira_dtype_t dtype;
    int64_t rows, cols, row_stride;
    int64_t row_base;    /* the operand starts at this row of the stored matrix (fp8 scales count
                          * blocks from the stored matrix's row 0) */
    const float *scales; /* fp8 only: this matrix's [ceil(rows/128), ceil(cols/128)] scales */
    int64_t scale_cols;
    /* MXFP4 (E8M0 [rows, cols/32]) or INT8 (f32 [rows]) only: this matrix's scales; the data is
     * then contiguous, row_stride == cols (runtime/weight_format.h) */
    const unsigned char *format_scales;
    const int32_t *row_map; /* optional */
    int32_t row_map_div;
} moira_npu_gm_matrix_t;

/* GM -> L1 with ND2NZ: rows [row0, row0 + rows) and columns [col0, col0 + cols) of `src` land in
 * `dst` as an NZ tile of `cube_dtype` (bf16 or f16), round16(rows) x round16(cols), zero padded.
 * Where the source has another type the conversion stands for the Vector Cast a CANN kernel runs
 * in UB on the way (counted as vector repeats); the layout change is what MTE2's ND2NZ mode does.
 * MXFP4 and INT8 weights are expanded the same way (nibbles or bytes times their scales, in f32,
 * then rounded to the Cube's type), as a DaVinci without an fp4 Cube mode would have to.
 */
void moira_npu_load_nd2nz(moira_npu_core_t *core, moira_npu_region_t dst, moira_dtype_t cube_dtype,
                          const moira_npu_gm_matrix_t *src, int64_t row0, int64_t col0,
                          int64_t rows, int64_t cols);

/* The host address of `bytes` at `region`, which must be in `want`, aligned and within both
 * the region and the buffer; NULL (and a fault naming `instruction`) otherwise. */
void *moira_npu_checked(moira_npu_core_t *core, moira_npu_region_t region, moira_npu_mem_t want,
                        size_t bytes, const char *instruction);

/* ---- The Cube's int8 mode (davinci_int8.c): s8 x s8 into s32, fractals of 16 x 32 bytes for
 * A ([m, k]: 16 rows by 32 k) and 32 x 16 for B ([k, n]), L0C 16 x 16 s32, as on Ascend 910B.
 * Both operands are INT8 matrices with one f32 scale per row (weights as stored; activations
 * quantised per token by moira_npu_quantize_rows), applied by FIXPIPE's dequantisation. ---- */

/* GM -> L1: rows [row0, row0 + rows) and columns [col0, col0 + cols) of an INT8 `src` (through
 * its row map) as an int8 NZ tile of round16(rows) x round32(cols) bytes, zero padded. */
void moira_npu_load_nd2nz_s8(moira_npu_core_t *core, moira_npu_region_t dst,
                             const moira_npu_gm_matrix_t *src, int64_t row0, int64_t col0,
                             int64_t rows, int64_t cols);

/* L1 -> L0A / L0B for int8 tiles; B's L1 tile holds [n, k] (a weight as nn.Linear stores it). */
void moira_npu_load_l0a_s8(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                           int64_t m, int64_t k);
void moira_npu_load_l0b_s8(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                           int64_t k, int64_t n);

/* Cube int8: C[m, n] (s32, NZ in L0C) = (accumulate ? C : 0) + A[m, k] B[k, n], exactly. */
void moira_npu_mmad_s8(moira_npu_core_t *core, moira_npu_region_t c, moira_npu_region_t a,
                       moira_npu_region_t b, int64_t m, int64_t k, int64_t n, bool accumulate);

/* L0C -> GM with dequantisation: the [m, n] corner of an s32 tile of `tile_rows` rows, as f32
 * s32 x row_scale[r] x col_scale[j] (FIXPIPE's per-channel scale times the per-token one the
 * vector unit applies), written or atomically added with `gm_stride`. Scales are GM f32. */
void moira_npu_fixpipe_deq(moira_npu_core_t *core, float *gm, int64_t gm_stride,
                           moira_npu_region_t src, int64_t tile_rows, int64_t m, int64_t n,
                           const float *row_scale, const float *col_scale, bool atomic_add);

/* L1 -> L0A (LoadData): an NZ tile [m, k] becomes the Cube's left operand. */
void moira_npu_load_l0a(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                        int64_t m, int64_t k);

/* L1 -> L0B: the Cube's right operand B [k, n]. `src_is_nk` says the L1 tile holds B transposed
 * (an [n, k] weight as nn.Linear stores it); otherwise it holds [k, n] and the move transposes
 * each fractal (LoadDataWithTranspose). */
void moira_npu_load_l0b(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                        int64_t k, int64_t n, bool src_is_nk);

/* Cube: C[m, n] (f32, NZ in L0C) = (accumulate ? C : 0) + A[m, k] B[k, n] with A and B of
 * `cube_dtype` (bf16 or f16), one 16x16x16 fractal multiply-accumulate at a time. Dimensions are
 * rounded up to 16 (the padding is zero). */
void moira_npu_mmad(moira_npu_core_t *core, moira_npu_region_t c, moira_npu_region_t a,
                    moira_npu_region_t b, moira_dtype_t cube_dtype, int64_t m, int64_t k, int64_t n,
                    bool accumulate);

/* L0C -> GM (FIXPIPE): the [m, n] corner of an f32 NZ tile with `tile_rows` rows, converted to
 * `dtype` (f32, f16 or bf16), written with `gm_stride` elements between rows; `atomic_add` adds
 * to GM instead of overwriting (f32 only, like SetAtomicAdd). */
void moira_npu_fixpipe(moira_npu_core_t *core, void *gm, moira_dtype_t dtype, int64_t gm_stride,
                       moira_npu_region_t src, int64_t tile_rows, int64_t m, int64_t n,
                       bool atomic_add);

/* ---- Vector unit: f32 (and f16 for binary ops) over the UB in 256-byte repeats (64 f32 or 128
 * f16 lanes); a partial last repeat runs under a lane mask. Operands start 32-byte aligned and
 * hold `count` elements. ---- */

typedef enum moira_npu_vop {
    MOIRA_NPU_VADD,
    MOIRA_NPU_VSUB,
    MOIRA_NPU_VMUL,
    MOIRA_NPU_VDIV,
    MOIRA_NPU_VMAX,
} moira_npu_vop_t;

/* dst = a OP b, elementwise, in `dtype` (f32 or f16). dst may be a or b. */
void moira_npu_vbinary(moira_npu_core_t *core, moira_npu_vop_t op, moira_dtype_t dtype,
                       moira_npu_region_t dst, moira_npu_region_t a, moira_npu_region_t b,
                       int64_t count);

typedef enum moira_npu_cmp {
    MOIRA_NPU_CMP_LT,
    MOIRA_NPU_CMP_LE,
    MOIRA_NPU_CMP_GT,
    MOIRA_NPU_CMP_GE,
    MOIRA_NPU_CMP_EQ,
} moira_npu_cmp_t;

/* Bit i of `mask` = (src[i] CMP scalar) (CompareScalar): bits packed little-endian in bytes, the
 * mask region holding ceil(count / 8) bytes rounded up to 32. */
void moira_npu_vcompare_scalar(moira_npu_core_t *core, moira_npu_region_t mask,
                               moira_npu_region_t src, moira_npu_cmp_t cmp, float scalar,
                               int64_t count);

/* dst[i] = mask bit i ? src[i] : otherwise (Select against a scalar). dst may be src. */
void moira_npu_vselect(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t mask,
                       moira_npu_region_t src, float otherwise, int64_t count);

/* dst[i] = first + i (ArithProgression). */
void moira_npu_vindex(moira_npu_core_t *core, moira_npu_region_t dst, float first, int64_t count);

/* dst = src * scalar (Muls) and dst = src + scalar (Adds). */
void moira_npu_vmuls(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                     float scalar, int64_t count);
void moira_npu_vadds(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                     float scalar, int64_t count);

/* dst = exp(src). */
void moira_npu_vexp(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                    int64_t count);

/* dst = 1 / (1 + exp(-src)) (Sigmoid, four vector passes). */
void moira_npu_vsigmoid(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                        int64_t count);

/* dst = value (Duplicate). */
void moira_npu_vdup(moira_npu_core_t *core, moira_npu_region_t dst, float value, int64_t count);

/* Sum and maximum of `count` elements (ReduceSum, ReduceMax), read back by the scalar unit. */
float moira_npu_vreduce_sum(moira_npu_core_t *core, moira_npu_region_t src, int64_t count);
float moira_npu_vreduce_max(moira_npu_core_t *core, moira_npu_region_t src, int64_t count);

/* dst[i] = src[index[i]] (Gather by element index, i32 indices in the UB). */
void moira_npu_vgather(moira_npu_core_t *core, moira_npu_region_t dst, moira_npu_region_t src,
                       moira_npu_region_t index, int64_t count);

/* Cast between f32 and a 16-bit float (f16/bf16) in the UB, rounding to nearest even, or from
 * i32 to f32. */
void moira_npu_vcast(moira_npu_core_t *core, moira_npu_region_t dst, moira_dtype_t dst_dtype,
                     moira_npu_region_t src, moira_dtype_t src_dtype, int64_t count);

/* Bytes rounded up to the UB's 32-byte block (the size to allocate for `floats` f32 values). */
static inline size_t moira_npu_ub_floats(int64_t floats) {
    return ((size_t)floats * 4 + 31) / 32 * 32;
}

#endif

/* Weights packed into GEMM panels (gemm.h), made once from a weight window of a cpu buffer and
 * kept beside it: the grouped expert FFN reads the panels, every other reader of the buffer still
 * sees the plain row-major weights. Private to backends/cpu/.
 *
 * A packed copy is built on first use or ahead of time (moira_cpu_prepare_weights, which the
 * device runs when a layer is uploaded), lives in its own memory on the buffer's NUMA node, and
 * is dropped when a queue write, copy or op output touches its window, or when the buffer is
 * freed. Kernels hold a reference while they read it, so a drop never frees it under them.
 * Writes through the buffer's host pointer behind the queue's back are not seen.
 *
 * f32 and bf16 weights keep their type in the panels. The dense projections (LINEAR, SWIGLU,
 * MLA_ABSORB_OUT) also pack f16 and fp8 e4m3 weights, widened to f32 panels (fp8 multiplied by
 * its 128x128 block scale, in f32, as the row-by-row path computes it): exact, at 2x (f16) or 4x
 * (fp8) the checkpoint's bytes. The expert FFN does not, so fp8 and f16 experts never cost that
 * memory; they are widened row by row. */
#ifndef MOIRA_BACKENDS_CPU_PACKED_WEIGHTS_H
#define MOIRA_BACKENDS_CPU_PACKED_WEIGHTS_H

#include <stdatomic.h>
#include <stdbool.h>

#include "backends/cpu/cpu_buffer.h"
#include "runtime/threadpool.h"

struct moira_cpu_packed {
    /* The window it was made from (for fp8 also the block scales' window). */
    size_t offset, bytes;
    size_t scale_offset, scale_bytes; /* fp8, MXFP4, INT8 only, else 0 */
    moira_dtype_t dtype;
    int64_t matrices, rows, cols;
    moira_dtype_t panel_dtype; /* F32 (f32, f16, fp8 weights), BF16, or MXFP4 / INT8 (their own
                                  panels: quant_panels.h; depth counts 32-input blocks) */
    /* Panels: matrix m's panel p (outputs 16p .. 16p+15) at data + (m * panels + p) * panel_bytes.
     */
    bool extreme_scales; /* MXFP4: a scale byte is 0 or 255 (moira_cpu_quant_extreme) */
    int64_t panels;      /* per matrix: rows rounded up to 16, over 16 */
    int64_t depth; /* steps: cols (f32 panels), cols rounded up to even over 2 (bf16 panels) */
    size_t panel_bytes;
    moira_cpu_host_region_t memory; /* owned */
    atomic_int refs;
    moira_cpu_packed_t *next; /* in the buffer's list */
};

/* Whether weights of this dtype have a packed form of their own type (f32 and bf16; MXFP4 and
 * INT8 where the CPU has their int8 tile, quant_panels.h). */
bool moira_cpu_packable(moira_dtype_t dtype);

/* The packed form of `weight` (a [rows, cols] or [matrices, rows, cols] weight operand of a cpu
 * buffer), built with `pool` if it does not exist yet. *out_packed is NULL when the dtype has no
 * packed form. The caller owns one reference and releases it with moira_cpu_packed_release. */
moira_status_t moira_cpu_packed_acquire(moira_threadpool_t *pool, const moira_dtensor_t *weight,
                                        moira_cpu_packed_t **out_packed);

/* The same for a dense projection's weight: every float dtype has a packed form (f16 and fp8
 * widened to f32 panels). */
moira_status_t moira_cpu_packed_acquire_widened(moira_threadpool_t *pool,
                                                const moira_dtensor_t *weight,
                                                moira_cpu_packed_t **out_packed);
void moira_cpu_packed_release(moira_cpu_packed_t *packed);

/* Panel `panel` of matrix `matrix`. */
static inline const void *moira_cpu_packed_panel(const moira_cpu_packed_t *packed, int64_t matrix,
                                                 int64_t panel) {
    return (const unsigned char *)packed->memory.data +
           ((size_t)matrix * (size_t)packed->panels + (size_t)panel) * packed->panel_bytes;
}

/* Drops the packed copies whose window overlaps bytes [offset, offset + bytes) of `buffer`: call
 * after anything writes there. Cheap when the buffer has none. */
void moira_cpu_buffer_written(moira_cpu_buffer_t *buffer, size_t offset, size_t bytes);

/* Drops every packed copy of `buffer` (it is being freed). */
void moira_cpu_buffer_drop_packed(moira_cpu_buffer_t *buffer);

/* Packs the weights an op will read, ahead of its first launch: for MOE_FFN the three expert
 * matrices W1, W3, W2 (in that order, f32 and bf16 only), for LINEAR its W, for SWIGLU its W1,
 * W3, W2 and for MLA_ABSORB_OUT its kv_b_proj (every float dtype). Weights of other ops are left
 * as they are. */
moira_status_t moira_cpu_prepare_weights(moira_threadpool_t *pool, int op,
                                         const moira_dtensor_t *weights, int n_weights);

#endif

/* The micro-kernels of absorbed MLA decode attention (MLA_DECODE_ATTENTION), per instruction set
 * and latent-cache dtype. Private to backends/cpu/; the driver is kernels_mla_decode.c.
 *
 * A group is up to 16 queries that see the same cache rows: the heads of one token. Its queries
 * are laid out once per launch in the kernel's own form (transposed and scaled f32, or bf16
 * pairs), and each fold adds a block of at most MOIRA_CPU_DECODE_KEYS cache rows to the group's
 * online softmax: the scores of every query against every row, the running max and normaliser
 * per query, and the rows weighted into the queries' unnormalised outputs while the block is
 * still in cache. One fold reads each row once for all 16 queries, whatever the ISA. */
#ifndef MOIRA_BACKENDS_CPU_MLA_DECODE_H
#define MOIRA_BACKENDS_CPU_MLA_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/cpu/cpu_isa.h"
#include "runtime/dtype.h"

#define MOIRA_CPU_DECODE_QUERIES 16 /* queries per group: one AVX-512 register of f32 lanes */
/* Rows per fold: the softmax bookkeeping and the output reload are paid once per block, and a
 * block of DeepSeek's rows (64 x 2304 bytes) stays in L2 between the scores and the sums. */
#define MOIRA_CPU_DECODE_KEYS 64

/* One group's queries: n of them, q_lat[i] (latent floats) and q_pe[i] (rope floats), borrowed. */
typedef struct moira_cpu_decode_queries {
    int n;
    const float *q_lat[MOIRA_CPU_DECODE_QUERIES];
    const float *q_pe[MOIRA_CPU_DECODE_QUERIES];
    int64_t latent, rope;
    float scale;
} moira_cpu_decode_queries_t;

/* A block of cache rows: row j of c at c + j * c_stride elements, of k_pe likewise; elements of
 * the cache dtype the kernel was picked for. `ahead_*` are the rows the driver folds next (same
 * strides; NULL when none), which a kernel may prefetch while it computes. Borrowed. */
typedef struct moira_cpu_decode_rows {
    const void *c, *k_pe;
    int64_t c_stride, pe_stride;
    int n; /* 1 .. MOIRA_CPU_DECODE_KEYS */
    const void *ahead_c, *ahead_pe;
    int ahead_n;
} moira_cpu_decode_rows_t;

/* A group's online softmax: per query the running max and normaliser of the scores seen, and
 * out[i * latent ..] the sum of exp(score - max) times the rows. `fresh` until the first fold,
 * which then overwrites instead of rescaling. Arrays borrowed. */
typedef struct moira_cpu_decode_state {
    float *max, *sum; /* [MOIRA_CPU_DECODE_QUERIES] each */
    float *out;       /* [n queries][latent] */
    bool fresh;
} moira_cpu_decode_state_t;

typedef struct moira_cpu_decode_kernels {
    moira_cpu_isa_t isa;
    moira_dtype_t dtype; /* the cache dtype fold reads */
    bool pairs;          /* reads elements in pairs: only for even latent and rope sizes */
    /* Bytes of one group's query layout. */
    size_t (*layout_bytes)(int64_t latent, int64_t rope);
    /* Writes the group's queries into `layout` (layout_bytes, 64-byte aligned). */
    void (*prepare)(const moira_cpu_decode_queries_t *queries, void *layout);
    /* Folds a block of rows into the state; `scratch` holds MOIRA_CPU_DECODE_SCRATCH_FLOATS. */
    void (*fold)(const void *layout, const moira_cpu_decode_queries_t *queries,
                 const moira_cpu_decode_rows_t *rows, moira_cpu_decode_state_t *state,
                 float *scratch);
} moira_cpu_decode_kernels_t;

/* Scores and weights of one block, 16 lanes per row. */
#define MOIRA_CPU_DECODE_SCRATCH_FLOATS (2 * MOIRA_CPU_DECODE_KEYS * MOIRA_CPU_DECODE_QUERIES)

/* The kernels for `isa` (the best one at or below it that exists) reading a cache of `dtype`
 * (F32 or BF16). A bf16 cache on a CPU without AVX512_BF16 has no direct kernel: NULL, and the
 * driver widens each block into f32 (moira_cpu_decode_widen) for the f32 kernels. */
const moira_cpu_decode_kernels_t *moira_cpu_decode_kernels(moira_cpu_isa_t isa,
                                                           moira_dtype_t dtype);

/* dst[i] = src[i] widened from bf16, exactly; vectorised where the ISA allows. */
void moira_cpu_decode_widen(moira_cpu_isa_t isa, const uint16_t *src, float *dst, int64_t n);

extern const moira_cpu_decode_kernels_t moira_cpu_decode_portable;
extern const moira_cpu_decode_kernels_t moira_cpu_decode_avx512;
extern const moira_cpu_decode_kernels_t moira_cpu_decode_avx512_bf16;

/* bf16 widening at AVX-512 width (mla_decode_avx512.c). */
void moira_cpu_decode_widen_avx512(const uint16_t *src, float *dst, int64_t n);

#endif

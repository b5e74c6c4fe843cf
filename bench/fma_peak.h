/* The machine's arithmetic peak, measured: a register-only kernel of independent fused
 * multiply-add chains (no loads, no stores) at the widest vector width the CPU runs (AVX-512,
 * else AVX2 + FMA, else plain C), on as many threads as Moira's cpu device, bound one per core;
 * for bf16 operands the same with AVX512_BF16's dot-product instruction (vdpbf16ps: two bf16
 * multiply-adds into each f32 lane) where the CPU has it, else the f32 peak.
 * The compute bound of a roofline, as the read bandwidth (stream_read.h) is its memory bound:
 * what the cores can do, measured in the same run as the kernel held against it, so the
 * machine's clock and load at that moment count for both. */
#ifndef MOIRA_BENCH_FMA_PEAK_H
#define MOIRA_BENCH_FMA_PEAK_H

#include "runtime/status.h"

typedef struct moira_fma_peak moira_fma_peak_t;

/* Starts `threads` threads (0: one per core). Caller closes it. */
moira_status_t moira_fma_peak_open(int threads, moira_fma_peak_t **out_peak);

/* Runs `passes` passes of a few milliseconds each; the best pass's rate in GFLOP/s (a
 * multiply-add counts two FLOPs, 1e9 FLOPs per second): f32 operands, or bf16 ones. */
double moira_fma_peak_run(moira_fma_peak_t *peak, int passes);
double moira_fma_peak_run_bf16(moira_fma_peak_t *peak, int passes);

/* The instruction set the f32 kernel ran ("avx512", "avx2", "portable") and the bf16 one's
 * ("avx512_bf16", or the f32 one's). Static storage. */
const char *moira_fma_peak_isa(const moira_fma_peak_t *peak);
const char *moira_fma_peak_isa_bf16(const moira_fma_peak_t *peak);

void moira_fma_peak_close(moira_fma_peak_t *peak);

#endif

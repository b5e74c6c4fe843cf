/* The npu cycle cost model: what each AI core's engines did during a launch, and the device time
 * that implies.
 *
 * Engines run concurrently on DaVinci (kernels double-buffer so MTE2 loads the next tile while
 * the Cube or Vector units work on this one), so a core's time is its busiest engine's time, and
 * a launch lasts as long as its slowest core, but never less than its global-memory traffic over
 * the HBM bandwidth. Rates: the Cube does one 16x16x16 fractal multiply-accumulate per cycle;
 * each Vector unit one 256-byte repeat per cycle; the scalar unit one operation per cycle; MTE1
 * moves 256 bytes per cycle from L1 to L0A/L0B; MTE2/MTE3 (GM <-> L1/UB, and FIXPIPE's L0C -> GM)
 * move 64 bytes per cycle per core and share the HBM. Launch overhead is not modelled. */
#ifndef MOIRA_BACKENDS_NPU_COST_MODEL_H
#define MOIRA_BACKENDS_NPU_COST_MODEL_H

#include <stdint.h>

#include "backends/npu/acl.h"

/* Counters of one core (or summed over cores). */
typedef struct moira_npu_cost {
    uint64_t cube_fractals;  /* 16x16x16 multiply-accumulates */
    uint64_t vector_repeats; /* 256-byte vector repeats (a masked tail repeat counts whole) */
    uint64_t scalar_ops;
    uint64_t mte1_bytes; /* L1 -> L0A/L0B */
    uint64_t mte2_bytes; /* GM -> L1/UB */
    uint64_t mte3_bytes; /* UB -> GM and L0C -> GM (FIXPIPE) */
} moira_npu_cost_t;

/* A launch's figures: counters summed over cores, and the modelled time. */
typedef struct moira_npu_launch_report {
    moira_npu_cost_t total;
    int cores_used;
    double time_us;
    const char *bound; /* the engine that sets the time: "cube", "vector", ... (static) */
} moira_npu_launch_report_t;

void moira_npu_cost_add(moira_npu_cost_t *into, const moira_npu_cost_t *add);

/* Cycles the core's busiest engine needs, and which engine that is. */
double moira_npu_core_cycles(const moira_npu_spec_t *spec, const moira_npu_cost_t *cost,
                             const char **out_bound);

/* Folds per-core counters into a launch report (max over cores, HBM traffic floor). */
void moira_npu_report_launch(const moira_npu_spec_t *spec, const moira_npu_cost_t *per_core,
                             int n_cores, moira_npu_launch_report_t *out_report);

/* Adds one launch to a running report (counters and times summed; several launches of one op
 * run back to back). */
void moira_npu_report_add(moira_npu_launch_report_t *into, const moira_npu_launch_report_t *add);

/* Peak figures the model implies: cube TFLOP/s (bf16/f16) and vector TFLOP/s (f32, FMA = 2). */
double moira_npu_peak_cube_tflops(const moira_npu_spec_t *spec);
double moira_npu_peak_vector_tflops(const moira_npu_spec_t *spec);

#define MOIRA_NPU_MTE_BYTES_PER_CYCLE 64
#define MOIRA_NPU_MTE1_BYTES_PER_CYCLE 256

#endif

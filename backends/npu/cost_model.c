/* The npu cycle cost model (cost_model.h). */
#include "backends/npu/cost_model.h"

#include <stddef.h>

/* Counters of several cores or launches add up field by field. */
void moira_npu_cost_add(moira_npu_cost_t *into, const moira_npu_cost_t *add) {
    into->cube_fractals += add->cube_fractals;
    into->vector_repeats += add->vector_repeats;
    into->scalar_ops += add->scalar_ops;
    into->mte1_bytes += add->mte1_bytes;
    into->mte2_bytes += add->mte2_bytes;
    into->mte3_bytes += add->mte3_bytes;
}

/* Engines overlap under double buffering, so the slowest one is the core's time. */
double moira_npu_core_cycles(const moira_npu_spec_t *spec, const moira_npu_cost_t *cost,
                             const char **out_bound) {
    int vector_units = spec->vector_units_per_core > 0 ? spec->vector_units_per_core : 1;
    int cube_units = spec->cube_units_per_core > 0 ? spec->cube_units_per_core : 1;
    struct {
        const char *name;
        double cycles;
    } engines[] = {
        {"cube", (double)cost->cube_fractals / cube_units},
        {"vector", (double)cost->vector_repeats / vector_units},
        {"scalar", (double)cost->scalar_ops},
        {"mte1", (double)cost->mte1_bytes / MOIRA_NPU_MTE1_BYTES_PER_CYCLE},
        {"mte2", (double)cost->mte2_bytes / MOIRA_NPU_MTE_BYTES_PER_CYCLE},
        {"mte3", (double)cost->mte3_bytes / MOIRA_NPU_MTE_BYTES_PER_CYCLE},
    };
    size_t best = 0;
    for (size_t i = 1; i < sizeof(engines) / sizeof(engines[0]); i++)
        if (engines[i].cycles > engines[best].cycles) best = i;
    if (out_bound) *out_bound = engines[best].name;
    return engines[best].cycles;
}

/* A launch ends when its slowest core does, unless HBM cannot feed the cores that fast. */
void moira_npu_report_launch(const moira_npu_spec_t *spec, const moira_npu_cost_t *per_core,
                             int n_cores, moira_npu_launch_report_t *out_report) {
    moira_npu_launch_report_t report = {.bound = "idle"};
    double worst_cycles = 0;
    for (int c = 0; c < n_cores; c++) {
        const moira_npu_cost_t *cost = &per_core[c];
        moira_npu_cost_add(&report.total, cost);
        const char *bound = NULL;
        double cycles = moira_npu_core_cycles(spec, cost, &bound);
        if (cycles > 0) report.cores_used++;
        if (cycles > worst_cycles) {
            worst_cycles = cycles;
            report.bound = bound;
        }
    }
    double core_us = worst_cycles / (spec->clock_ghz * 1e3);
    double hbm_bytes = (double)(report.total.mte2_bytes + report.total.mte3_bytes);
    double hbm_us = hbm_bytes / (spec->hbm_gbs * 1e3);
    report.time_us = core_us;
    if (hbm_us > core_us) {
        report.time_us = hbm_us;
        report.bound = "hbm";
    }
    *out_report = report;
}

/* An op of several launches runs them back to back; the engine that bounds most time wins. */
void moira_npu_report_add(moira_npu_launch_report_t *into, const moira_npu_launch_report_t *add) {
    moira_npu_cost_add(&into->total, &add->total);
    if (add->cores_used > into->cores_used) into->cores_used = add->cores_used;
    if (add->time_us > into->time_us / 2 || !into->bound) into->bound = add->bound;
    into->time_us += add->time_us;
}

/* 16 x 16 x 16 multiply-adds per cycle per Cube: 8192 flops per cycle. */
double moira_npu_peak_cube_tflops(const moira_npu_spec_t *spec) {
    return 8192.0 * spec->cube_units_per_core * spec->ai_cores * spec->clock_ghz / 1e3;
}

/* 64 f32 lanes per 256-byte repeat, one fused multiply-add (2 flops) per lane per cycle. */
double moira_npu_peak_vector_tflops(const moira_npu_spec_t *spec) {
    return 128.0 * spec->vector_units_per_core * spec->ai_cores * spec->clock_ghz / 1e3;
}

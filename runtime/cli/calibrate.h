/* `moira calibrate`, in pieces: its arguments and output (cmd_calibrate.c), and timing one
 * topology target on the model's own shapes (calibrate_target.c). */
#ifndef MOIRA_CLI_CALIBRATE_H
#define MOIRA_CLI_CALIBRATE_H

#include <stdbool.h>

#include "placement/topology.h"
#include "runtime/cli/run.h"

#define CALIBRATE_MAX_POINTS 4

/* What timing one target found: the points per layer and the fitted figures. A plain value. */
typedef struct calibrate_result {
    bool measured;      /* false: skipped (why says so) */
    char why[160];      /* why it was skipped */
    char device[64];    /* the device it ran on */
    bool home_measured; /* the home ran on the device too */
    int n_points;
    double tokens[CALIBRATE_MAX_POINTS];  /* batch size of each point */
    double busy_us[CALIBRATE_MAX_POINTS]; /* expert work per layer, measured */
    double home_us[CALIBRATE_MAX_POINTS]; /* home work per MoE layer, measured */
    double worst_ratio, home_worst_ratio; /* the fits' worst predicted/measured either way */
    moira_measured_t figures;             /* what was fitted */
} calibrate_result_t;

/* Times target `index` of `topology` (on this host) with every routed expert of `model` on it
 * and, where the device can run it, the home too: `points` batch sizes from `m`'s inputs (m->x
 * holds the largest), at least `iters` forwards each (the median kept). Fills *out; a target that
 * cannot hold the model or binds to no device here is skipped (out->measured false, out->why),
 * which is not an error. `m` holds the host weights (borrowed). */
moira_status_t calibrate_target(const moira_topology_t *topology, int index, run_model_t *m,
                                const int64_t *points, int n_points, int iters,
                                calibrate_result_t *out);

#endif

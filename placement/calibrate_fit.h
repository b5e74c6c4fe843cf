/* Calibration's arithmetic (DESIGN.md §6 `moira calibrate`): from busy times measured on a device
 * at a few batch sizes, the figures of the cost model's form that reproduce them best.
 *
 * The form is the cost model's (placement/cost_model.h): a layer's work on a device takes
 *   launch + max(reads x us_per_read, tokens x us_per_token)
 * where reads are the expert replicas it reads and tokens the (token, expert) assignments it
 * computes (for the home: one read of its weights and the batch's tokens). A memory-bound point
 * fixes us_per_read, a compute-bound one us_per_token, and two points in one regime the launch.
 * Which point is in which regime is not known beforehand, so every consistent choice is tried and
 * the one whose worst ratio of predicted to measured time is nearest 1 wins. */
#ifndef MOIRA_PLACEMENT_CALIBRATE_FIT_H
#define MOIRA_PLACEMENT_CALIBRATE_FIT_H

#include "runtime/status.h"

/* One measurement, per layer. A plain value. */
typedef struct moira_calibration_point {
    double reads;   /* replicas read (> 0) */
    double tokens;  /* assignments computed (> 0) */
    double busy_us; /* measured time, transfers over the link already taken out (> 0) */
} moira_calibration_point_t;

/* A plain value. */
typedef struct moira_calibration_fit {
    double launch_us;    /* >= 0 */
    double us_per_read;  /* > 0 */
    double us_per_token; /* > 0 */
    double worst_ratio;  /* max over the points of max(predicted/measured, measured/predicted) */
} moira_calibration_fit_t;

/* Fits `n` (2 to 8) points. With fixed_us_per_read > 0 that figure is kept (the home's weights
 * read at a bandwidth the experts measured) and only launch and us_per_token are fitted.
 * INVALID_ARGUMENT when a point is not positive or n is out of range. */
moira_status_t moira_calibration_fit(const moira_calibration_point_t *points, int n,
                                     double fixed_us_per_read, moira_calibration_fit_t *out);

/* What the fitted form predicts for one point. */
double moira_calibration_predict(const moira_calibration_fit_t *fit, double reads, double tokens);

/* The home's form (placement/home.h): launch + max(memory_us, flops x us_per_flop) +
 * attention_flops x us_per_attention_flop, the attention growing with the square of the batch.
 * A point per batch size, per layer; a plain value. */
typedef struct moira_home_point {
    double flops;           /* 2 x the home's parameters x T (> 0) */
    double attention_flops; /* moira_home_attention_flops (>= 0) */
    double busy_us;         /* > 0 */
} moira_home_point_t;

/* A plain value. */
typedef struct moira_home_fit {
    double launch_us, us_per_flop, us_per_attention_flop; /* >= 0; attention 0: not resolved */
    double worst_ratio;
} moira_home_fit_t;

/* Fits launch, us_per_flop and us_per_attention_flop to 2-8 points with the weights' read time
 * `memory_us` fixed: every choice of three points and of which are memory-bound is solved
 * exactly, and so is the form without attention; the best worst ratio wins. INVALID_ARGUMENT for
 * points that are not positive or a count out of range. */
moira_status_t moira_calibration_fit_home(const moira_home_point_t *points, int n, double memory_us,
                                          moira_home_fit_t *out);

/* What the fitted home form predicts. */
double moira_home_fit_predict(const moira_home_fit_t *fit, double memory_us, double flops,
                              double attention_flops);

#endif

/* Calibration's fit (calibrate_fit.h): every consistent candidate, the best worst ratio. */
#include "placement/calibrate_fit.h"

#include <math.h>
#include <stdbool.h>

/* Rates this small are "free": a device whose reads cost nothing measurable at these sizes. */
#define MIN_RATE_US 1e-9

double moira_calibration_predict(const moira_calibration_fit_t *fit, double reads, double tokens) {
    double memory = reads * fit->us_per_read, compute = tokens * fit->us_per_token;
    return fit->launch_us + (memory > compute ? memory : compute);
}

/* Scores a candidate (launch, per read, per token) and keeps it when its worst ratio is the best
 * so far. Negative launches are clamped to 0 and rates to MIN_RATE_US first. */
static void consider(const moira_calibration_point_t *p, int n, double launch, double per_read,
                     double per_token, moira_calibration_fit_t *best) {
    if (!isfinite(launch) || !isfinite(per_read) || !isfinite(per_token)) return;
    moira_calibration_fit_t fit = {launch > 0 ? launch : 0,
                                   per_read > MIN_RATE_US ? per_read : MIN_RATE_US,
                                   per_token > MIN_RATE_US ? per_token : MIN_RATE_US, 0};
    for (int i = 0; i < n; i++) {
        double predicted = moira_calibration_predict(&fit, p[i].reads, p[i].tokens);
        double ratio = predicted / p[i].busy_us;
        if (ratio < 1) ratio = 1 / ratio;
        if (ratio > fit.worst_ratio) fit.worst_ratio = ratio;
    }
    if (best->worst_ratio == 0 || fit.worst_ratio < best->worst_ratio) *best = fit;
}

/* Candidates where points i and j share a regime (their difference gives its rate and the
 * launch) and point k fixes the other regime's rate. */
static void pair_candidates(const moira_calibration_point_t *p, int n, double fixed_read, int i,
                            int j, moira_calibration_fit_t *best) {
    for (int k = 0; k < n; k++) {
        if (fixed_read <= 0 && p[j].reads != p[i].reads) { /* i and j memory-bound */
            double per_read = (p[j].busy_us - p[i].busy_us) / (p[j].reads - p[i].reads);
            double launch = p[i].busy_us - per_read * p[i].reads;
            consider(p, n, launch, per_read, (p[k].busy_us - launch) / p[k].tokens, best);
        }
        if (p[j].tokens != p[i].tokens) { /* i and j compute-bound */
            double per_token = (p[j].busy_us - p[i].busy_us) / (p[j].tokens - p[i].tokens);
            double launch = p[i].busy_us - per_token * p[i].tokens;
            double per_read = fixed_read > 0 ? fixed_read : (p[k].busy_us - launch) / p[k].reads;
            consider(p, n, launch, per_read, per_token, best);
        }
    }
}

moira_status_t moira_calibration_fit(const moira_calibration_point_t *p, int n,
                                     double fixed_us_per_read, moira_calibration_fit_t *out) {
    if (n < 2 || n > 8)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "calibration: %d points (2 to 8)", n);
    for (int i = 0; i < n; i++)
        if (!(p[i].reads > 0 && p[i].tokens > 0 && p[i].busy_us > 0))
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "calibration: point %d is not positive", i);
    moira_calibration_fit_t best = {0, 0, 0, 0};
    for (int i = 0; i < n; i++) {
        for (int j = i + 1; j < n; j++)
            pair_candidates(p, n, fixed_us_per_read, i, j, &best);
        for (int k = 0; k < n; k++) { /* no launch: one point per regime */
            double per_read = fixed_us_per_read > 0 ? fixed_us_per_read : p[i].busy_us / p[i].reads;
            consider(p, n, 0, per_read, p[k].busy_us / p[k].tokens, &best);
            if (fixed_us_per_read > 0) /* i memory-bound: the launch is what the read leaves */
                consider(p, n, p[i].busy_us - fixed_us_per_read * p[i].reads, fixed_us_per_read,
                         (p[k].busy_us - (p[i].busy_us - fixed_us_per_read * p[i].reads)) /
                             p[k].tokens,
                         &best);
        }
    }
    *out = best;
    return MOIRA_OK_STATUS;
}

double moira_home_fit_predict(const moira_home_fit_t *fit, double memory_us, double flops,
                              double attention_flops) {
    double compute = flops * fit->us_per_flop;
    return fit->launch_us + (memory_us > compute ? memory_us : compute) +
           attention_flops * fit->us_per_attention_flop;
}

/* Scores a home candidate (clamped to launch >= 0, rates >= 0, us_per_flop > 0), keeping the
 * best worst ratio. */
static void consider_home(const moira_home_point_t *p, int n, double memory_us, double launch,
                          double per_flop, double per_attention, moira_home_fit_t *best) {
    if (!isfinite(launch) || !isfinite(per_flop) || !isfinite(per_attention)) return;
    moira_home_fit_t fit = {launch > 0 ? launch : 0, per_flop > 0 ? per_flop : MIN_RATE_US * 1e-9,
                            per_attention > 0 ? per_attention : 0, 0};
    for (int i = 0; i < n; i++) {
        double ratio = moira_home_fit_predict(&fit, memory_us, p[i].flops, p[i].attention_flops) /
                       p[i].busy_us;
        if (ratio < 1) ratio = 1 / ratio;
        if (ratio > fit.worst_ratio) fit.worst_ratio = ratio;
    }
    if (best->worst_ratio == 0 || fit.worst_ratio < best->worst_ratio) *best = fit;
}

/* 3x3 determinant, rows r[0..2] of {a, b, c}. */
static double det3(const double r[3][3]) {
    return r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) -
           r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0]) +
           r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
}

/* Points i, j, k solved exactly for (launch, per_flop, per_attention), each point compute-bound
 * where its bit in `compute` is set and reading its weights (memory_us) otherwise. */
static void solve_three(const moira_home_point_t *p, int n, double memory_us, const int idx[3],
                        int compute, moira_home_fit_t *best) {
    double a[3][3], y[3];
    for (int r = 0; r < 3; r++) {
        const moira_home_point_t *q = &p[idx[r]];
        bool bound = compute >> r & 1;
        a[r][0] = 1;
        a[r][1] = bound ? q->flops : 0;
        a[r][2] = q->attention_flops;
        y[r] = q->busy_us - (bound ? 0 : memory_us);
    }
    double d = det3(a);
    if (!(fabs(d) > 0)) return;
    double x[3];
    for (int c = 0; c < 3; c++) {
        double m[3][3];
        for (int r = 0; r < 3; r++)
            for (int k = 0; k < 3; k++)
                m[r][k] = k == c ? y[r] : a[r][k];
        x[c] = det3(m) / d;
    }
    consider_home(p, n, memory_us, x[0], x[1], x[2], best);
}

moira_status_t moira_calibration_fit_home(const moira_home_point_t *p, int n, double memory_us,
                                          moira_home_fit_t *out) {
    if (n < 2 || n > 8)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "calibration: %d points (2 to 8)", n);
    moira_calibration_point_t linear[8];
    for (int i = 0; i < n; i++) {
        if (!(p[i].flops > 0 && p[i].attention_flops >= 0 && p[i].busy_us > 0))
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "calibration: home point %d is not positive", i);
        linear[i] = (moira_calibration_point_t){1, p[i].flops, p[i].busy_us};
    }
    moira_home_fit_t best = {0, 0, 0, 0};
    moira_calibration_fit_t plain; /* without attention: the expert form, reads fixed */
    MOIRA_RETURN_IF_ERROR(moira_calibration_fit(linear, n, memory_us, &plain));
    consider_home(p, n, memory_us, plain.launch_us, plain.us_per_token, 0, &best);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            for (int k = j + 1; k < n; k++)
                for (int compute = 0; compute < 8; compute++)
                    solve_three(p, n, memory_us, (const int[3]){i, j, k}, compute, &best);
    *out = best;
    return MOIRA_OK_STATUS;
}

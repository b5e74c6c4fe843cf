/* Rate-limited progress lines for the planner (plan_progress.h). */
#include "placement/plan_progress.h"

#include <stdbool.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

/* Planning shorter than this prints nothing. */
#define PROGRESS_AFTER_S 2.0
/* A terminal's line is rewritten at most this often; a log gets a line this much less often. */
#define PROGRESS_EVERY_S 0.5
#define PROGRESS_LOG_FACTOR 20.0

/* Monotonic time in seconds: wall-clock jumps must not trigger or silence reports. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void moira_plan_progress_begin(moira_plan_progress_t *p, int64_t layers) {
    p->started = now_s();
    p->reported = 0;
    p->layers = layers;
    p->lines = 0;
}

/* On a terminal one line rewritten in place (as `moira run` does while loading); in a log an
 * occasional line, so the log stays readable. */
void moira_plan_progress_note(moira_plan_progress_t *p, int64_t done, const char *stage) {
    double t = now_s();
    if (t - p->started < PROGRESS_AFTER_S) return;
    bool terminal = isatty(STDERR_FILENO);
    double every = terminal ? PROGRESS_EVERY_S : PROGRESS_EVERY_S * PROGRESS_LOG_FACTOR;
    if (p->reported > 0 && t - p->reported < every) return;
    p->reported = t;
    p->lines++;
    fprintf(stderr, "%splanner: %lld of %lld MoE layers planned, %s (%.0f s)%s",
            terminal ? "\r" : "", (long long)done, (long long)p->layers, stage, t - p->started,
            terminal ? "\033[K" : "\n");
    fflush(stderr);
}

void moira_plan_progress_end(moira_plan_progress_t *p) {
    if (p->lines > 0 && isatty(STDERR_FILENO)) fputc('\n', stderr);
}

/* Progress of a long planning run on stderr, so that a planner working for minutes on a large
 * model says where it is instead of looking hung. Quiet for runs under a couple of seconds, so
 * tests and everyday plans print nothing. */
#ifndef MOIRA_PLACEMENT_PLAN_PROGRESS_H
#define MOIRA_PLACEMENT_PLAN_PROGRESS_H

#include <stdint.h>

/* Plain values; no ownership. */
typedef struct moira_plan_progress {
    double started;  /* monotonic seconds at the start of planning */
    double reported; /* monotonic seconds of the last line, 0 before the first */
    int64_t layers;  /* MoE layers to plan */
    int lines;       /* lines printed, to end a terminal's rewritten line */
} moira_plan_progress_t;

void moira_plan_progress_begin(moira_plan_progress_t *p, int64_t layers);

/* Reports that `done` layers are planned and what the planner is doing (a short phrase). */
void moira_plan_progress_note(moira_plan_progress_t *p, int64_t done, const char *stage);

/* Ends a terminal's progress line, when one was printed. */
void moira_plan_progress_end(moira_plan_progress_t *p);

#endif

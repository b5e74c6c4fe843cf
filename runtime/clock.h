/* A monotonic wall clock for timing runs. */
#ifndef MOIRA_RUNTIME_CLOCK_H
#define MOIRA_RUNTIME_CLOCK_H

/* Seconds since an arbitrary fixed point; only differences mean anything. */
double moira_now_seconds(void);

#endif

/* A monotonic wall clock for timing runs. */
#ifndef MOIRA_RUNTIME_CLOCK_H
#define MOIRA_RUNTIME_CLOCK_H

#include <pthread.h>
#include <time.h>

/* Seconds since an arbitrary fixed point; only differences mean anything. */
double moira_now_seconds(void);

/* A condition variable whose timed waits count on the same clock, so setting the wall clock
 * neither cuts nor stretches them. Destroy with pthread_cond_destroy. */
void moira_monotonic_cond_init(pthread_cond_t *cond);

/* The time `seconds` (>= 0) from now on that clock: the deadline of a pthread_cond_timedwait on a
 * condition variable made by moira_monotonic_cond_init. */
struct timespec moira_monotonic_after(double seconds);

#endif

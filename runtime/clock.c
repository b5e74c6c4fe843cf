#include "runtime/clock.h"

#include <time.h>

/* CLOCK_MONOTONIC: immune to the wall clock being set while something is being timed. */
double moira_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

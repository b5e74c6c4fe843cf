/* The sanitizer build's stand-in for alloc_counter.c (alloc_counter.h): AddressSanitizer owns
 * malloc, so nothing is interposed and nothing is counted. */
#include "tests/unit/alloc_counter.h"

bool alloc_counter_available(void) {
    return false;
}

void alloc_counter_start(void) {}

/* Nothing was counted; callers checked alloc_counter_available() first. */
alloc_counts_t alloc_counter_stop(void) {
    return (alloc_counts_t){0, 0};
}

/* Counts the host allocations a test executable makes, from any thread, between
 * alloc_counter_start() and alloc_counter_stop(): the instrument that proves a steady state
 * allocates nothing (DESIGN.md §3).
 *
 * alloc_counter.c defines malloc, calloc, realloc, free, posix_memalign, aligned_alloc, memalign
 * and valloc in the executable, which takes them over for the whole process (shared libraries
 * included), and forwards each to glibc. The sanitizer build owns malloc itself, so there the
 * build links alloc_counter_off.c instead, whose alloc_counter_available() is false: a test then
 * reports skip. Link exactly one of the two into a test (tests/CMakeLists.txt chooses). */
#ifndef MOIRA_TESTS_ALLOC_COUNTER_H
#define MOIRA_TESTS_ALLOC_COUNTER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct alloc_counts {
    uint64_t allocations; /* malloc, calloc, realloc, posix_memalign, aligned_alloc, ... */
    uint64_t frees;       /* free of a non-NULL pointer */
} alloc_counts_t;

/* Whether this build can count (false in the sanitizer build). */
bool alloc_counter_available(void);

/* Zeroes the counts and starts counting. */
void alloc_counter_start(void);

/* Stops counting and returns what was counted since the start. */
alloc_counts_t alloc_counter_stop(void);

#endif

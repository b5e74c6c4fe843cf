/* Host allocation counting by interposition (alloc_counter.h).
 *
 * Functions defined in the executable take precedence over libc's for every caller in the
 * process, glibc's own internal callers of malloc included. Each one counts (while counting is
 * on) and forwards to glibc's real allocator through its exported __libc_* entry points, which,
 * unlike dlsym(RTLD_NEXT, ...), need no allocation to look up. */
#include "tests/unit/alloc_counter.h"

#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* glibc's allocator under its own names. */
extern void *__libc_malloc(size_t bytes);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t bytes);
extern void __libc_free(void *pointer);
extern void *__libc_memalign(size_t alignment, size_t bytes);

static atomic_bool counting;
static atomic_uint_fast64_t allocations, frees;

/* One allocation call seen, from any thread. */
static void count_allocation(void) {
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}

bool alloc_counter_available(void) {
    return true;
}

void alloc_counter_start(void) {
    atomic_store(&allocations, 0);
    atomic_store(&frees, 0);
    atomic_store(&counting, true);
}

alloc_counts_t alloc_counter_stop(void) {
    atomic_store(&counting, false);
    return (alloc_counts_t){atomic_load(&allocations), atomic_load(&frees)};
}

void *malloc(size_t bytes) {
    count_allocation();
    return __libc_malloc(bytes);
}

void *calloc(size_t count, size_t size) {
    count_allocation();
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t bytes) {
    count_allocation();
    return __libc_realloc(pointer, bytes);
}

/* free(NULL) does nothing, so it is not counted. */
void free(void *pointer) {
    if (pointer && atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&frees, 1, memory_order_relaxed);
    __libc_free(pointer);
}

void *memalign(size_t alignment, size_t bytes) {
    count_allocation();
    return __libc_memalign(alignment, bytes);
}

void *aligned_alloc(size_t alignment, size_t bytes) {
    count_allocation();
    return __libc_memalign(alignment, bytes);
}

void *valloc(size_t bytes) {
    count_allocation();
    return __libc_memalign((size_t)sysconf(_SC_PAGESIZE), bytes);
}

/* The alignment rules of POSIX: a power of two multiple of sizeof(void *), else EINVAL. */
int posix_memalign(void **out_pointer, size_t alignment, size_t bytes) {
    count_allocation();
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *pointer = __libc_memalign(alignment, bytes);
    if (!pointer) return ENOMEM;
    *out_pointer = pointer;
    return 0;
}

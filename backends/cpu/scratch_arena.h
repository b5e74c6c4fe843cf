/* A grow-only arena for the temporaries of cpu kernels, one per queue. Private to backends/cpu/.
 *
 * Kernels of one queue run one at a time on that queue's worker thread, so the worker binds its
 * queue's arena to itself (moira_cpu_arena_bind) and every kernel it runs takes from that arena;
 * kernels of another queue (which run at the same time) take from theirs, so no arena is ever
 * shared. Takes and gives nest like a stack: giving back a region also gives back every region
 * taken after it.
 *
 * The arena is one block of memory sized by use. A take that does not fit while the block is in
 * use is served by a separate allocation (a spill); once everything is given back the block is
 * replaced by one as large as the most ever taken at once, so the next launch of the same shape
 * fits and allocates nothing. The block never shrinks: a decode step after a long prefill reuses
 * the prefill's memory. */
#ifndef MOIRA_BACKENDS_CPU_SCRATCH_ARENA_H
#define MOIRA_BACKENDS_CPU_SCRATCH_ARENA_H

#include <stddef.h>

typedef struct moira_cpu_arena_spill moira_cpu_arena_spill_t;

typedef struct moira_cpu_arena {
    unsigned char *block;            /* owned; `capacity` bytes, 64-byte aligned; NULL until used */
    size_t capacity, used;           /* block bytes, of which the first `used` are taken */
    moira_cpu_arena_spill_t *spills; /* owned; newest first; all newer than the block's takes */
    size_t spilled;                  /* bytes in spills */
    size_t peak;                     /* the most bytes ever taken at once */
} moira_cpu_arena_t;

/* An empty arena: no memory until the first take. */
void moira_cpu_arena_init(moira_cpu_arena_t *arena);

/* Frees the arena's memory; nothing may still be taken from it. */
void moira_cpu_arena_release(moira_cpu_arena_t *arena);

/* Makes `arena` (borrowed; NULL for none) the one kernels on the calling thread take from. A
 * queue's worker binds its queue's arena once, when it starts. */
void moira_cpu_arena_bind(moira_cpu_arena_t *arena);

/* The arena bound to the calling thread, or NULL. */
moira_cpu_arena_t *moira_cpu_arena_bound(void);

/* `bytes` (rounded up to 64) of 64-byte aligned memory, or NULL when memory is exhausted. With a
 * NULL arena (a kernel run outside a queue) it is a plain allocation. */
void *moira_cpu_arena_take(moira_cpu_arena_t *arena, size_t bytes);

/* Gives back `taken` (from moira_cpu_arena_take on the same arena) and everything taken after
 * it; NULL is ignored. When the arena is then empty and its block was too small for what was
 * taken, the block grows now so the next launch of the same shape fits. */
void moira_cpu_arena_give(moira_cpu_arena_t *arena, void *taken);

#endif

/* The per-queue grow-only scratch arena (scratch_arena.h). */
#include "backends/cpu/scratch_arena.h"

#include <stdbool.h>
#include <stdlib.h>

/* Takes are cache-line multiples so per-thread regions never share a line. */
#define ALIGNMENT 64
#define ROUND_UP(bytes) (((size_t)(bytes) + ALIGNMENT - 1) & ~(size_t)(ALIGNMENT - 1))

/* A take that did not fit: its memory follows this header, one cache line after it. */
struct moira_cpu_arena_spill {
    moira_cpu_arena_spill_t *next; /* older */
    size_t bytes;
};
#define SPILL_HEADER ROUND_UP(sizeof(moira_cpu_arena_spill_t))

/* The arena of the queue whose worker is this thread (see moira_cpu_arena_bind). */
static _Thread_local moira_cpu_arena_t *bound_arena;

void moira_cpu_arena_init(moira_cpu_arena_t *arena) {
    *arena = (moira_cpu_arena_t){0};
}

/* Frees the newest spill. */
static void pop_spill(moira_cpu_arena_t *arena) {
    moira_cpu_arena_spill_t *top = arena->spills;
    arena->spills = top->next;
    arena->spilled -= top->bytes;
    free(top);
}

/* Spills are normally gone by now (every kernel gives back what it took); freed anyway. */
void moira_cpu_arena_release(moira_cpu_arena_t *arena) {
    while (arena->spills)
        pop_spill(arena);
    free(arena->block);
    moira_cpu_arena_init(arena);
}

void moira_cpu_arena_bind(moira_cpu_arena_t *arena) {
    bound_arena = arena;
}

moira_cpu_arena_t *moira_cpu_arena_bound(void) {
    return bound_arena;
}

/* A separate allocation for a take the block cannot hold now; it goes on top of the stack. */
static void *spill(moira_cpu_arena_t *arena, size_t bytes) {
    moira_cpu_arena_spill_t *spill = aligned_alloc(ALIGNMENT, SPILL_HEADER + bytes);
    if (!spill) return NULL;
    spill->bytes = bytes;
    spill->next = arena->spills;
    arena->spills = spill;
    arena->spilled += bytes;
    return (unsigned char *)spill + SPILL_HEADER;
}

/* The block serves a take only while nothing has spilled, so spills are always the newest takes
 * and giving back is a pop of the stack. */
void *moira_cpu_arena_take(moira_cpu_arena_t *arena, size_t bytes) {
    size_t rounded = ROUND_UP(bytes ? bytes : 1);
    if (!arena) return aligned_alloc(ALIGNMENT, rounded);
    void *taken = NULL;
    if (!arena->spills && arena->capacity - arena->used >= rounded) {
        taken = arena->block + arena->used;
        arena->used += rounded;
    } else {
        taken = spill(arena, rounded);
        if (!taken) return NULL;
    }
    size_t in_use = arena->used + arena->spilled;
    if (in_use > arena->peak) arena->peak = in_use;
    return taken;
}

/* Whether `taken` points into the block. */
static bool in_block(const moira_cpu_arena_t *arena, const void *taken) {
    const unsigned char *p = taken;
    return arena->block && p >= arena->block && p < arena->block + arena->capacity;
}

/* Swaps the block for one of `peak` bytes while nothing is taken. A failed allocation leaves no
 * block: later takes spill, and report exhaustion themselves. */
static void grow(moira_cpu_arena_t *arena) {
    free(arena->block);
    arena->block = aligned_alloc(ALIGNMENT, arena->peak);
    arena->capacity = arena->block ? arena->peak : 0;
}

void moira_cpu_arena_give(moira_cpu_arena_t *arena, void *taken) {
    if (!taken) return;
    if (!arena) {
        free(taken);
        return;
    }
    if (in_block(arena, taken)) {
        while (arena->spills)
            pop_spill(arena);
        arena->used = (size_t)((unsigned char *)taken - arena->block);
    } else {
        bool found = false;
        while (arena->spills && !found) {
            found = (unsigned char *)arena->spills + SPILL_HEADER == taken;
            pop_spill(arena);
        }
    }
    if (arena->used == 0 && !arena->spills && arena->peak > arena->capacity) grow(arena);
}

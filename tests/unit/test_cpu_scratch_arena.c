/* The cpu backend's per-queue scratch arena (backends/cpu/scratch_arena.h): where takes land,
 * what a give hands back, and when the block grows, checked against sizes worked out by hand
 * (every take is rounded up to 64 bytes). Every region taken is written whole, so the sanitizer
 * build catches a region shorter than asked for. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "backends/cpu/scratch_arena.h"
#include "tests/unit/testing.h"

/* Takes `bytes`, fills them, and checks the 64-byte alignment every take promises. */
static unsigned char *take(moira_cpu_arena_t *arena, size_t bytes) {
    unsigned char *region = moira_cpu_arena_take(arena, bytes);
    CHECK(region != NULL);
    if (!region) return NULL;
    CHECK_MSG((uintptr_t)region % 64 == 0, "a take of %zu bytes is not 64-byte aligned", bytes);
    memset(region, 0xA5, bytes);
    return region;
}

/* Whether `region` lies in the arena's block, `offset` bytes from its start. */
static bool at_block(const moira_cpu_arena_t *arena, const unsigned char *region, size_t offset) {
    return arena->block && region == arena->block + offset;
}

/* A fresh arena has no block: the first takes spill, and the block then grows to what they
 * needed together (128 + 64 = 192 bytes), which the same takes afterwards reuse in place. */
static void test_first_use_sizes_the_block(void) {
    moira_cpu_arena_t arena;
    moira_cpu_arena_init(&arena);
    unsigned char *a = take(&arena, 100);
    unsigned char *b = take(&arena, 10);
    CHECK(arena.block == NULL && arena.spills != NULL);
    CHECK(arena.peak == 192);
    moira_cpu_arena_give(&arena, b);
    CHECK(arena.capacity == 0); /* a is still taken, so the block cannot move yet */
    moira_cpu_arena_give(&arena, a);
    CHECK(arena.capacity == 192 && arena.used == 0 && arena.spills == NULL);

    unsigned char *block = arena.block;
    for (int round = 0; round < 3; round++) {
        a = take(&arena, 100);
        b = take(&arena, 10);
        CHECK(at_block(&arena, a, 0) && at_block(&arena, b, 128));
        CHECK(arena.used == 192 && arena.spills == NULL);
        moira_cpu_arena_give(&arena, b);
        CHECK(arena.used == 128);
        moira_cpu_arena_give(&arena, a);
        CHECK(arena.used == 0);
    }
    CHECK_MSG(arena.block == block && arena.capacity == 192, "the block moved or changed size");
    moira_cpu_arena_release(&arena);
    CHECK(arena.block == NULL && arena.capacity == 0);
}

/* Once a take spills, later takes spill too even where the block has room, so giving back stays
 * a pop: 128 in the block, then 256 and 64 spilled (64 would have fitted). Giving back the
 * 256-byte spill also gives back the 64 after it; the block grows only when all is back. */
static void test_spills_stack_on_the_block(void) {
    moira_cpu_arena_t arena;
    moira_cpu_arena_init(&arena);
    moira_cpu_arena_give(&arena, take(&arena, 192)); /* a 192-byte block */
    CHECK(arena.capacity == 192);
    unsigned char *a = take(&arena, 100);
    unsigned char *big = take(&arena, 200);
    unsigned char *small = take(&arena, 1);
    CHECK(at_block(&arena, a, 0));
    CHECK(!at_block(&arena, big, 128) && !at_block(&arena, small, 128));
    CHECK(arena.spilled == 256 + 64 && arena.peak == 128 + 256 + 64);
    moira_cpu_arena_give(&arena, big);
    CHECK(arena.spills == NULL && arena.spilled == 0 && arena.used == 128);
    CHECK(arena.capacity == 192);
    moira_cpu_arena_give(&arena, a);
    CHECK(arena.capacity == 448 && arena.used == 0);
    moira_cpu_arena_release(&arena);
}

/* Giving back a region gives back everything taken after it; NULL is ignored; a zero-byte take
 * still gets a region of its own. */
static void test_give_back_to_a_mark(void) {
    moira_cpu_arena_t arena;
    moira_cpu_arena_init(&arena);
    moira_cpu_arena_give(&arena, take(&arena, 1024));
    unsigned char *first = take(&arena, 64);
    take(&arena, 0);
    take(&arena, 300);
    CHECK(arena.used == 64 + 64 + 320);
    moira_cpu_arena_give(&arena, NULL);
    CHECK(arena.used == 448);
    moira_cpu_arena_give(&arena, first);
    CHECK(arena.used == 0 && arena.capacity == 1024);
    moira_cpu_arena_release(&arena);
}

/* A release with regions still taken (spilled ones included) frees them; the sanitizer build's
 * leak check is what notices when it does not. */
static void test_release_with_takes_outstanding(void) {
    moira_cpu_arena_t arena;
    moira_cpu_arena_init(&arena);
    moira_cpu_arena_give(&arena, take(&arena, 64));
    take(&arena, 64);
    take(&arena, 4096);
    take(&arena, 64);
    moira_cpu_arena_release(&arena);
    CHECK(arena.block == NULL && arena.spills == NULL && arena.peak == 0);
}

/* Without an arena (a kernel run outside a queue) a take is a plain allocation of its own. */
static void test_no_arena(void) {
    unsigned char *a = take(NULL, 100);
    unsigned char *b = take(NULL, 100);
    CHECK(a != b);
    moira_cpu_arena_give(NULL, a);
    moira_cpu_arena_give(NULL, b);
}

static void *bound_elsewhere(void *unused) {
    (void)unused;
    return moira_cpu_arena_bound();
}

/* Binding is per thread: a queue's worker binds its arena and no other thread sees it. */
static void test_binding_is_per_thread(void) {
    moira_cpu_arena_t arena;
    moira_cpu_arena_init(&arena);
    CHECK(moira_cpu_arena_bound() == NULL);
    moira_cpu_arena_bind(&arena);
    CHECK(moira_cpu_arena_bound() == &arena);
    pthread_t thread;
    void *seen = &arena;
    CHECK(pthread_create(&thread, NULL, bound_elsewhere, NULL) == 0);
    CHECK(pthread_join(thread, &seen) == 0);
    CHECK(seen == NULL);
    moira_cpu_arena_bind(NULL);
    moira_cpu_arena_release(&arena);
}

int main(void) {
    test_first_use_sizes_the_block();
    test_spills_stack_on_the_block();
    test_give_back_to_a_mark();
    test_release_with_takes_outstanding();
    test_no_arena();
    test_binding_is_per_thread();
    return moira_test_finish("test_cpu_scratch_arena");
}

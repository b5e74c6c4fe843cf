/* The BPE merge table: the pair of ids two adjacent symbols have, to the rank of their merge and
 * the id of the merged symbol. Looked up once per adjacent pair per merge step, so it is a flat
 * open-addressing table keyed by the two ids packed in 64 bits. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_internal.h"

#define EMPTY_KEY UINT64_MAX

static uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

/* A 64-bit mix (splitmix64's finaliser): packed id pairs are far from random in their low bits. */
static uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Sizes the table for `count` merges at most half full. Errors: OUT_OF_MEMORY. */
moira_status_t moira_merge_map_init(merge_map_t *map, size_t count) {
    size_t slots = 16;
    while (slots < count * 2)
        slots <<= 1;
    map->keys = malloc(slots * sizeof(*map->keys));
    map->ranks = malloc(slots * sizeof(*map->ranks));
    map->merged = malloc(slots * sizeof(*map->merged));
    if (!map->keys || !map->ranks || !map->merged) {
        moira_merge_map_free(map);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer merges");
    }
    memset(map->keys, 0xFF, slots * sizeof(*map->keys));
    map->mask = slots - 1;
    return MOIRA_OK_STATUS;
}

bool moira_merge_map_add(merge_map_t *map, int32_t left, int32_t right, int32_t rank,
                         int32_t merged) {
    uint64_t key = pair_key(left, right);
    for (size_t slot = mix(key) & map->mask;; slot = (slot + 1) & map->mask) {
        if (map->keys[slot] == key || map->keys[slot] == EMPTY_KEY) {
            bool fresh = map->keys[slot] == EMPTY_KEY;
            map->keys[slot] = key;
            map->ranks[slot] = rank;
            map->merged[slot] = merged;
            return fresh;
        }
    }
}

bool moira_merge_map_find(const merge_map_t *map, int32_t left, int32_t right, int32_t *rank,
                          int32_t *merged) {
    uint64_t key = pair_key(left, right);
    for (size_t slot = mix(key) & map->mask;; slot = (slot + 1) & map->mask) {
        if (map->keys[slot] == key) {
            *rank = map->ranks[slot];
            *merged = map->merged[slot];
            return true;
        }
        if (map->keys[slot] == EMPTY_KEY) return false;
    }
}

void moira_merge_map_free(merge_map_t *map) {
    free(map->keys);
    free(map->ranks);
    free(map->merged);
    memset(map, 0, sizeof(*map));
}

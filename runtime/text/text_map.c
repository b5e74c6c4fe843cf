/* A hash table from token text to id over the model's vocabulary: merges, byte symbols and
 * whole-word lookups all go through it. Keys are not copied: they point into the tokenizer's
 * string pool. */
#include <stdlib.h>
#include <string.h>

#include "runtime/hash.h"
#include "runtime/text/tokenizer_internal.h"

/* FNV-1a: token texts are short, and it spreads them well enough for linear probing. */
static uint64_t hash_text(const char *text, size_t len) {
    return moira_fnv1a64(MOIRA_FNV1A64_BASIS, text, len);
}

/* Sizes the table for `capacity` entries at most half full. Errors: OUT_OF_MEMORY. */
moira_status_t moira_text_map_init(text_map_t *map, size_t capacity) {
    memset(map, 0, sizeof(*map));
    size_t slots = 16;
    while (slots < capacity * 2)
        slots <<= 1;
    map->slots = calloc(slots, sizeof(*map->slots));
    map->entries = malloc((capacity ? capacity : 1) * sizeof(*map->entries));
    if (!map->slots || !map->entries) {
        moira_text_map_free(map);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer vocabulary");
    }
    map->mask = slots - 1;
    map->capacity = capacity;
    return MOIRA_OK_STATUS;
}

/* Finds the slot holding `text`, or the empty slot where it would go. */
static size_t slot_of(const text_map_t *map, const char *text, size_t len) {
    size_t slot = hash_text(text, len) & map->mask;
    for (;; slot = (slot + 1) & map->mask) {
        int32_t entry = map->slots[slot] - 1;
        if (entry < 0) return slot;
        if (map->entries[entry].len == len && !memcmp(map->entries[entry].text, text, len))
            return slot;
    }
}

void moira_text_map_put(text_map_t *map, const char *text, size_t len, int32_t id) {
    size_t slot = slot_of(map, text, len);
    if (map->slots[slot] > 0) {
        map->entries[map->slots[slot] - 1].id = id;
        return;
    }
    if (map->count == map->capacity) return; /* the caller sized the table; never reached */
    map->entries[map->count] = (text_map_entry_t){text, (uint32_t)len, id};
    map->slots[slot] = (int32_t)++map->count;
}

int32_t moira_text_map_find(const text_map_t *map, const char *text, size_t len) {
    if (!map->slots) return -1;
    int32_t entry = map->slots[slot_of(map, text, len)] - 1;
    return entry < 0 ? -1 : map->entries[entry].id;
}

void moira_text_map_free(text_map_t *map) {
    free(map->slots);
    free(map->entries);
    memset(map, 0, sizeof(*map));
}

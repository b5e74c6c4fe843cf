/* FNV-1a, 64 bits: the one byte hash Moira uses for hash tables (tensor names, token texts),
 * cache keys and the program cache's checksum. Not a defence against an adversary: a hostile
 * input can at worst make a table probe longer or a corrupt cache file be rebuilt. */
#ifndef MOIRA_RUNTIME_HASH_H
#define MOIRA_RUNTIME_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The FNV-1a 64 offset basis: the `hash` to start moira_fnv1a64 from. */
#define MOIRA_FNV1A64_BASIS 0xcbf29ce484222325ull

/* FNV-1a 64 of `length` bytes, continuing from `hash` (MOIRA_FNV1A64_BASIS to start). */
uint64_t moira_fnv1a64(uint64_t hash, const void *data, size_t length);

#endif

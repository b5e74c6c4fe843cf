/* FNV-1a 64 (see hash.h). */
#include "runtime/hash.h"

uint64_t moira_fnv1a64(uint64_t hash, const void *data, size_t length) {
    const unsigned char *bytes = data;
    for (size_t i = 0; i < length; i++)
        hash = (hash ^ bytes[i]) * 0x100000001b3ull;
    return hash;
}

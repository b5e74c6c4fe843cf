/* Fuzz target: the program cache file header (runtime/program_cache.h), the check that stands
 * between a damaged cache file and a device driver that trusts every byte it is given. The input
 * is a whole cache file, checked under the key its own header names (so the fuzzer gets past the
 * key check) and under a fixed key. A file that passes must hand out exactly the bytes after the
 * header, with the header Moira would write for them; a file that fails must fail as bad input,
 * and read from disk it must give the same verdict. Any payload wrapped in a fresh header must
 * pass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/program_cache.h"
#include "tests/fuzz/fuzz.h"

#define FIXED_KEY 0x684bf694c85f486eull

/* The key field of the header, or the fixed key when the input is too short to hold one. */
static uint64_t embedded_key(const uint8_t *data, size_t size) {
    if (size < 24) return FIXED_KEY;
    uint64_t key = 0;
    for (int i = 0; i < 8; i++)
        key |= (uint64_t)data[16 + i] << (8 * i);
    return key;
}

/* Parses `data` under `key`; checks what a success promises. Returns whether it passed. */
static bool parse_checked(const uint8_t *data, size_t size, uint64_t key) {
    const unsigned char *payload = NULL;
    size_t payload_size = 0;
    moira_status_t status =
        moira_program_cache_parse(data, size, key, "fuzz/cache.bin", &payload, &payload_size);
    if (status) {
        FUZZ_ASSERT(!payload && payload_size == 0, "a refused file still hands out a payload");
        moira_fuzz_expect_input_error(status, "program cache parse");
        return false;
    }
    FUZZ_ASSERT(size >= MOIRA_PROGRAM_CACHE_HEADER_BYTES, "a %zu-byte file passed", size);
    FUZZ_ASSERT(payload == data + MOIRA_PROGRAM_CACHE_HEADER_BYTES &&
                    payload_size == size - MOIRA_PROGRAM_CACHE_HEADER_BYTES,
                "the payload is not the rest of the file");
    unsigned char header[MOIRA_PROGRAM_CACHE_HEADER_BYTES];
    moira_program_cache_header(key, payload, payload_size, header);
    FUZZ_ASSERT(memcmp(header, data, sizeof(header)) == 0,
                "a file passed whose header Moira would not have written");
    return true;
}

/* The same bytes read from a file must get the same verdict and payload. */
static void read_checked(const char *dir, const uint8_t *data, size_t size, uint64_t key,
                         bool parsed) {
    char path[256];
    snprintf(path, sizeof(path), "%s/cache.bin", dir);
    moira_fuzz_write_file(path, data, size);
    unsigned char *file = NULL;
    const unsigned char *payload = NULL;
    size_t payload_size = 0;
    moira_status_t status = moira_program_cache_read(path, key, &file, &payload, &payload_size);
    if (!parsed) {
        FUZZ_ASSERT(!file, "a refused file still hands out its bytes");
        moira_fuzz_expect_input_error(status, "program cache read");
        return;
    }
    FUZZ_ASSERT(!status, "parsed from memory but not from disk: %s", moira_status_message(status));
    FUZZ_ASSERT(payload_size == size - MOIRA_PROGRAM_CACHE_HEADER_BYTES &&
                    memcmp(payload, data + MOIRA_PROGRAM_CACHE_HEADER_BYTES, payload_size) == 0,
                "the payload read from disk differs");
    free(file);
}

/* The input as a payload under a fresh header: must pass and give the input back. */
static void wrap_checked(const uint8_t *data, size_t size) {
    unsigned char *file = malloc(MOIRA_PROGRAM_CACHE_HEADER_BYTES + size);
    FUZZ_ASSERT(file, "out of memory");
    moira_program_cache_header(FIXED_KEY, data, size, file);
    if (size) memcpy(file + MOIRA_PROGRAM_CACHE_HEADER_BYTES, data, size);
    FUZZ_ASSERT(parse_checked(file, MOIRA_PROGRAM_CACHE_HEADER_BYTES + size, FIXED_KEY),
                "a freshly written file is refused");
    FUZZ_ASSERT(!parse_checked(file, MOIRA_PROGRAM_CACHE_HEADER_BYTES + size - 1, FIXED_KEY),
                "a file missing its last byte passed");
    free(file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = moira_fuzz_setup();
    uint64_t key = embedded_key(data, size);
    bool parsed = parse_checked(data, size, key);
    read_checked(dir, data, size, key, parsed);
    if (parsed && key != FIXED_KEY)
        FUZZ_ASSERT(!parse_checked(data, size, FIXED_KEY), "a file passed under two keys");
    wrap_checked(data, size);
    return 0;
}

#include "runtime/program_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/atomic_file.h"

static const unsigned char cache_magic[8] = {'M', 'O', 'I', 'R', 'A', 'P', 'C', '\n'};
#define CACHE_VERSION 1u

/* Little-endian on every host, so a cache folder shared between machines stays readable (or is
 * rejected by its key, never misread). */
static void put_u32(unsigned char *out, uint32_t value) {
    for (int i = 0; i < 4; i++)
        out[i] = (unsigned char)(value >> (8 * i));
}

static void put_u64(unsigned char *out, uint64_t value) {
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(value >> (8 * i));
}

static uint32_t get_u32(const unsigned char *in) {
    uint32_t value = 0;
    for (int i = 0; i < 4; i++)
        value |= (uint32_t)in[i] << (8 * i);
    return value;
}

static uint64_t get_u64(const unsigned char *in) {
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value |= (uint64_t)in[i] << (8 * i);
    return value;
}

void moira_program_cache_header(uint64_t key, const void *payload, size_t payload_size,
                                unsigned char out[MOIRA_PROGRAM_CACHE_HEADER_BYTES]) {
    memcpy(out, cache_magic, sizeof(cache_magic));
    put_u32(out + 8, CACHE_VERSION);
    put_u32(out + 12, 0);
    put_u64(out + 16, key);
    put_u64(out + 24, (uint64_t)payload_size);
    put_u64(out + 32, moira_fnv1a64(MOIRA_FNV1A64_BASIS, payload, payload_size));
}

/* Every field is checked before the payload is handed out, cheapest first; the checksum last,
 * since it reads every byte. */
moira_status_t moira_program_cache_parse(const unsigned char *data, size_t size, uint64_t key,
                                         const char *path, const unsigned char **out_payload,
                                         size_t *out_payload_size) {
    *out_payload = NULL;
    *out_payload_size = 0;
    if (size < MOIRA_PROGRAM_CACHE_HEADER_BYTES)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "%zu bytes, shorter than a program cache header", size);
    if (memcmp(data, cache_magic, sizeof(cache_magic)) != 0)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "not a Moira program cache file (bad magic)");
    uint32_t version = get_u32(data + 8);
    if (version != CACHE_VERSION)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "program cache format version %u, expected %u", (unsigned)version,
                               CACHE_VERSION);
    if (get_u32(data + 12) != 0)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "reserved program cache header field is not zero");
    uint64_t file_key = get_u64(data + 16);
    if (file_key != key)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "cache key %016llx, expected %016llx", (unsigned long long)file_key,
                               (unsigned long long)key);
    uint64_t length = get_u64(data + 24);
    size_t available = size - MOIRA_PROGRAM_CACHE_HEADER_BYTES;
    if (length != (uint64_t)available)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "header says %llu payload bytes, the file holds %zu (truncated?)",
                               (unsigned long long)length, available);
    const unsigned char *payload = data + MOIRA_PROGRAM_CACHE_HEADER_BYTES;
    uint64_t checksum = moira_fnv1a64(MOIRA_FNV1A64_BASIS, payload, available);
    if (checksum != get_u64(data + 32))
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "payload checksum mismatch (corrupt file)");
    *out_payload = payload;
    *out_payload_size = available;
    return MOIRA_OK_STATUS;
}

/* Reads exactly `size` bytes, retrying short reads; false when the file ends early (it shrank
 * since fstat) or a read fails. */
static bool read_exactly(int fd, unsigned char *data, size_t size) {
    size_t done = 0;
    while (done < size) {
        ssize_t got = read(fd, data + done, size - done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        done += (size_t)got;
    }
    return true;
}

/* O_NONBLOCK makes opening a FIFO return at once (fstat then refuses it), O_NOFOLLOW refuses a
 * symlink (to /dev/zero, say), and fstat's size bounds the read: nothing at the cache path can
 * hang the caller or make it allocate more than the bound. */
moira_status_t moira_program_cache_read(const char *path, uint64_t key, unsigned char **out_file,
                                        const unsigned char **out_payload,
                                        size_t *out_payload_size) {
    *out_file = NULL;
    *out_payload = NULL;
    *out_payload_size = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT)
            return moira_status_at(MOIRA_CODE_NOT_FOUND, path, 0, 0, "no program cache file");
        if (err == ELOOP)
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                                   "a symlink, not a program cache file");
        return moira_status_at(MOIRA_CODE_IO, path, 0, 0, "cannot open: %s", strerror(err));
    }
    struct stat st;
    moira_status_t status = MOIRA_OK_STATUS;
    if (fstat(fd, &st) != 0)
        status = moira_status_at(MOIRA_CODE_IO, path, 0, 0, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        status = moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                                 "not a regular file (a directory, FIFO or device)");
    else if (st.st_size < 0 || (uint64_t)st.st_size > MOIRA_PROGRAM_CACHE_MAX_BYTES)
        status = moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                                 "%lld bytes, more than a program cache file may hold",
                                 (long long)st.st_size);
    if (status) {
        close(fd);
        return status;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *data = malloc(size ? size : 1);
    if (!data) {
        close(fd);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory reading", path);
    }
    bool complete = read_exactly(fd, data, size);
    close(fd);
    if (!complete) {
        free(data);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "shorter than its size while read (being rewritten?)");
    }
    status = moira_program_cache_parse(data, size, key, path, out_payload, out_payload_size);
    if (status) {
        free(data);
        return status;
    }
    *out_file = data;
    return MOIRA_OK_STATUS;
}

/* A rename can replace a file, a symlink or a FIFO, but not a directory; an empty one is removed
 * first (a non-empty one is left alone: it may hold someone's data). Other kinds are unlinked
 * too, so the new file gets the mode a new file gets, not a device node's. */
static moira_status_t clear_non_regular(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0 || S_ISREG(st.st_mode)) return MOIRA_OK_STATUS;
    int removed = S_ISDIR(st.st_mode) ? rmdir(path) : unlink(path);
    if (removed != 0 && errno != ENOENT)
        return moira_status_at(MOIRA_CODE_IO, path, 0, 0,
                               "cannot replace the non-regular file in the way: %s",
                               strerror(errno));
    return MOIRA_OK_STATUS;
}

typedef struct cache_contents {
    uint64_t key;
    const void *payload;
    size_t payload_size;
} cache_contents_t;

/* The stream writer for moira_write_file_atomically: header, then payload. */
static bool write_contents(FILE *out, void *context) {
    const cache_contents_t *contents = context;
    unsigned char header[MOIRA_PROGRAM_CACHE_HEADER_BYTES];
    moira_program_cache_header(contents->key, contents->payload, contents->payload_size, header);
    return fwrite(header, 1, sizeof(header), out) == sizeof(header) &&
           fwrite(contents->payload, 1, contents->payload_size, out) == contents->payload_size;
}

moira_status_t moira_program_cache_write(const char *path, uint64_t key, const void *payload,
                                         size_t payload_size) {
    if (payload_size > MOIRA_PROGRAM_CACHE_MAX_BYTES - MOIRA_PROGRAM_CACHE_HEADER_BYTES)
        return moira_status_at(MOIRA_CODE_INVALID_ARGUMENT, path, 0, 0,
                               "a %zu-byte program is too large to cache", payload_size);
    MOIRA_RETURN_IF_ERROR(clear_non_regular(path));
    cache_contents_t contents = {key, payload, payload_size};
    return moira_write_file_atomically(path, write_contents, &contents);
}

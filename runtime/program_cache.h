/* The on-disk cache of compiled device programs (a backend compiles its kernels once per device
 * and driver, and later runs load the result instead of compiling).
 *
 * A cache file is whatever survived a crash, a full disk, another program or a user's mistake, and
 * the bytes it holds go to a device driver, which trusts them: a truncated binary crashes the
 * driver. So Moira wraps the payload in a header it checks before anyone else sees the bytes:
 *
 *   offset  size  field
 *        0     8  magic "MOIRAPC\n"
 *        8     4  format version (1), little-endian
 *       12     4  reserved, zero
 *       16     8  cache key: the hash of everything that determines the payload (device, driver,
 *                 source, options), little-endian
 *       24     8  payload length in bytes, little-endian; the file is exactly header + payload
 *       32     8  FNV-1a 64 of the payload, little-endian
 *       40        payload
 *
 * FNV-1a 64 is enough: it guards against truncation, torn writes and flipped bits, not against an
 * adversary (anyone who can write the user's cache folder can already run code as the user), and
 * it needs no table or library. A rejected file only costs a rebuild, after which the writer
 * replaces it. */
#ifndef MOIRA_RUNTIME_PROGRAM_CACHE_H
#define MOIRA_RUNTIME_PROGRAM_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/hash.h"
#include "runtime/status.h"

#define MOIRA_PROGRAM_CACHE_HEADER_BYTES 40
/* No compiled program comes near this; a bigger file is not one of ours. */
#define MOIRA_PROGRAM_CACHE_MAX_BYTES ((size_t)512 << 20)
/* Fills `out` with the header for `payload_size` bytes of `payload` under `key`. */
void moira_program_cache_header(uint64_t key, const void *payload, size_t payload_size,
                                unsigned char out[MOIRA_PROGRAM_CACHE_HEADER_BYTES]);

/* Pure: checks that the `size` bytes of `data` are a cache file for `key` (magic, version,
 * reserved, key, exact length, checksum). On success *out_payload points into `data` (borrowed)
 * and *out_payload_size is its length. Errors: INVALID_INPUT naming `path` (only used in the
 * message) and the first check that failed. */
moira_status_t moira_program_cache_parse(const unsigned char *data, size_t size, uint64_t key,
                                         const char *path, const unsigned char **out_payload,
                                         size_t *out_payload_size);

/* Reads and checks the cache file at `path`. Only a regular file is read (not through a
 * symlink), opened without blocking so a FIFO cannot hang the caller, and no bigger than
 * MOIRA_PROGRAM_CACHE_MAX_BYTES. On success *out_file (malloc'd, owned by the caller) holds the
 * whole file and *out_payload / *out_payload_size the payload inside it. Errors: NOT_FOUND when
 * there is no file; INVALID_INPUT when there is something that is not a valid cache file for
 * `key`; IO; OUT_OF_MEMORY. */
moira_status_t moira_program_cache_read(const char *path, uint64_t key, unsigned char **out_file,
                                        const unsigned char **out_payload,
                                        size_t *out_payload_size);

/* Writes header and payload to a temporary file beside `path`, syncs it and renames it over
 * `path` (runtime/atomic_file.h), so a reader sees the old file or the new one, never half.
 * Whatever else is at `path` is replaced: a symlink, a FIFO or device node, an empty directory.
 * Errors: IO naming the path (a read-only folder, a non-empty directory in the way). */
moira_status_t moira_program_cache_write(const char *path, uint64_t key, const void *payload,
                                         size_t payload_size);

#endif

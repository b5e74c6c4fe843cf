/* Fuzz targets for Moira's parsers (safetensors header and index, model config, topology,
 * profile, plan).
 *
 * One source per parser serves twice: built with clang and libFuzzer (cmake -DMOIRA_FUZZ=ON,
 * `make fuzz`) it is a fuzzer; built as an ordinary executable with replay_main.c it feeds every
 * file of tests/fuzz/regressions/TARGET/ (the crashers found so far) and the seed inputs through
 * the same entry point, so `make test` keeps every fixed crash fixed. A target aborts, which both
 * libFuzzer and CTest report, when a parser crashes or breaks a promise: an error that is not an
 * input error with a message, or a success whose result is not valid, not writable or not read
 * back the same. */
#ifndef MOIRA_TESTS_FUZZ_FUZZ_H
#define MOIRA_TESTS_FUZZ_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/status.h"

/* The libFuzzer entry point every target defines. Always returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reports a broken invariant and aborts (libFuzzer then saves the input as a crasher). */
void moira_fuzz_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#define FUZZ_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) moira_fuzz_fail(__FILE__, __LINE__, __VA_ARGS__);                             \
    } while (0)

/* Requires `status` to be what bad input must give (DESIGN.md §6: exit 2 with a message), then
 * frees it. `what` names the call in the report. */
void moira_fuzz_expect_input_error(moira_status_t status, const char *what);

/* Silences warnings once (a fuzzer would print millions) and returns a per-process scratch
 * directory, removed at exit. */
const char *moira_fuzz_setup(void);

/* Writes `size` bytes to `path`, replacing it. Aborts on failure: the scratch directory is ours. */
void moira_fuzz_write_file(const char *path, const void *data, size_t size);

/* Reads a whole file of the source tree (fixtures the targets parse against) into a malloc'd,
 * NUL-terminated buffer. Aborts when it cannot: a broken checkout, not a finding. */
char *moira_fuzz_read_fixture(const char *path, size_t *out_len);

#endif

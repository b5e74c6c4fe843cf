/* Status: the result of every fallible call in Moira.
 *
 * A status is either MOIRA_OK_STATUS (NULL, free to return and test) or a heap object carrying a
 * code and a message. Input errors also carry the file, line and column they were found at, so the
 * user sees `topo.yaml:12:5: unknown backend "cuda"`. Whoever receives a non-OK status owns it and
 * must pass it on or release it with moira_status_free(). */
#ifndef MOIRA_RUNTIME_STATUS_H
#define MOIRA_RUNTIME_STATUS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum moira_code {
    MOIRA_CODE_OK = 0,
    MOIRA_CODE_INVALID_ARGUMENT, /* the caller (or the user on the command line) asked for nonsense
                                  */
    MOIRA_CODE_INVALID_INPUT,    /* a file's contents are malformed; carries file:line:col */
    MOIRA_CODE_NOT_FOUND,        /* a named file, tensor, device or key does not exist */
    MOIRA_CODE_UNSUPPORTED,      /* valid, but this device, dtype or build cannot do it */
    MOIRA_CODE_OUT_OF_MEMORY,    /* host or device memory exhausted, or a plan over capacity */
    MOIRA_CODE_IO,               /* the operating system refused a read or write */
    MOIRA_CODE_DEVICE,           /* a device or its driver failed */
    MOIRA_CODE_CHECK_FAILED,     /* a computed result disagreed with its reference */
    MOIRA_CODE_INTERNAL,         /* a bug in Moira */
} moira_code_t;

typedef struct moira_status *moira_status_t;

#define MOIRA_OK_STATUS ((moira_status_t)NULL)

/* Makes a status with a printf-style message. Never fails: when memory is exhausted it returns a
 * static out-of-memory status that moira_status_free() knows not to free. Caller owns the result.
 */
moira_status_t moira_status_make(moira_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Makes an input-error status located at file:line:col (line and col are 1-based; 0 omits them).
 * `file` is borrowed and copied. Caller owns the result. */
moira_status_t moira_status_at(moira_code_t code, const char *file, int line, int col,
                               const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Prefixes the status's message with more context ("loading layer 3: ..."), keeping code and
 * location. Takes ownership of `status` and returns the (possibly same) status. */
moira_status_t moira_status_annotate(moira_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline bool moira_status_is_ok(moira_status_t status) {
    return status == MOIRA_OK_STATUS;
}

/* The code of a status; MOIRA_CODE_OK for MOIRA_OK_STATUS. */
moira_code_t moira_status_code(moira_status_t status);

/* The full message including "file:line:col: " when located. Borrowed: valid until the status is
 * freed. "OK" for MOIRA_OK_STATUS. */
const char *moira_status_message(moira_status_t status);

/* A short stable name for a code ("INVALID_INPUT"). Static storage. */
const char *moira_code_name(moira_code_t code);

/* The process exit code DESIGN.md §6 assigns: 0 ok, 2 bad usage or bad input, 1 otherwise. */
int moira_status_exit_code(moira_status_t status);

/* The status for pthread_create's error `err` starting `what` ("a queue thread"): EAGAIN (no
 * memory for the stack, or the thread limit) is OUT_OF_MEMORY, as a memory limit makes it; any
 * other error is INTERNAL. Caller owns the result. */
moira_status_t moira_thread_start_error(int err, const char *what);

/* Releases a status. Accepts MOIRA_OK_STATUS. */
void moira_status_free(moira_status_t status);

/* Releases a status after printing it to stderr as "moira: message" (with the origin set below,
 * if any, before the message); returns its exit code. */
int moira_status_report(moira_status_t status);

/* Names the process in every report ("rank 1": under mpirun several ranks print to one
 * terminal). "" for none; copied. Set once, before threads start. */
void moira_status_set_origin(const char *origin);

#define MOIRA_RETURN_IF_ERROR(expr)                                                                \
    do {                                                                                           \
        moira_status_t moira_status_tmp_ = (expr);                                                 \
        if (moira_status_tmp_ != MOIRA_OK_STATUS) return moira_status_tmp_;                        \
    } while (0)

#endif

#include "runtime/status.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct moira_status {
    moira_code_t code;
    bool is_static;
    char *message;
};

/* Returned when even the status cannot be allocated, so that error paths never fail themselves. */
static struct moira_status oom_status = {MOIRA_CODE_OUT_OF_MEMORY, true,
                                         (char *)"out of host memory while reporting an error"};

static moira_status_t status_from_message(moira_code_t code, char *message) {
    if (!message) return &oom_status;
    moira_status_t status = malloc(sizeof(*status));
    if (!status) {
        free(message);
        return &oom_status;
    }
    status->code = code;
    status->is_static = false;
    status->message = message;
    return status;
}

static char *format_message(const char *prefix, const char *fmt, va_list args) {
    char *body = NULL;
    if (vasprintf(&body, fmt, args) < 0) return NULL;
    if (!prefix) return body;
    char *joined = NULL;
    int rc = asprintf(&joined, "%s%s", prefix, body);
    free(body);
    return rc < 0 ? NULL : joined;
}

moira_status_t moira_status_make(moira_code_t code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    char *message = format_message(NULL, fmt, args);
    va_end(args);
    return status_from_message(code, message);
}

moira_status_t moira_status_at(moira_code_t code, const char *file, int line, int col,
                               const char *fmt, ...) {
    char prefix[512];
    if (line > 0 && col > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d:%d: ", file ? file : "<input>", line, col);
    else if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", file ? file : "<input>", line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", file ? file : "<input>");
    va_list args;
    va_start(args, fmt);
    char *message = format_message(prefix, fmt, args);
    va_end(args);
    return status_from_message(code, message);
}

moira_status_t moira_status_annotate(moira_status_t status, const char *fmt, ...) {
    if (status == MOIRA_OK_STATUS || status->is_static) return status;
    va_list args;
    va_start(args, fmt);
    char *context = format_message(NULL, fmt, args);
    va_end(args);
    if (!context) return status;
    char *joined = NULL;
    /* A located message keeps its location first so editors can jump to it. */
    if (asprintf(&joined, "%s: %s", context, status->message) >= 0) {
        free(status->message);
        status->message = joined;
    }
    free(context);
    return status;
}

moira_code_t moira_status_code(moira_status_t status) {
    return status ? status->code : MOIRA_CODE_OK;
}

const char *moira_status_message(moira_status_t status) {
    return status ? status->message : "OK";
}

const char *moira_code_name(moira_code_t code) {
    switch (code) {
    case MOIRA_CODE_OK:
        return "OK";
    case MOIRA_CODE_INVALID_ARGUMENT:
        return "INVALID_ARGUMENT";
    case MOIRA_CODE_INVALID_INPUT:
        return "INVALID_INPUT";
    case MOIRA_CODE_NOT_FOUND:
        return "NOT_FOUND";
    case MOIRA_CODE_UNSUPPORTED:
        return "UNSUPPORTED";
    case MOIRA_CODE_OUT_OF_MEMORY:
        return "OUT_OF_MEMORY";
    case MOIRA_CODE_IO:
        return "IO";
    case MOIRA_CODE_DEVICE:
        return "DEVICE";
    case MOIRA_CODE_CHECK_FAILED:
        return "CHECK_FAILED";
    case MOIRA_CODE_INTERNAL:
        return "INTERNAL";
    }
    return "UNKNOWN";
}

int moira_status_exit_code(moira_status_t status) {
    switch (moira_status_code(status)) {
    case MOIRA_CODE_OK:
        return 0;
    case MOIRA_CODE_INVALID_ARGUMENT:
    case MOIRA_CODE_INVALID_INPUT:
    case MOIRA_CODE_NOT_FOUND:
    case MOIRA_CODE_UNSUPPORTED:
        return 2;
    default:
        return 1;
    }
}

moira_status_t moira_thread_start_error(int err, const char *what) {
    return moira_status_make(err == EAGAIN ? MOIRA_CODE_OUT_OF_MEMORY : MOIRA_CODE_INTERNAL,
                             "cannot start %s: %s", what, strerror(err));
}

void moira_status_free(moira_status_t status) {
    if (!status || status->is_static) return;
    free(status->message);
    free(status);
}

static char report_origin[64];

void moira_status_set_origin(const char *origin) {
    snprintf(report_origin, sizeof(report_origin), "%s%s", origin, *origin ? ": " : "");
}

int moira_status_report(moira_status_t status) {
    int exit_code = moira_status_exit_code(status);
    /* Allocation failures name what could not be allocated; say plainly what that means. */
    if (status && status->code == MOIRA_CODE_OUT_OF_MEMORY && !strstr(status->message, "memory"))
        fprintf(stderr, "moira: %sout of memory: %s\n", report_origin, status->message);
    else if (status)
        fprintf(stderr, "moira: %s%s\n", report_origin, status->message);
    moira_status_free(status);
    return exit_code;
}

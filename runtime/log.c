#include "runtime/log.h"
#include "runtime/env.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -1 means "not yet read from MOIRA_LOG". */
static atomic_int current_level = -1;

static moira_log_level_t level_from_env(void) {
    static const char *const choices[] = {"error", "warn", "info", "debug", NULL};
    static const moira_log_level_t levels[] = {MOIRA_LOG_ERROR, MOIRA_LOG_WARN, MOIRA_LOG_INFO,
                                               MOIRA_LOG_DEBUG};
    int chosen = moira_env_choice("MOIRA_LOG", choices);
    return chosen >= 0 ? levels[chosen] : MOIRA_LOG_WARN;
}

void moira_log_set_level(moira_log_level_t level) {
    atomic_store(&current_level, (int)level);
}

moira_log_level_t moira_log_get_level(void) {
    int level = atomic_load(&current_level);
    if (level < 0) {
        level = (int)level_from_env();
        atomic_store(&current_level, level);
    }
    return (moira_log_level_t)level;
}

void moira_log(moira_log_level_t level, const char *fmt, ...) {
    if (level > moira_log_get_level()) return;
    static const char *names[] = {"error", "warning", "info", "debug"};
    char line[2048];
    int n = snprintf(line, sizeof(line), "moira: %s: ", names[level]);
    va_list args;
    va_start(args, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, args);
    va_end(args);
    fprintf(stderr, "%s\n", line);
}

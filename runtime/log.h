/* Logging to stderr with a level set by MOIRA_LOG (error, warn, info, debug; default warn) or by
 * the CLI's --verbose. */
#ifndef MOIRA_RUNTIME_LOG_H
#define MOIRA_RUNTIME_LOG_H

typedef enum moira_log_level {
    MOIRA_LOG_ERROR = 0,
    MOIRA_LOG_WARN,
    MOIRA_LOG_INFO,
    MOIRA_LOG_DEBUG,
} moira_log_level_t;

void moira_log_set_level(moira_log_level_t level);
moira_log_level_t moira_log_get_level(void);

/* Prints "moira: LEVEL: message" when `level` is enabled. Thread-safe (one write per line). */
void moira_log(moira_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define MOIRA_LOG_E(...) moira_log(MOIRA_LOG_ERROR, __VA_ARGS__)
#define MOIRA_LOG_W(...) moira_log(MOIRA_LOG_WARN, __VA_ARGS__)
#define MOIRA_LOG_I(...) moira_log(MOIRA_LOG_INFO, __VA_ARGS__)
#define MOIRA_LOG_D(...) moira_log(MOIRA_LOG_DEBUG, __VA_ARGS__)

#endif

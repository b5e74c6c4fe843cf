/* MOIRA_* environment variables, read one way everywhere: a value that is not one the variable
 * takes is never silently ignored, but reported once on stderr ("MOIRA_CPU_THREADS=abc is not an
 * integer in [1, 1024]; using the default") and then the default is used. */
#ifndef MOIRA_RUNTIME_ENV_H
#define MOIRA_RUNTIME_ENV_H

#include <stdbool.h>

/* The index in `choices` (NULL-terminated) of the variable's value, or -1 when it is unset or
 * empty; a value that is none of them warns once and gives -1. */
int moira_env_choice(const char *name, const char *const *choices);

/* The variable as an integer in [min, max], or `fallback` when unset or empty; anything else
 * warns once and gives `fallback`. */
long moira_env_int(const char *name, long min, long max, long fallback);

#endif

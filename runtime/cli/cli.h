/* The `moira` command line: one file per verb, each a `main`-shaped function. */
#ifndef MOIRA_CLI_CLI_H
#define MOIRA_CLI_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "runtime/device.h"
#include "runtime/status.h"

typedef int (*moira_cli_verb_fn)(int argc, char **argv);

int moira_cli_devices(int argc, char **argv);
int moira_cli_op(int argc, char **argv);
int moira_cli_check(int argc, char **argv);
int moira_cli_run(int argc, char **argv);
int moira_cli_plan(int argc, char **argv);
int moira_cli_bench(int argc, char **argv);
int moira_cli_tokenize(int argc, char **argv);
int moira_cli_generate(int argc, char **argv);
int moira_cli_chat(int argc, char **argv);
int moira_cli_serve(int argc, char **argv);
int moira_cli_compare(int argc, char **argv);
int moira_cli_quantize(int argc, char **argv);
int moira_cli_calibrate(int argc, char **argv);

/* Prints a usage error ("moira VERB: message; see moira VERB --help") and returns exit code 2. */
int moira_cli_usage_error(const char *verb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses a positive integer option value; false (after printing why) when it is not one. */
bool moira_cli_parse_int(const char *verb, const char *option, const char *text, long long min,
                         long long max, long long *out_value);

/* A copy of every enumerated device's info (initialising the runtime first), for topology
 * discovery. Caller frees *out_infos. */
moira_status_t moira_cli_device_infos(moira_device_info_t **out_infos, int *out_count);

/* The registered backends' names (static storage) into `names`, at most `capacity`; returns how
 * many. What topology loading checks a device's `backend:` against. */
int moira_cli_backend_names(const char **names, int capacity);

/* The topology at `path` (NULL: this machine, discovered), its devices' backends checked against
 * the registered ones; emulated devices included with `with_emulated` or MOIRA_NPU_DEVICES.
 * Caller frees *out with moira_topology_free. */
struct moira_topology;
moira_status_t moira_cli_load_topology(const char *path, bool with_emulated,
                                       struct moira_topology *out);

/* Writes `text` as a JSON string literal (quotes and escapes included). */
void moira_cli_json_string(FILE *out, const char *text);

#endif

/* `moira check`: every op on every backend against the reference, as an NMSE table. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/conformance.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"

static const char check_help[] =
    "usage: moira check [--backends LIST] [--ops LIST] [--json]\n\n"
    "Runs every op on every device against the reference implementation over a set of shapes\n"
    "(real models scaled down, odd sizes, one token, many tokens) and weight dtypes, and prints\n"
    "the NMSE of each against the device's precision limit (docs/math.md). Exit 1 on a failure.\n\n"
    "  --backends LIST  comma-separated devices (cpu:0,opencl:0) or backends (cpu); default all\n"
    "  --ops LIST       comma-separated from: gate, moe, mla, mla_decode, layer, layer_decode\n"
    "  --json           one JSON object with every row\n";

/* Whether `device` is named by the comma-separated list, by full name or by backend. */
static bool device_selected(const moira_device_info_t *info, const char *list) {
    if (!list) return true;
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", list);
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save))
        if (!strcmp(item, info->name) || !strcmp(item, info->backend)) return true;
    return false;
}

/* Whether a comma-separated list names at least one item and fits the parsing buffer: `--ops ''`
 * or `--backends ,` would otherwise check nothing and pass. */
static bool names_something(const char *list, size_t limit) {
    return strlen(list) < limit && strspn(list, ",") < strlen(list);
}

/* Every name in the list must exist, so a typo is an error rather than an empty check. */
static int validate_lists(const char *backends, const char *ops) {
    char copy[512];
    char *save = NULL;
    if (backends && !names_something(backends, sizeof(copy)))
        return moira_cli_usage_error("check",
                                     "--backends must name at least one device or "
                                     "backend (at most %zu characters)",
                                     sizeof(copy) - 1);
    if (ops && !names_something(ops, sizeof(copy)))
        return moira_cli_usage_error("check",
                                     "--ops must name at least one op (at most %zu "
                                     "characters)",
                                     sizeof(copy) - 1);
    if (backends) {
        snprintf(copy, sizeof(copy), "%s", backends);
        for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
            bool found = false;
            for (int i = 0; i < moira_device_count(); i++) {
                const moira_device_info_t *info = moira_device_info(moira_device_at(i));
                found |= !strcmp(item, info->name) || !strcmp(item, info->backend);
            }
            if (!found) {
                fprintf(stderr,
                        "moira check: no device or backend named \"%s\" "
                        "(see moira devices)\n",
                        item);
                return 2;
            }
        }
    }
    if (ops) {
        snprintf(copy, sizeof(copy), "%s", ops);
        for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
            bool found = false;
            for (int i = 0; moira_conformance_ops[i]; i++)
                found |= !strcmp(item, moira_conformance_ops[i]);
            if (!found) return moira_cli_usage_error("check", "unknown op \"%s\"", item);
        }
    }
    return 0;
}

static void print_table(const moira_conformance_result_t *r, int n) {
    printf("%-10s %-13s %-14s %-8s %-5s %6s %10s %9s  %s\n", "DEVICE", "OP", "SHAPE", "WEIGHTS",
           "CACHE", "TOKENS", "NMSE", "LIMIT", "RESULT");
    for (int i = 0; i < n; i++) {
        const char *verdict = r[i].skipped ? "skip" : r[i].passed ? "ok" : "FAIL";
        printf("%-10s %-13s %-14s %-8s %-5s %6lld %10.3g %9.1g  %s%s%s\n", r[i].device, r[i].op,
               r[i].shape, moira_dtype_name(r[i].weight_dtype), moira_dtype_name(r[i].cache_dtype),
               (long long)r[i].tokens, r[i].nmse, r[i].limit, verdict, r[i].detail[0] ? " " : "",
               r[i].detail);
    }
}

static void print_json(const moira_conformance_result_t *r, int n, bool all_passed) {
    printf("{\"passed\": %s, \"rows\": [\n", all_passed ? "true" : "false");
    for (int i = 0; i < n; i++) {
        printf(
            "  {\"device\": \"%s\", \"op\": \"%s\", \"shape\": \"%s\", \"weight_dtype\": \"%s\", "
            "\"cache_dtype\": \"%s\", \"tokens\": %lld, \"nmse\": %.6g, \"limit\": %.3g, "
            "\"result\": \"%s\", \"detail\": ",
            r[i].device, r[i].op, r[i].shape, moira_dtype_name(r[i].weight_dtype),
            moira_dtype_name(r[i].cache_dtype), (long long)r[i].tokens, r[i].nmse, r[i].limit,
            r[i].skipped  ? "skip"
            : r[i].passed ? "ok"
                          : "fail");
        moira_cli_json_string(stdout, r[i].detail);
        printf("}%s\n", i + 1 < n ? "," : "");
    }
    printf("]}\n");
}

int moira_cli_check(int argc, char **argv) {
    static const struct option options[] = {{"backends", required_argument, NULL, 'b'},
                                            {"ops", required_argument, NULL, 'o'},
                                            {"json", no_argument, NULL, 'j'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *backends = NULL, *ops = NULL;
    bool json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'b':
            backends = optarg;
            break;
        case 'o':
            ops = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            fputs(check_help, stdout);
            return 0;
        default:
            return moira_cli_usage_error("check", "unknown option");
        }
    }
    if (optind < argc) return moira_cli_usage_error("check", "unexpected \"%s\"", argv[optind]);
    moira_status_t status = moira_runtime_init();
    if (status) return moira_status_report(status);
    int rc = validate_lists(backends, ops);
    if (rc) return rc;
    moira_conformance_result_t *results = NULL;
    int count = 0;
    for (int i = 0; i < moira_device_count() && !status; i++) {
        moira_device_t *device = moira_device_at(i);
        if (device_selected(moira_device_info(device), backends))
            status = moira_conformance_run(device, ops, &results, &count);
    }
    if (status) {
        free(results);
        return moira_status_report(status);
    }
    int failed = 0, passed = 0, skipped = 0;
    for (int i = 0; i < count; i++) {
        if (results[i].skipped)
            skipped++;
        else if (results[i].passed)
            passed++;
        else
            failed++;
    }
    if (json)
        print_json(results, count, failed == 0);
    else {
        print_table(results, count);
        printf("check: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    }
    free(results);
    return failed ? 1 : 0;
}

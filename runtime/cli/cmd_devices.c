/* `moira devices [--json]`: what every backend found, and why a backend found nothing. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "ops/op.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"
#include "runtime/weight_format.h"

static const char devices_help[] =
    "usage: moira devices [--json]\n\n"
    "Lists every device of every backend: kind, model, memory, compute units, peak throughput,\n"
    "bandwidth, NUMA node, the weight formats its kernels compute (the routed experts' FFN, and\n"
    "the dense projections) and backend-specific facts. A backend whose driver is missing is\n"
    "listed as unavailable with the reason.\n";

/* The weight formats (runtime/weight_format.h) in which the device runs `op`, as the device
 * itself answers, in the table's order. */
static int formats_of(const moira_device_t *device, int op, const char *names[8]) {
    static const moira_dtype_t dtypes[] = {MOIRA_DTYPE_F32,   MOIRA_DTYPE_F16,
                                           MOIRA_DTYPE_BF16,  MOIRA_DTYPE_F8_E4M3,
                                           MOIRA_DTYPE_MXFP4, MOIRA_DTYPE_INT8};
    int n = 0;
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
        if (moira_device_supports(device, op, dtypes[i]))
            names[n++] = moira_weight_format(dtypes[i])->name;
    return n;
}

/* "experts" (MOE_FFN) and "dense" (LINEAR) formats, as text or as a JSON object. */
static void print_formats(FILE *out, const moira_device_t *device, bool json) {
    static const struct {
        const char *key;
        int op;
    } uses[] = {{"experts", MOIRA_OP_MOE_FFN}, {"dense", MOIRA_OP_LINEAR}};
    fprintf(out, json ? "{" : "           weight formats:");
    for (size_t u = 0; u < 2; u++) {
        const char *names[8];
        int n = formats_of(device, uses[u].op, names);
        fprintf(out, json ? "%s\"%s\": [" : "%s %s", u ? (json ? ", " : ";") : "", uses[u].key);
        for (int i = 0; i < n; i++)
            fprintf(out, json ? "%s\"%s\"" : "%s%s", i ? (json ? ", " : ",") : (json ? "" : " "),
                    names[i]);
        if (json) fprintf(out, "]");
    }
    fprintf(out, json ? "}" : "\n");
}

static void print_peaks_json(FILE *out, const moira_device_info_t *info) {
    fprintf(out, "{");
    bool first = true;
    for (int d = 0; d < MOIRA_DTYPE_COUNT; d++) {
        if (info->peak_tflops[d] <= 0) continue;
        fprintf(out, "%s\"%s\": %.6g", first ? "" : ", ", moira_dtype_name((moira_dtype_t)d),
                info->peak_tflops[d]);
        first = false;
    }
    fprintf(out, "}");
}

static void print_device_json(FILE *out, const moira_device_t *device) {
    const moira_device_info_t *info = moira_device_info(device);
    fprintf(out, "    {\"name\": ");
    moira_cli_json_string(out, info->name);
    fprintf(out, ", \"backend\": ");
    moira_cli_json_string(out, info->backend);
    fprintf(out, ", \"kind\": \"%s\", \"model\": ", moira_device_kind_name(info->kind));
    moira_cli_json_string(out, info->model);
    fprintf(out, ", \"vendor\": ");
    moira_cli_json_string(out, info->vendor);
    fprintf(out, ", \"driver_version\": ");
    moira_cli_json_string(out, info->driver_version);
    fprintf(out, ", \"memory_bytes\": %llu, \"compute_units\": %d, \"peak_tflops\": ",
            (unsigned long long)info->memory_bytes, info->compute_units);
    print_peaks_json(out, info);
    fprintf(out, ", \"bandwidth_gbs\": %.6g, \"pci_bus_id\": ", info->bandwidth_gbs);
    if (info->pci_bus_id[0])
        moira_cli_json_string(out, info->pci_bus_id);
    else
        fprintf(out, "null");
    fprintf(out, ", \"numa_node\": %d, \"compute_precision\": \"%s\", \"weight_formats\": ",
            info->numa_node, moira_dtype_name(info->compute_precision));
    print_formats(out, device, true);
    fprintf(out, ", \"details\": {");
    for (int i = 0; i < info->n_details; i++) {
        const moira_device_detail_t *d = &info->details[i];
        fprintf(out, "%s", i ? ", " : "");
        moira_cli_json_string(out, d->key);
        fprintf(out, ": ");
        if (d->is_number)
            fprintf(out, "%s", d->value);
        else
            moira_cli_json_string(out, d->value);
    }
    fprintf(out, "}}");
}

static void print_devices_json(FILE *out) {
    fprintf(out, "{\n  \"devices\": [\n");
    for (int i = 0; i < moira_device_count(); i++) {
        print_device_json(out, moira_device_at(i));
        fprintf(out, "%s\n", i + 1 < moira_device_count() ? "," : "");
    }
    fprintf(out, "  ],\n  \"unavailable_backends\": [");
    bool first = true;
    for (int b = 0; b < moira_backend_count(); b++) {
        const char *reason = moira_backend_unavailable_reason(b);
        if (!reason) continue;
        fprintf(out, "%s{\"backend\": ", first ? "" : ", ");
        moira_cli_json_string(out, moira_backend_name(b));
        fprintf(out, ", \"reason\": ");
        moira_cli_json_string(out, reason);
        fprintf(out, "}");
        first = false;
    }
    fprintf(out, "]\n}\n");
}

static void print_devices_text(FILE *out) {
    fprintf(out, "%-10s %-4s %-40s %10s %6s %10s %8s %5s\n", "DEVICE", "KIND", "MODEL", "MEMORY",
            "UNITS", "F32 TFLOPS", "GB/S", "NUMA");
    for (int i = 0; i < moira_device_count(); i++) {
        const moira_device_info_t *info = moira_device_info(moira_device_at(i));
        char numa[16] = "-";
        if (info->numa_node >= 0) snprintf(numa, sizeof(numa), "%d", info->numa_node);
        fprintf(out, "%-10s %-4s %-40.40s %7.1f GiB %6d %10.3g %8.4g %5s\n", info->name,
                moira_device_kind_name(info->kind), info->model,
                (double)info->memory_bytes / (1u << 30), info->compute_units,
                info->peak_tflops[MOIRA_DTYPE_F32], info->bandwidth_gbs, numa);
        print_formats(out, moira_device_at(i), false);
        for (int d = 0; d < info->n_details; d++)
            fprintf(out, "           %s: %s\n", info->details[d].key, info->details[d].value);
    }
    for (int b = 0; b < moira_backend_count(); b++) {
        const char *reason = moira_backend_unavailable_reason(b);
        if (reason) fprintf(out, "%s: unavailable (%s)\n", moira_backend_name(b), reason);
    }
}

int moira_cli_devices(int argc, char **argv) {
    static const struct option options[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (c == 'j')
            json = true;
        else if (c == 'h') {
            fputs(devices_help, stdout);
            return 0;
        } else
            return moira_cli_usage_error("devices", "unknown option");
    }
    if (optind < argc) return moira_cli_usage_error("devices", "unexpected \"%s\"", argv[optind]);
    moira_status_t status = moira_runtime_init();
    if (status) return moira_status_report(status);
    if (json)
        print_devices_json(stdout);
    else
        print_devices_text(stdout);
    return 0;
}

/* Result rows of the kernel benches (bench_rows.h). */
#include "runtime/cli/bench_rows.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cli/cli.h"

bool moira_bench_rows_add(moira_bench_rows_t *rows, const moira_bench_row_t *row) {
    if (rows->count == rows->capacity) {
        int capacity = rows->capacity ? 2 * rows->capacity : 16;
        moira_bench_row_t *grown = realloc(rows->rows, (size_t)capacity * sizeof(*grown));
        if (!grown) return false;
        rows->rows = grown;
        rows->capacity = capacity;
    }
    rows->rows[rows->count++] = *row;
    return true;
}

/* Frees the list; the rows hold no pointers. */
void moira_bench_rows_free(moira_bench_rows_t *rows) {
    free(rows->rows);
    rows->rows = NULL;
    rows->count = rows->capacity = 0;
}

/* Above 1 Moira is faster (moe) or streams closer to the machine's bandwidth (mla). */
double moira_bench_row_ratio(const moira_bench_row_t *row) {
    return row->peer[0] ? row->peer_us / row->moira_us : NAN;
}

/* JSON has no NaN: a missing figure is null. */
static void json_number(FILE *out, double value, const char *format) {
    if (isfinite(value))
        fprintf(out, format, value);
    else
        fputs("null", out);
}

/* The schema issue 7 fixes, one row object per line so diffs stay readable. Rates keep four
 * significant digits, so a tiny shape's figure does not print as 0.00. */
static void print_json(FILE *out, const moira_bench_rows_t *rows) {
    fputs("{\"rows\": [", out);
    for (int i = 0; i < rows->count; i++) {
        const moira_bench_row_t *r = &rows->rows[i];
        fprintf(out, "%s\n  {\"bench\": ", i ? "," : "");
        moira_cli_json_string(out, r->bench);
        if (r->weight[0]) {
            fputs(", \"weight\": ", out);
            moira_cli_json_string(out, r->weight);
        }
        fputs(", \"dtype\": ", out);
        moira_cli_json_string(out, r->dtype);
        fprintf(out, ", \"%s\": %lld", r->size_key, r->size);
        if (r->tokens) fprintf(out, ", \"tokens\": %lld", r->tokens);
        fputs(", \"moira_us\": ", out);
        json_number(out, r->moira_us, "%.2f");
        fputs(", \"peer\": ", out);
        if (r->peer[0])
            moira_cli_json_string(out, r->peer);
        else
            fputs("null", out);
        fputs(", \"peer_us\": ", out);
        json_number(out, r->peer_us, "%.2f");
        fputs(", \"ratio\": ", out);
        json_number(out, moira_bench_row_ratio(r), "%.3f");
        fputs(", \"gflops\": ", out);
        json_number(out, r->gflops, "%.4g");
        fputs(", \"gbs\": ", out);
        json_number(out, r->gbs, "%.4g");
        if (r->roofline_us != 0) {
            fputs(", \"roofline_us\": ", out);
            json_number(out, r->roofline_us, "%.2f");
            fputs(", \"roofline_ratio\": ", out);
            json_number(out, r->roofline_us / r->moira_us, "%.3f");
        }
        fputc('}', out);
    }
    fputs("\n]}\n", out);
}

/* The same rows for a person: one line each, sizes labelled tok or ctx, a linear row named by
 * its weight. */
static void print_table(FILE *out, const moira_bench_rows_t *rows, const char *title) {
    fprintf(out, "%s\n", title);
    fprintf(out, "%-10s %-5s %8s %12s %-13s %12s %7s %9s %8s\n", "BENCH", "DTYPE", "SIZE",
            "MOIRA US", "PEER", "PEER US", "RATIO", "GFLOP/S", "GB/S");
    for (int i = 0; i < rows->count; i++) {
        const moira_bench_row_t *r = &rows->rows[i];
        char size[24];
        snprintf(size, sizeof(size), "%lld%s", r->size, r->size_key[0] == 'c' ? " ctx" : " tok");
        fprintf(out, "%-10s %-5s %8s %12.1f %-13s %12.1f %7.3f %9.2f %8.2f",
                r->weight[0] ? r->weight : r->bench, r->dtype, size, r->moira_us,
                r->peer[0] ? r->peer : "-", r->peer_us, moira_bench_row_ratio(r), r->gflops,
                r->gbs);
        if (r->tokens) fprintf(out, "  x%lld tok", r->tokens);
        if (r->roofline_us != 0)
            fprintf(out, "  roofline %.1f us (%.3f)", r->roofline_us, r->roofline_us / r->moira_us);
        fputc('\n', out);
    }
}

/* One entry point, so every kernel bench prints the same two forms. */
void moira_bench_rows_print(FILE *out, const moira_bench_rows_t *rows, bool json,
                            const char *title) {
    if (json)
        print_json(out, rows);
    else
        print_table(out, rows, title);
}

/* Both kernel benches start the same way; one place keeps their default device the same. */
moira_status_t moira_bench_open_device(const moira_bench_args_t *args,
                                       moira_device_t **out_device) {
    *out_device = NULL;
    moira_status_t status = moira_runtime_init();
    if (!status) status = moira_device_find(args->backend ? args->backend : "cpu:0", out_device);
    if (status) moira_runtime_shutdown();
    return status;
}

/* The peers run on as many threads as the device, so the comparison is core for core. */
int moira_bench_device_threads(const moira_device_info_t *info) {
    for (int i = 0; i < info->n_details; i++)
        if (!strcmp(info->details[i].key, "threads")) return atoi(info->details[i].value);
    return 0;
}

/* The wait is inside the timed span: a launch is asynchronous, the work is done when the queue
 * drains. A failed launch still waits, so nothing runs on after the call returns. */
moira_status_t moira_bench_time_launches(moira_queue_t *queue, const moira_op_launch_t *launches,
                                         int n_launches, double *out_seconds) {
    double start = moira_bench_seconds();
    moira_status_t status = MOIRA_OK_STATUS;
    for (int i = 0; i < n_launches && !status; i++)
        status = moira_queue_launch(queue, &launches[i]);
    moira_status_t finished = moira_queue_finish(queue);
    *out_seconds = moira_bench_seconds() - start;
    if (status) {
        moira_status_free(finished);
        return status;
    }
    return finished;
}

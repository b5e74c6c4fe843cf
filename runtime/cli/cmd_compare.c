/* `moira compare A B`: every tensor two safetensors files share, compared by NMSE as DESIGN.md §4
 * compares backends, so that users can hold their own PyTorch dumps against Moira's outputs (and
 * one backend's outputs against another's) without writing a script. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cli/cli.h"
#include "runtime/cli/compare.h"
#include "runtime/json_string.h"
#include "runtime/safetensors.h"

#define VERB "compare"

typedef struct compare_options {
    const char *path[2];
    double limit; /* negative: each tensor's dtype limit */
    bool json;
} compare_options_t;

/* One file's tensors, readable and kept-aside alike, and which tensor of the other file each
 * pairs with. */
typedef struct side {
    moira_safetensors_t *file; /* owned */
    compare_tensor_t *tensors; /* owned array; contents borrowed from `file` */
    size_t count;
    size_t *partner; /* owned; index into the other side, or SIZE_MAX when only in this file */
} side_t;

static void print_help(void) {
    printf("usage: moira compare A.safetensors B.safetensors [--limit X] [--json]\n\n"
           "Compares every tensor the two files (or checkpoint directories) both hold, taking A\n"
           "as the reference: NMSE = sum((a-b)^2) / sum(a^2), computed in double, and the\n"
           "largest absolute difference. Tensors only one file holds are listed.\n\n"
           "  --limit X   the NMSE a float tensor may reach (default: by dtype, the less precise\n"
           "              of the two: 1e-6 for f32 and f64, 1e-4 for f16, 2e-3 for bf16, 2e-2\n"
           "              for fp8); integer tensors must always match exactly\n"
           "  --json      one JSON object: tensors, only_in_a, only_in_b, ok\n\n"
           "Shapes must be equal, or hold the same rows ([1, T, D] or [B, T, D] against\n"
           "[B*T, D]). A NaN or Inf in one file where the other holds something else fails.\n\n"
           "exit codes: 0 every shared tensor within its limit and the same names in both,\n"
           "1 a tensor over its limit or not comparable, or names only in one file,\n"
           "2 bad usage, or a file missing, unreadable or malformed\n");
}

static int parse_options(int argc, char **argv, compare_options_t *o) {
    int paths = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_help();
            return -1;
        } else if (!strcmp(arg, "--json")) {
            o->json = true;
        } else if (!strcmp(arg, "--limit")) {
            char *end = NULL;
            const char *text = i + 1 < argc ? argv[++i] : NULL;
            if (!text) return moira_cli_usage_error(VERB, "--limit needs a value");
            o->limit = strtod(text, &end);
            if (!*text || *end || !isfinite(o->limit) || o->limit < 0)
                return moira_cli_usage_error(
                    VERB, "--limit expects a finite number >= 0 (an NMSE), got \"%s\"", text);
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return moira_cli_usage_error(VERB, "unknown option \"%s\"", arg);
        } else if (paths == 2) {
            return moira_cli_usage_error(VERB, "takes two files, but \"%s\" is a third", arg);
        } else {
            o->path[paths++] = arg;
        }
    }
    if (paths < 2)
        return moira_cli_usage_error(VERB, "needs two files: A.safetensors B.safetensors");
    return 0;
}

/* Lists every tensor of an open file: those Moira computes with, then those it keeps aside. */
static moira_status_t list_tensors(side_t *s) {
    size_t readable = moira_safetensors_count(s->file);
    s->count = readable + moira_safetensors_other_count(s->file);
    s->tensors = calloc(s->count ? s->count : 1, sizeof(*s->tensors));
    s->partner = calloc(s->count ? s->count : 1, sizeof(*s->partner));
    if (!s->tensors || !s->partner)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "listing the tensors of %s",
                                 moira_safetensors_path(s->file));
    for (size_t i = 0; i < s->count; i++) {
        compare_tensor_t *t = &s->tensors[i];
        s->partner[i] = SIZE_MAX;
        if (i >= readable) {
            const moira_safetensors_other_t *other = moira_safetensors_other(s->file, i - readable);
            *t = (compare_tensor_t){.name = other->name,
                                    .dtype = other->dtype,
                                    .rank = other->rank,
                                    .data = other->data};
            memcpy(t->shape, other->shape, sizeof(t->shape));
            continue;
        }
        const moira_tensor_t *view = NULL;
        t->name = moira_safetensors_name(s->file, i);
        MOIRA_RETURN_IF_ERROR(moira_safetensors_find(s->file, t->name, &view));
        t->dtype = moira_dtype_name(view->dtype);
        t->rank = view->rank;
        memcpy(t->shape, view->shape, sizeof(t->shape));
        t->data = view->data;
        t->scale = view->scale;
    }
    return MOIRA_OK_STATUS;
}

static int by_name(const void *x, const void *y) {
    return strcmp((*(const compare_tensor_t *const *)x)->name,
                  (*(const compare_tensor_t *const *)y)->name);
}

/* `s`'s tensors sorted by name (a new array the caller frees); a name given twice (a tensor
 * Moira reads and a kept-aside one, which open does not cross-check) is bad input. */
static moira_status_t sort_by_name(const side_t *s, const compare_tensor_t ***out) {
    const compare_tensor_t **sorted = malloc((s->count ? s->count : 1) * sizeof(*sorted));
    *out = sorted;
    if (!sorted)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "sorting the tensors of %s",
                                 moira_safetensors_path(s->file));
    for (size_t i = 0; i < s->count; i++)
        sorted[i] = &s->tensors[i];
    qsort(sorted, s->count, sizeof(*sorted), by_name);
    for (size_t i = 1; i < s->count; i++) {
        if (strcmp(sorted[i]->name, sorted[i - 1]->name)) continue;
        /* The name comes from the file: quoted and escaped, and cut, in the message. */
        char *shown = NULL;
        size_t len = 0;
        FILE *text = open_memstream(&shown, &len);
        if (text) {
            moira_json_write_string(text, sorted[i]->name);
            fclose(text);
        }
        moira_status_t status =
            moira_status_at(MOIRA_CODE_INVALID_INPUT, moira_safetensors_path(s->file), 0, 0,
                            "tensor %.160s appears twice", shown ? shown : "(a name)");
        free(shown);
        return status;
    }
    return MOIRA_OK_STATUS;
}

/* Pairs the tensors of the two sides by name (a merge of the two sorted lists). */
static moira_status_t pair_names(side_t *a, side_t *b) {
    const compare_tensor_t **sa = NULL, **sb = NULL;
    moira_status_t status = sort_by_name(a, &sa);
    if (!status) status = sort_by_name(b, &sb);
    for (size_t i = 0, j = 0; !status && i < a->count && j < b->count;) {
        int order = strcmp(sa[i]->name, sb[j]->name);
        if (order == 0) {
            size_t ia = (size_t)(sa[i] - a->tensors), ib = (size_t)(sb[j] - b->tensors);
            a->partner[ia] = ib;
            b->partner[ib] = ia;
        }
        i += order <= 0;
        j += order >= 0;
    }
    free(sa);
    free(sb);
    return status;
}

static moira_status_t open_side(const char *path, side_t *s) {
    MOIRA_RETURN_IF_ERROR(moira_safetensors_open(path, &s->file));
    return list_tensors(s);
}

static void close_side(side_t *s) {
    free(s->tensors);
    free(s->partner);
    moira_safetensors_close(s->file);
}

/* A name as text output shows it: as is, or as a JSON string when it holds control characters
 * or spaces that would make the line ambiguous. */
static void print_name(const char *name) {
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            moira_json_write_string(stdout, name);
            return;
        }
    fputs(name, stdout);
}

/* "F32 [4, 8]" */
static void print_dtype_shape(const compare_tensor_t *t) {
    moira_tensor_t shape = {.rank = t->rank};
    memcpy(shape.shape, t->shape, sizeof(shape.shape));
    char buf[128];
    printf("%s %s", t->dtype, moira_tensor_shape_str(&shape, buf, sizeof(buf)));
}

static void print_text_row(const compare_tensor_t *a, const compare_tensor_t *b,
                           const compare_result_t *r) {
    printf("%-4s  ", r->ok ? "ok" : "FAIL");
    print_name(a->name);
    if (r->compared) printf("  nmse %.4g  max_abs %.4g  limit %.3g", r->nmse, r->max_abs, r->limit);
    printf("  ");
    print_dtype_shape(a);
    printf(" vs ");
    print_dtype_shape(b);
    if (!r->ok) printf(": %s", r->problem);
    putchar('\n');
}

/* A number JSON can hold, or null (an NMSE that overflowed, or none). */
static void print_json_number(bool present, double value) {
    if (present && isfinite(value))
        printf("%.9g", value);
    else
        printf("null");
}

static void print_json_shape(const compare_tensor_t *t) {
    putchar('[');
    for (int i = 0; i < t->rank; i++)
        printf(i ? ", %lld" : "%lld", (long long)t->shape[i]);
    putchar(']');
}

static void print_json_row(bool first, const compare_tensor_t *a, const compare_tensor_t *b,
                           const compare_result_t *r) {
    printf("%s\n  {\"name\": ", first ? "" : ",");
    moira_json_write_string(stdout, a->name);
    printf(", \"shape_a\": ");
    print_json_shape(a);
    printf(", \"shape_b\": ");
    print_json_shape(b);
    printf(", \"dtype_a\": ");
    moira_json_write_string(stdout, a->dtype);
    printf(", \"dtype_b\": ");
    moira_json_write_string(stdout, b->dtype);
    printf(", \"nmse\": ");
    print_json_number(r->compared, r->nmse);
    printf(", \"max_abs\": ");
    print_json_number(r->compared, r->max_abs);
    printf(", \"limit\": ");
    print_json_number(r->compared, r->limit);
    printf(", \"ok\": %s, \"problem\": ", r->ok ? "true" : "false");
    if (r->ok)
        printf("null");
    else
        moira_json_write_string(stdout, r->problem);
    putchar('}');
}

/* The names only `s` holds: a JSON array, or one "only in X: NAME" line each. Returns how many. */
static size_t print_only_in(const side_t *s, bool json, const char *label) {
    size_t n = 0;
    for (size_t i = 0; i < s->count; i++) {
        if (s->partner[i] != SIZE_MAX) continue;
        if (json) {
            printf(n ? ", " : "");
            moira_json_write_string(stdout, s->tensors[i].name);
        } else {
            printf("only in %s: ", label);
            print_name(s->tensors[i].name);
            putchar('\n');
        }
        n++;
    }
    return n;
}

/* Compares and prints every pair, then the unpaired names. Returns the exit code (0 or 1). */
static int report(const compare_options_t *o, const side_t *a, const side_t *b) {
    size_t common = 0, failed = 0;
    if (o->json) {
        printf("{\"a\": ");
        moira_json_write_string(stdout, o->path[0]);
        printf(", \"b\": ");
        moira_json_write_string(stdout, o->path[1]);
        printf(", \"tensors\": [");
    } else {
        printf("A: %s\nB: %s\n", o->path[0], o->path[1]);
    }
    for (size_t i = 0; i < a->count; i++) {
        if (a->partner[i] == SIZE_MAX) continue;
        const compare_tensor_t *ta = &a->tensors[i], *tb = &b->tensors[a->partner[i]];
        compare_result_t r;
        compare_tensors(ta, tb, o->limit, &r);
        if (o->json)
            print_json_row(common == 0, ta, tb, &r);
        else
            print_text_row(ta, tb, &r);
        common++;
        failed += !r.ok;
    }
    if (o->json) printf("%s], \"only_in_a\": [", common ? "\n" : "");
    size_t only_a = print_only_in(a, o->json, "A");
    if (o->json) printf("], \"only_in_b\": [");
    size_t only_b = print_only_in(b, o->json, "B");
    bool ok = failed == 0 && only_a == 0 && only_b == 0;
    if (o->json)
        printf("], \"ok\": %s}\n", ok ? "true" : "false");
    else
        printf("%zu tensor%s in both: %zu within the limit, %zu not; %zu only in A, %zu only in "
               "B: %s\n",
               common, common == 1 ? "" : "s", common - failed, failed, only_a, only_b,
               ok ? "AGREE" : "DIFFER");
    return ok ? 0 : 1;
}

int moira_cli_compare(int argc, char **argv) {
    compare_options_t o = {.limit = -1};
    int rc = parse_options(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    side_t a = {0}, b = {0};
    moira_status_t status = open_side(o.path[0], &a);
    if (!status) status = open_side(o.path[1], &b);
    if (!status) status = pair_names(&a, &b);
    /* Nothing is printed until both files have been read whole: a bad file gives only the error. */
    if (status) {
        moira_status_report(status);
        rc = 2; /* exit 1 means "the files differ"; not being able to tell is always 2 */
    } else {
        rc = report(&o, &a, &b);
    }
    close_side(&a);
    close_side(&b);
    return rc;
}

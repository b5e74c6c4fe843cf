/* `moira bench moe|mla|linear --json` as a script reads it, at tiny sizes (the moira-tiny model, a
 * few tokens, one round): the output is one JSON object {"rows": [...]}, every row has exactly the
 * keys bench, dtype, tokens (moe, linear) or context (mla), moira_us, peer, peer_us, ratio, gflops,
 * gbs, linear rows also weight, mla rows also tokens, roofline_us and roofline_ratio, and ratio
 * is peer_us / moira_us. The JSON is read with libyaml
 * (JSON is a subset of YAML's flow style), not with anything of Moira's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "tests/unit/testing.h"

static bool no_openblas; /* the build found no OpenBLAS: the moe rows have no peer */

#define TINY_MODEL MOIRA_TEST_DATA_DIR "/../../configs/models/moira-tiny.yaml"

/* The whole stdout of `command` (malloc'd, caller frees) and its exit status in *status. */
static char *run(const char *command, int *status) {
    FILE *pipe = popen(command, "r");
    if (!pipe) return NULL;
    size_t size = 0, capacity = 1 << 16;
    char *text = malloc(capacity);
    size_t got;
    while (text && (got = fread(text + size, 1, capacity - size - 1, pipe)) > 0) {
        size += got;
        if (capacity - size < 2) {
            char *grown = realloc(text, capacity * 2);
            if (!grown) free(text);
            text = grown;
            capacity *= 2;
        }
    }
    *status = pclose(pipe);
    if (text) text[size] = 0;
    return text;
}

/* The value node of `key` in mapping `map`, or NULL. */
static yaml_node_t *lookup(yaml_document_t *doc, yaml_node_t *map, const char *key) {
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = yaml_document_get_node(doc, pair->key);
        if (k && k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, key))
            return yaml_document_get_node(doc, pair->value);
    }
    return NULL;
}

static const char *scalar(yaml_node_t *node) {
    return node && node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

/* A number, or NAN for null or anything that is not one. */
static double number(yaml_node_t *node) {
    const char *text = scalar(node);
    char *end = NULL;
    double value = text ? strtod(text, &end) : NAN;
    return text && end != text && *end == 0 ? value : NAN;
}

/* Whether `name` is one of `peers`, a comma-separated list. */
static bool peer_allowed(const char *name, const char *peers) {
    size_t n = strlen(name);
    for (const char *at = peers; at;) {
        const char *comma = strchr(at, ',');
        size_t len = comma ? (size_t)(comma - at) : strlen(at);
        if (len == n && !strncmp(at, name, n)) return true;
        at = comma ? comma + 1 : NULL;
    }
    return false;
}

/* Checks one bench's JSON; `size_key` is "tokens" or "context", `peer` the peers' names (comma
 * separated: a row may have any of them),
 * `extra_keys` the keys its rows have besides the common ones (NULL-terminated; NULL: none). A row
 * with roofline_us must have roofline_ratio = roofline_us / moira_us. */
static void check_bench(const char *bench, const char *args, const char *size_key, const char *peer,
                        const char *const *extra_keys, int min_rows) {
    char command[1024];
    snprintf(command, sizeof(command), "%s bench %s --model %s %s --json", MOIRA_BINARY, bench,
             TINY_MODEL, args);
    int status = -1;
    char *out = run(command, &status);
    CHECK_MSG(out && status == 0, "%s: exit status %d", command, status);
    if (!out) return;
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)out, strlen(out));
    int loaded = yaml_parser_load(&parser, &doc);
    CHECK_MSG(loaded, "bench %s --json: not parseable: %s", bench, out);
    yaml_node_t *root = loaded ? yaml_document_get_root_node(&doc) : NULL;
    CHECK_MSG(root && root->type == YAML_MAPPING_NODE &&
                  root->data.mapping.pairs.top - root->data.mapping.pairs.start == 1,
              "bench %s --json: not an object with one key", bench);
    yaml_node_t *rows = root ? lookup(&doc, root, "rows") : NULL;
    CHECK_MSG(rows && rows->type == YAML_SEQUENCE_NODE, "bench %s --json: no rows list", bench);
    int n_rows = 0;
    for (yaml_node_item_t *item = rows ? rows->data.sequence.items.start : NULL;
         rows && item < rows->data.sequence.items.top; item++, n_rows++) {
        yaml_node_t *row = yaml_document_get_node(&doc, *item);
        const char *keys[16] = {"bench",   "dtype", size_key, "moira_us", "peer",
                                "peer_us", "ratio", "gflops", "gbs"};
        int n_keys = 9;
        for (int e = 0; extra_keys && extra_keys[e] && n_keys < 16; e++)
            keys[n_keys++] = extra_keys[e];
        CHECK_MSG(row && row->type == YAML_MAPPING_NODE &&
                      row->data.mapping.pairs.top - row->data.mapping.pairs.start == n_keys,
                  "bench %s row %d: not an object of %d keys", bench, n_rows, n_keys);
        for (int k = 0; k < n_keys; k++)
            CHECK_MSG(lookup(&doc, row, keys[k]), "bench %s row %d: no \"%s\"", bench, n_rows,
                      keys[k]);
        const char *name = scalar(lookup(&doc, row, "bench"));
        CHECK_MSG(name && !strcmp(name, bench), "bench %s row %d: bench \"%s\"", bench, n_rows,
                  name ? name : "?");
        const char *dtype = scalar(lookup(&doc, row, "dtype"));
        bool quantized = dtype && (!strcmp(dtype, "mxfp4") || !strcmp(dtype, "int8"));
        CHECK_MSG(dtype && (!strcmp(dtype, "f32") || !strcmp(dtype, "bf16") ||
                            (quantized && !strcmp(bench, "moe"))),
                  "bench %s row %d: dtype %s", bench, n_rows, dtype ? dtype : "?");
        CHECK_MSG(number(lookup(&doc, row, size_key)) > 0, "bench %s row %d: %s", bench, n_rows,
                  size_key);
        const char *peer_name = scalar(lookup(&doc, row, "peer"));
        if (peer_name && !strcmp(peer_name, "null") && peer_allowed("openblas", peer)) {
            printf("bench %s: no OpenBLAS in this build, the peer is not checked\n", bench);
            no_openblas = true;
            continue;
        }
        CHECK_MSG(peer_name && peer_allowed(peer_name, peer), "bench %s row %d: peer \"%s\"", bench,
                  n_rows, peer_name ? peer_name : "?");
        double moira_us = number(lookup(&doc, row, "moira_us"));
        double peer_us = number(lookup(&doc, row, "peer_us"));
        double ratio = number(lookup(&doc, row, "ratio"));
        CHECK_MSG(moira_us > 0 && peer_us > 0, "bench %s row %d: times", bench, n_rows);
        /* Printed to 2 and 3 decimals: allow their rounding. */
        CHECK_MSG(fabs(ratio - peer_us / moira_us) <= 1e-3 + 1e-2 * ratio,
                  "bench %s row %d: ratio %g, peer_us / moira_us %g", bench, n_rows, ratio,
                  peer_us / moira_us);
        CHECK_MSG(number(lookup(&doc, row, "gflops")) > 0 && number(lookup(&doc, row, "gbs")) > 0,
                  "bench %s row %d: gflops and gbs", bench, n_rows);
        double roofline_us = number(lookup(&doc, row, "roofline_us"));
        double roofline_ratio = number(lookup(&doc, row, "roofline_ratio"));
        CHECK_MSG(!lookup(&doc, row, "roofline_us") ||
                      (roofline_us > 0 && fabs(roofline_ratio - roofline_us / moira_us) <=
                                              1e-3 + 1e-2 * roofline_ratio),
                  "bench %s row %d: roofline_us %g, roofline_ratio %g", bench, n_rows, roofline_us,
                  roofline_ratio);
    }
    CHECK_MSG(n_rows >= min_rows, "bench %s: %d rows, expected at least %d", bench, n_rows,
              min_rows);
    if (loaded) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(out);
}

/* The kernel benches on cpu:0 at sizes that take about a second. */
int main(void) {
    /* moe: 3 tokens (a decode row), f32, bf16, mxfp4 and int8 weights, each against the
     * OpenBLAS loop and against the read bandwidth. */
    check_bench("moe", "--backend cpu:0 --tokens 3 --iters 1", "tokens", "openblas,stream_read",
                NULL, 8);
    /* mla: the 1K, 4K and 16K contexts of a 4-head, 64-latent cache, 1 and 8 tokens, f32 and bf16
     * caches, against the triad and the roofline of the measured FMA peak and read bandwidth. */
    static const char *const mla_keys[] = {"tokens", "roofline_us", "roofline_ratio", NULL};
    check_bench("mla", "--backend cpu:0 --iters 1", "context", "stream_triad", mla_keys, 12);
    static const char *const linear_keys[] = {"weight", NULL};
    /* linear: the tiny model's five projections in f32 and bf16, one decode token against the
     * read bandwidth, 64 tokens against OpenBLAS. */
    check_bench("linear", "--backend cpu:0 --tokens 1 --iters 1", "tokens", "stream_read",
                linear_keys, 10);
    check_bench("linear", "--backend cpu:0 --tokens 64 --iters 1", "tokens", "openblas",
                linear_keys, 10);
    if (no_openblas && !moira_test_failures) return MOIRA_TEST_SKIP;
    return moira_test_finish("test_bench_json");
}

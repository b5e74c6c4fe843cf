/* Writing a quantize plan (quantize.h): shards laid out from the entries' sizes, each written as
 * a header and then its tensors in order, the quantised ones made WINDOW at a time over the pool
 * and freed once written. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/cli/quantize.h"

/* Quantised weights made at once per pool thread: enough to keep every thread busy while one
 * tensor is large, few enough that memory holds only a handful. */
#define WINDOW_PER_THREAD 2

/* One quantised weight being made: its copy, its scales and its error against the source. */
typedef struct made {
    const quantize_entry_t *entry;
    moira_tensor_t weight, scale;
    quantize_layer_error_t error;
    moira_status_t status;
} made_t;

typedef struct window {
    made_t *made;
    moira_dtype_t dtype;
} window_t;

/* Squared error of the dequantised weights against the source, row by row in f32 (the source's
 * values widened exactly, the quantised ones decoded exactly), summed in double. */
static moira_status_t add_error(const moira_tensor_t *src, const moira_tensor_t *q,
                                quantize_layer_error_t *e) {
    int64_t rows = src->shape[0], cols = src->shape[1];
    float *a = malloc((size_t)cols * 2 * sizeof(float));
    if (!a) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    float *b = a + cols;
    for (int64_t r = 0; r < rows; r++) {
        moira_tensor_row_to_f32(src, r, a);
        moira_tensor_row_to_f32(q, r, b);
        for (int64_t c = 0; c < cols; c++) {
            double d = (double)b[c] - a[c];
            e->err2 += d * d;
            e->ref2 += (double)a[c] * a[c];
            if (fabs(d) > e->max_abs) e->max_abs = fabs(d);
        }
    }
    e->matrices++;
    free(a);
    return MOIRA_OK_STATUS;
}

/* Weights are quantised independently: one per iteration. */
static void make_weights(void *raw, int64_t begin, int64_t end, int thread) {
    window_t *w = raw;
    (void)thread;
    for (int64_t i = begin; i < end; i++) {
        made_t *m = &w->made[i];
        m->status = moira_tensor_convert(m->entry->src, w->dtype, &m->weight, &m->scale);
        if (!m->status) m->status = add_error(m->entry->src, &m->weight, &m->error);
    }
}

/* Bytes an entry takes in the file (a quantised weight with its scales). */
static uint64_t entry_bytes(const quantize_plan_t *plan, size_t i) {
    uint64_t bytes = moira_tensor_nbytes(&plan->entries[i].desc);
    if (plan->entries[i].kind == QUANTIZE_WEIGHT)
        bytes += moira_tensor_nbytes(&plan->entries[i + 1].desc);
    return bytes;
}

/* shard_of[i]: the shard of entry i; returns how many shards. A weight and its scales share one. */
static int lay_out(const quantize_plan_t *plan, uint64_t max_bytes, int *shard_of) {
    int shard = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < plan->n_entries; i += plan->entries[i].kind == QUANTIZE_WEIGHT ? 2 : 1) {
        uint64_t bytes = entry_bytes(plan, i);
        if (used > 0 && used + bytes > max_bytes) shard++, used = 0;
        used += bytes;
        shard_of[i] = shard;
        if (plan->entries[i].kind == QUANTIZE_WEIGHT) shard_of[i + 1] = shard;
    }
    return shard + 1;
}

/* "model.safetensors", or "model-0000I-of-0000N.safetensors" as Hugging Face names shards. */
static void shard_name(int shard, int shards, char *out, size_t size) {
    if (shards == 1)
        snprintf(out, size, "model.safetensors");
    else
        snprintf(out, size, "model-%05d-of-%05d.safetensors", shard + 1, shards);
}

/* Entries [first, last) of one shard: the header, then the tensors in order, quantised weights
 * made a window at a time. */
static moira_status_t write_shard(const quantize_plan_t *plan, moira_dtype_t dtype,
                                  const char *path, size_t first, size_t last,
                                  moira_threadpool_t *pool, quantize_layer_error_t *errors) {
    size_t n = last - first;
    moira_named_tensor_t *named = calloc(n ? n : 1, sizeof(*named));
    int window = WINDOW_PER_THREAD * moira_threadpool_size(pool);
    made_t *made = calloc((size_t)window, sizeof(*made));
    FILE *out = fopen(path, "wb");
    moira_status_t status =
        !named || !made ? moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory")
        : !out ? moira_status_make(MOIRA_CODE_IO, "cannot write %s: %s", path, strerror(errno))
               : MOIRA_OK_STATUS;
    for (size_t i = 0; i < n && !status; i++)
        named[i] =
            (moira_named_tensor_t){plan->entries[first + i].name, &plan->entries[first + i].desc};
    if (!status) status = moira_safetensors_write_header(path, out, named, n);
    for (size_t i = first; i < last && !status;) {
        if (plan->entries[i].kind == QUANTIZE_AS_IS) {
            status = moira_safetensors_write_tensor_data(path, out, plan->entries[i].src);
            i++;
            continue;
        }
        /* The next run of quantised weights, up to a window of them. */
        int count = 0;
        size_t end = i;
        while (end < last && count < window && plan->entries[end].kind == QUANTIZE_WEIGHT) {
            made[count++] = (made_t){.entry = &plan->entries[end]};
            end += 2;
        }
        window_t w = {made, dtype};
        moira_threadpool_parallel_for(pool, count, 1, make_weights, &w);
        for (int k = 0; k < count; k++) {
            if (!status)
                status = made[k].status;
            else
                moira_status_free(made[k].status);
            if (!status) status = moira_safetensors_write_tensor_data(path, out, &made[k].weight);
            if (!status) status = moira_safetensors_write_tensor_data(path, out, &made[k].scale);
            quantize_layer_error_t *e = &errors[made[k].entry->layer];
            e->err2 += made[k].error.err2;
            e->ref2 += made[k].error.ref2;
            e->max_abs = fmax(e->max_abs, made[k].error.max_abs);
            e->matrices += made[k].error.matrices;
            moira_tensor_release(&made[k].weight);
            moira_tensor_release(&made[k].scale);
        }
        i = end;
    }
    /* Synced, so the renamed folder holds whole files. */
    if (out && (fflush(out) != 0 || fsync(fileno(out)) != 0) && !status)
        status = moira_status_make(MOIRA_CODE_IO, "cannot write %s: %s", path, strerror(errno));
    if (out && fclose(out) != 0 && !status)
        status = moira_status_make(MOIRA_CODE_IO, "cannot write %s: %s", path, strerror(errno));
    free(made);
    free(named);
    return status;
}

/* model.safetensors.index.json: the total bytes and which shard holds each tensor. */
static moira_status_t write_index(const quantize_plan_t *plan, const char *dir, const int *shard_of,
                                  int shards) {
    json_t *map = json_object();
    uint64_t total = 0;
    char file[64];
    for (size_t i = 0; map && i < plan->n_entries; i++) {
        shard_name(shard_of[i], shards, file, sizeof(file));
        total += moira_tensor_nbytes(&plan->entries[i].desc);
        if (json_object_set_new(map, plan->entries[i].name, json_string(file))) {
            json_decref(map);
            map = NULL;
        }
    }
    json_t *root = map ? json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                                   "weight_map", map)
                       : NULL;
    size_t n = strlen(dir) + 40;
    char *path = malloc(n);
    if (path) snprintf(path, n, "%s/model.safetensors.index.json", dir);
    moira_status_t status =
        !root || !path ? moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory")
        : json_dump_file(root, path, JSON_INDENT(2))
            ? moira_status_make(MOIRA_CODE_IO, "cannot write %s", path)
            : MOIRA_OK_STATUS;
    json_decref(root);
    free(path);
    return status;
}

moira_status_t quantize_write(const quantize_plan_t *plan, moira_dtype_t dtype, const char *dir,
                              uint64_t max_shard_bytes, moira_threadpool_t *pool,
                              quantize_layer_error_t *errors) {
    int *shard_of = calloc(plan->n_entries + 1, sizeof(*shard_of));
    if (!shard_of) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    int shards = lay_out(plan, max_shard_bytes, shard_of);
    size_t n = strlen(dir) + 64;
    char *path = malloc(n);
    moira_status_t status =
        path ? MOIRA_OK_STATUS
             : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    for (size_t first = 0; first < plan->n_entries && !status;) {
        size_t last = first;
        while (last < plan->n_entries && shard_of[last] == shard_of[first])
            last++;
        char file[64];
        shard_name(shard_of[first], shards, file, sizeof(file));
        snprintf(path, n, "%s/%s", dir, file);
        status = write_shard(plan, dtype, path, first, last, pool, errors);
        first = last;
    }
    if (!status && shards > 1) status = write_index(plan, dir, shard_of, shards);
    free(path);
    free(shard_of);
    return status;
}

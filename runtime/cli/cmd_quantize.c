/* `moira quantize`: a Hugging Face checkpoint directory to one whose routed experts (and dense
 * projections, unless --experts-only) are MXFP4 or INT8 (DESIGN.md §4, "Weight formats"), in the
 * same layout, which Moira reads back: the weights with their scales in shards of at most 4 GiB,
 * config.json with a quantization_config saying what was done, and every other file (tokenizer,
 * generation config) copied. The directory appears whole or not at all: it is made under a
 * temporary name beside OUTDIR (removed on error, Ctrl-C or SIGTERM), read back, then renamed. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/cli/cli.h"
#include "runtime/cli/quantize.h"
#include "runtime/model_config.h"
#include "runtime/remove_tree.h"
#include "runtime/temp_cleanup.h"
#include "runtime/weight_format.h"

#define VERB "quantize"

typedef struct quantize_options {
    const char *model, *out;
    moira_dtype_t dtype;
    bool experts_only;
    uint64_t max_shard_bytes; /* --max-shard-bytes, a test option: 4 GiB unless given */
} quantize_options_t;

static void print_help(void) {
    printf("usage: moira quantize --model DIR --dtype mxfp4|int8 [--experts-only] -o OUTDIR\n\n"
           "Writes a copy of the Hugging Face checkpoint DIR (f32, f16, bf16 or fp8) whose routed\n"
           "experts (model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight) and dense\n"
           "projections (self_attn q_proj, q_a_proj, q_b_proj, kv_a_proj_with_mqa, o_proj; the\n"
           "shared experts; a dense layer's mlp) are quantised:\n\n"
           "  mxfp4   E2M1 values, two per byte, and one E8M0 scale per 32 inputs of a row\n"
           "          (OCP MX: the scale is the block's largest power of two over 4), stored as\n"
           "          X.weight U8 [out, in/2] and X.scale F8_E8M0 [out, in/32] (DeepSeek-V4's\n"
           "          layout); expert rows must be a multiple of 32 inputs (a projection whose\n"
           "          rows are not is kept as it was)\n"
           "  int8    symmetric, one f32 scale per output row (amax / 127): X.weight I8\n"
           "          [out, in] and X.weight_scale F32 [out]\n\n"
           "  --experts-only  quantise only the routed experts\n\n"
           "Kept as they are, as DeepSeek-V4 keeps them: the router (mlp.gate.weight), norms,\n"
           "embeddings, lm_head, and kv_b_proj (the absorbed decode reads it by head slices).\n"
           "Every other tensor is copied as it is, config.json gains a quantization_config\n"
           "(quant_method mxfp4 or int8) that Moira reads back, and the tokenizer and other files\n"
           "are copied. Prints each layer's weight error (NMSE of the dequantised weights against\n"
           "the source). OUTDIR must not exist, or be an empty directory; it appears only when\n"
           "everything was written and read back.\n\n"
           "exit codes: 0 written, 2 bad usage or input (a checkpoint Moira cannot read or\n"
           "quantise, OUTDIR not empty), 1 otherwise\n");
}

static int parse_options(int argc, char **argv, quantize_options_t *o) {
    const char *dtype = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_help();
            return -1;
        } else if (!strcmp(arg, "--experts-only")) {
            o->experts_only = true;
        } else if (!strcmp(arg, "--max-shard-bytes")) {
            char *end = NULL;
            unsigned long long v = has_value ? strtoull(argv[i + 1], &end, 10) : 0;
            if (!has_value || !end || *end || !v || argv[i + 1][0] == '-')
                return moira_cli_usage_error(VERB, "--max-shard-bytes needs a positive count");
            o->max_shard_bytes = v;
            i++;
        } else if (!strcmp(arg, "--model") || !strcmp(arg, "--dtype") || !strcmp(arg, "-o")) {
            if (!has_value) return moira_cli_usage_error(VERB, "%s needs a value", arg);
            const char **slot = arg[2] == 'm' ? &o->model : arg[2] == 'd' ? &dtype : &o->out;
            *slot = argv[++i];
        } else {
            return moira_cli_usage_error(VERB, "unknown argument \"%s\"", arg);
        }
    }
    if (!o->model) return moira_cli_usage_error(VERB, "--model DIR is required");
    if (!o->out) return moira_cli_usage_error(VERB, "-o OUTDIR is required");
    if (!dtype) return moira_cli_usage_error(VERB, "--dtype mxfp4|int8 is required");
    const moira_weight_format_t *f = moira_weight_format_named(dtype);
    if (!f || !moira_dtype_is_quantized(f->dtype))
        return moira_cli_usage_error(VERB, "--dtype must be mxfp4 or int8, not \"%s\"", dtype);
    o->dtype = f->dtype;
    return 0;
}

/* "DIR/NAME" in a fresh string (caller frees). */
static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s/%s", dir, name);
    return out;
}

static moira_status_t errno_status(const char *what, const char *path) {
    return moira_status_make(MOIRA_CODE_IO, "%s %s: %s", what, path, strerror(errno));
}

/* Byte for byte, synced, so the renamed directory holds whole files. */
static moira_status_t copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return errno_status("cannot read", from);
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return errno_status("cannot write", to);
    }
    char buf[1 << 16];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(buf, 1, sizeof(buf), in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in) && fflush(out) == 0 && fsync(fileno(out)) == 0;
    fclose(in);
    if (fclose(out) != 0) ok = false;
    return ok ? MOIRA_OK_STATUS : errno_status("cannot copy to", to);
}

/* The weights and their index are rewritten and config.json is edited; every other regular file
 * of the directory (tokenizer, generation config, chat templates, README) is copied. */
static bool copied_as_is(const char *name) {
    size_t len = strlen(name);
    if (name[0] == '.') return false;
    if (len > 12 && !strcmp(name + len - 12, ".safetensors")) return false;
    return strcmp(name, "model.safetensors.index.json") != 0 && strcmp(name, "config.json") != 0;
}

static moira_status_t copy_other_files(const char *from, const char *to) {
    DIR *dir = opendir(from);
    if (!dir) return errno_status("cannot list", from);
    moira_status_t status = MOIRA_OK_STATUS;
    struct dirent *e;
    while (!status && (e = readdir(dir))) {
        if (!copied_as_is(e->d_name)) continue;
        char *src = path_join(from, e->d_name), *dst = path_join(to, e->d_name);
        struct stat st;
        if (!src || !dst)
            status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
        else if (stat(src, &st) == 0 && S_ISREG(st.st_mode))
            status = copy_file(src, dst);
        free(src);
        free(dst);
    }
    closedir(dir);
    return status;
}

/* config.json as it was, with quantization_config saying what `moira quantize` did (a source's
 * own, fp8's, is kept under source_quantization_config: its other weights still have scales). */
static moira_status_t write_config(const char *from_dir, const char *to_dir, moira_dtype_t dtype,
                                   bool experts_only) {
    char *from = path_join(from_dir, "config.json"), *to = path_join(to_dir, "config.json");
    json_error_t error;
    json_t *root = from ? json_load_file(from, 0, &error) : NULL;
    moira_status_t status = MOIRA_OK_STATUS;
    if (!from || !to) {
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    } else if (!root || !json_is_object(root)) {
        status = moira_status_at(MOIRA_CODE_INVALID_INPUT, from, root ? 1 : error.line,
                                 root ? 1 : error.column, "%s",
                                 root ? "expected a JSON object" : error.text);
    } else {
        json_t *old = json_object_get(root, "quantization_config");
        if (old) json_object_set(root, "source_quantization_config", old);
        json_t *q =
            json_pack("{s:s, s:s, s:s}", "quant_method", moira_weight_format(dtype)->name,
                      "modules", experts_only ? "routed_experts" : "routed_experts,projections",
                      "written_by", "moira quantize");
        if (!q || json_object_set_new(root, "quantization_config", q) ||
            json_dump_file(root, to, JSON_INDENT(2) | JSON_PRESERVE_ORDER))
            status = errno_status("cannot write", to);
    }
    json_decref(root);
    free(from);
    free(to);
    return status;
}

/* Reads the written directory back as `moira generate` would open it: the config parses, and a
 * quantised expert comes out of the reader in the format it was written in. */
static moira_status_t read_back(const char *dir, const char *expert, moira_dtype_t dtype) {
    char *config_path = path_join(dir, "config.json");
    if (!config_path) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    moira_model_config_t config;
    moira_status_t status = moira_model_config_load(config_path, &config);
    free(config_path);
    moira_safetensors_t *file = NULL;
    if (!status) status = moira_safetensors_open(dir, &file);
    const moira_tensor_t *t = NULL;
    if (!status) status = moira_safetensors_find(file, expert, &t);
    if (!status && (t->dtype != dtype || !t->scale))
        status = moira_status_make(MOIRA_CODE_INTERNAL, "%s read back as %s", expert,
                                   moira_dtype_name(t->dtype));
    moira_safetensors_close(file);
    return status ? moira_status_annotate(status, "reading %s back", dir) : MOIRA_OK_STATUS;
}

/* Per layer: how many matrices, and the NMSE and largest error of their dequantised weights. */
static void print_errors(const quantize_plan_t *q, const quantize_layer_error_t *errors,
                         moira_dtype_t dtype, const char *out) {
    printf("%s: %d routed expert and %d projection matrices quantised to %s\n", out,
           q->n_quantized - q->n_projections, q->n_projections, moira_weight_format(dtype)->name);
    if (q->n_kept)
        printf("  %d projection(s) kept as they were: %s needs inputs in multiples of 32\n",
               q->n_kept, moira_weight_format(dtype)->name);
    for (int l = 0; l < q->n_layers; l++) {
        const quantize_layer_error_t *e = &errors[l];
        if (!e->matrices) continue;
        printf("  layer %3d: %5d matrices  weight NMSE %.3e  max |error| %.3e\n", l, e->matrices,
               e->ref2 > 0 ? e->err2 / e->ref2 : e->err2, e->max_abs);
    }
}

/* Quantises into `temp` (a fresh directory beside OUTDIR) tensor by tensor over a pool of one
 * thread per core, reads it back, then renames it. */
static moira_status_t quantize_into(const quantize_options_t *o, const char *temp) {
    char *config_path = path_join(o->model, "config.json");
    if (!config_path) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    moira_model_config_t config;
    moira_status_t status = moira_model_config_load(config_path, &config);
    free(config_path);
    MOIRA_RETURN_IF_ERROR(status);
    moira_safetensors_t *source = NULL;
    MOIRA_RETURN_IF_ERROR(moira_safetensors_open(o->model, &source));
    quantize_plan_t q;
    status = quantize_plan_make(source, o->dtype, o->experts_only, &q);
    quantize_layer_error_t *errors = NULL;
    moira_threadpool_t *pool = NULL;
    if (!status) {
        errors = calloc((size_t)q.n_layers + 1, sizeof(*errors));
        if (!errors)
            status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize: out of memory");
    }
    if (!status) status = moira_threadpool_create(0, -1, &pool);
    if (!status) status = quantize_write(&q, o->dtype, temp, o->max_shard_bytes, pool, errors);
    if (!status) status = write_config(o->model, temp, o->dtype, o->experts_only);
    if (!status) status = copy_other_files(o->model, temp);
    const char *quantized = NULL;
    for (size_t i = 0; !status && !quantized && i < q.n_entries; i++)
        if (q.entries[i].kind == QUANTIZE_WEIGHT) quantized = q.entries[i].name;
    if (!status) status = read_back(temp, quantized, o->dtype);
    if (!status && rename(temp, o->out) != 0)
        status = errno == ENOTEMPTY || errno == EEXIST || errno == ENOTDIR
                     ? moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                         "%s exists and is not an empty directory; remove it or "
                                         "choose another",
                                         o->out)
                     : errno_status("cannot rename the output to", o->out);
    if (!status) print_errors(&q, errors, o->dtype, o->out);
    if (pool) moira_threadpool_destroy(pool);
    free(errors);
    quantize_plan_release(&q);
    moira_safetensors_close(source);
    return status;
}

/* The rename that publishes the output replaces nothing but an empty directory. */
static bool absent_or_empty(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT;
    if (!S_ISDIR(st.st_mode)) return false;
    DIR *dir = opendir(path);
    if (!dir) return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(dir)))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(dir);
    return empty;
}

int moira_cli_quantize(int argc, char **argv) {
    quantize_options_t o = {.max_shard_bytes = (uint64_t)4 << 30};
    int rc = parse_options(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (!absent_or_empty(o.out))
        return moira_cli_usage_error(VERB, "%s exists and is not an empty directory", o.out);
    size_t n = strlen(o.out) + 16;
    char *temp = malloc(n);
    if (!temp) return moira_status_report(moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "quantize"));
    snprintf(temp, n, "%s.tmp.XXXXXX", o.out);
    moira_status_t status = mkdtemp(temp) ? MOIRA_OK_STATUS : errno_status("cannot create", temp);
    if (!status) {
        /* Ctrl-C or SIGTERM while writing removes the folder with what is in it. */
        int slot = moira_temp_cleanup_remember_folder(temp);
        status = quantize_into(&o, temp);
        if (status) moira_remove_tree(temp);
        moira_temp_cleanup_forget(slot);
    }
    free(temp);
    return status ? moira_status_report(status) : 0;
}

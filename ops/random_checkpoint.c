/* The checkpoint directory: checked spec and target, a temporary directory beside the target,
 * the JSON files, the shards one at a time, the index, and one rename at the end. */
#include "ops/random_checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/random_checkpoint_internal.h"
#include "runtime/safetensors.h"

#define MAX_SHARDS 99999 /* the five digits of model-0000i-of-0000n */
#define MAX_MTP_LAYERS 16
#define PATH_BYTES 4096

static moira_status_t bad_spec(const char *what) {
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "random checkpoint: %s", what);
}

/* Everything the writer relies on, checked before anything touches the disk. */
static moira_status_t check_spec(const moira_random_checkpoint_spec_t *s) {
    const moira_model_config_t *c = &s->config;
    if (c->attention != MOIRA_ATTENTION_MLA)
        return bad_spec("only MLA (DeepSeek) models can be written");
    MOIRA_RETURN_IF_ERROR(moira_model_config_validate(c, NULL));
    if (c->vocab_size <= 0) return bad_spec("vocab_size must be positive");
    if (s->dtype != MOIRA_DTYPE_F32 && s->dtype != MOIRA_DTYPE_BF16 &&
        s->dtype != MOIRA_DTYPE_F8_E4M3)
        return bad_spec("dtype must be F32, BF16 or F8_E4M3");
    if (s->family != MOIRA_CHECKPOINT_DEEPSEEK_V3 && s->family != MOIRA_CHECKPOINT_DEEPSEEK_V2)
        return bad_spec("unknown model family");
    if (s->n_shards < 1 || s->n_shards > MAX_SHARDS)
        return bad_spec("the number of shards must be between 1 and 99999");
    if (s->mtp_layers < 0 || s->mtp_layers > MAX_MTP_LAYERS)
        return bad_spec("mtp_layers must be between 0 and 16");
    if (s->bos_token_id < 0 || s->bos_token_id >= c->vocab_size || s->eos_token_id < 0 ||
        s->eos_token_id >= c->vocab_size)
        return bad_spec("bos_token_id and eos_token_id must be ids below vocab_size");
    if (!(s->temperature >= 0 && isfinite(s->temperature)))
        return bad_spec("temperature must be a finite number >= 0");
    if (!(s->top_p > 0 && s->top_p <= 1)) return bad_spec("top_p must be in (0, 1]");
    if (!(s->logit_gain >= 0 && isfinite(s->logit_gain)))
        return bad_spec("logit_gain must be a finite number >= 0");
    return MOIRA_OK_STATUS;
}

/* The target must be new, or an empty directory (rename replaces an empty one). */
static moira_status_t check_target(const char *dir) {
    struct stat st;
    if (lstat(dir, &st) != 0) {
        if (errno == ENOENT) return MOIRA_OK_STATUS;
        return moira_status_make(MOIRA_CODE_IO, "%s: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s exists and is not a directory; a checkpoint needs a new one",
                                 dir);
    DIR *d = opendir(dir);
    if (!d) return moira_status_make(MOIRA_CODE_IO, "%s: %s", dir, strerror(errno));
    bool empty = true;
    for (struct dirent *e = readdir(d); e && empty; e = readdir(d))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    if (!empty)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s exists and is not empty; a checkpoint is written only into a "
                                 "new or empty directory",
                                 dir);
    return MOIRA_OK_STATUS;
}

/* Removes the temporary directory and everything in it (it only ever holds plain files). */
static void remove_temp_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        char path[PATH_BYTES];
        for (struct dirent *e = readdir(d); e; e = readdir(d)) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < (int)sizeof(path))
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Makes the rename of the finished directory durable. Best effort, as runtime/atomic_file does:
 * the files are synced and the rename cannot be undone, so a failure is not reported. */
static void sync_parent(const char *dir) {
    char parent[PATH_BYTES];
    snprintf(parent, sizeof(parent), "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        parent[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(parent, sizeof(parent), ".");
    int fd = open(parent, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Which shard each tensor goes to: in file order, a new shard once the bytes so far pass its even
 * share of the total, and never so late that a later shard would be left empty. */
static moira_status_t assign_shards(const moira_ckpt_plan_t *plan, int n_shards, int *shard_of,
                                    size_t *out_total) {
    if ((size_t)n_shards > plan->count)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "random checkpoint: %d shards for %zu tensors; a shard cannot be "
                                 "empty",
                                 n_shards, plan->count);
    size_t total = 0;
    for (size_t i = 0; i < plan->count; i++)
        total += moira_ckpt_tensor_bytes(&plan->tensors[i]);
    size_t so_far = 0;
    int shard = 0;
    bool shard_used = false;
    for (size_t i = 0; i < plan->count; i++) {
        size_t left = plan->count - i;
        bool past_share = (double)so_far >= (double)total * (shard + 1) / n_shards;
        bool must_move = left == (size_t)(n_shards - 1 - shard);
        if (shard_used && shard + 1 < n_shards && (past_share || must_move)) {
            shard++;
            shard_used = false;
        }
        shard_of[i] = shard;
        shard_used = true;
        so_far += moira_ckpt_tensor_bytes(&plan->tensors[i]);
    }
    *out_total = total;
    return MOIRA_OK_STATUS;
}

/* Hugging Face's shard file name; the single-file checkpoint is model.safetensors. */
static void shard_name(int shard, int n_shards, char *out, size_t size) {
    if (n_shards == 1)
        snprintf(out, size, "model.safetensors");
    else
        snprintf(out, size, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

/* The fp8 companion of X.weight: X.weight_scale_inv. */
static void scale_name(const char *weight, char *out, size_t size) {
    snprintf(out, size, "%s_scale_inv", weight);
}

/* Makes and writes shard `shard`: the tensors [first, end) of the plan (and their fp8 scales). */
static moira_status_t write_shard(const moira_random_checkpoint_spec_t *spec,
                                  const moira_ckpt_plan_t *plan, size_t first, size_t end,
                                  const char *path) {
    size_t n = end - first;
    moira_tensor_t *weights = calloc(n ? n : 1, sizeof(*weights));
    moira_tensor_t *scales = calloc(n ? n : 1, sizeof(*scales));
    char(*scale_names)[MOIRA_CKPT_NAME_MAX + 16] = calloc(n ? n : 1, sizeof(*scale_names));
    moira_named_tensor_t *named = calloc(2 * n + 1, sizeof(*named));
    moira_status_t status = MOIRA_OK_STATUS;
    if (!weights || !scales || !scale_names || !named)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate shard %s", path);
    size_t count = 0;
    for (size_t i = 0; i < n && !status; i++) {
        const moira_ckpt_tensor_t *t = &plan->tensors[first + i];
        status = moira_ckpt_tensor_make(t, spec->seed, &weights[i], &scales[i]);
        if (status) break;
        named[count++] = (moira_named_tensor_t){.name = t->name, .tensor = &weights[i]};
        if (t->dtype == MOIRA_DTYPE_F8_E4M3) {
            scale_name(t->name, scale_names[i], sizeof(scale_names[i]));
            named[count++] = (moira_named_tensor_t){.name = scale_names[i], .tensor = &scales[i]};
        }
    }
    if (!status) status = moira_safetensors_write(path, named, count);
    for (size_t i = 0; weights && scales && i < n; i++) {
        moira_tensor_release(&weights[i]);
        moira_tensor_release(&scales[i]);
    }
    free(weights);
    free(scales);
    free(scale_names);
    free(named);
    return status;
}

/* model.safetensors.index.json: total_size and every tensor's shard, as save_pretrained writes. */
static moira_status_t write_index(const moira_ckpt_plan_t *plan, const int *shard_of, int n_shards,
                                  size_t total, const char *dir) {
    json_t *map = json_object();
    json_t *root = json_pack("{s:{s:I}}", "metadata", "total_size", (json_int_t)total);
    bool failed = !map || !root || json_object_set(root, "weight_map", map) != 0;
    for (size_t i = 0; i < plan->count && !failed; i++) {
        const moira_ckpt_tensor_t *t = &plan->tensors[i];
        char file[64], scale[MOIRA_CKPT_NAME_MAX + 16];
        shard_name(shard_of[i], n_shards, file, sizeof(file));
        failed = json_object_set_new(map, t->name, json_string(file)) != 0;
        if (!failed && t->dtype == MOIRA_DTYPE_F8_E4M3) {
            scale_name(t->name, scale, sizeof(scale));
            failed = json_object_set_new(map, scale, json_string(file)) != 0;
        }
    }
    moira_status_t status =
        failed ? moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot build the index")
               : moira_ckpt_write_json(dir, "model.safetensors.index.json", root);
    json_decref(map);
    json_decref(root);
    return status;
}

/* Every file of the checkpoint into the (temporary) directory `dir`. */
static moira_status_t write_contents(const moira_random_checkpoint_spec_t *spec, const char *dir) {
    /* With a tokenizer, its special ids are the checkpoint's, as in a real one. */
    moira_random_checkpoint_spec_t with_ids = *spec;
    if (spec->tokenizer) {
        MOIRA_RETURN_IF_ERROR(moira_ckpt_read_tokenizer(spec->tokenizer, spec->config.vocab_size,
                                                        &with_ids.bos_token_id,
                                                        &with_ids.eos_token_id));
        MOIRA_RETURN_IF_ERROR(moira_ckpt_copy_tokenizer(spec->tokenizer, dir));
    }
    MOIRA_RETURN_IF_ERROR(moira_ckpt_write_configs(&with_ids, dir));
    moira_ckpt_plan_t plan;
    moira_status_t status = moira_ckpt_plan_make(spec, &plan);
    int *shard_of = status ? NULL : malloc((plan.count ? plan.count : 1) * sizeof(int));
    if (!status && !shard_of)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate the shard map");
    size_t total = 0;
    if (!status) status = assign_shards(&plan, spec->n_shards, shard_of, &total);
    for (size_t first = 0; !status && first < plan.count;) {
        size_t end = first;
        while (end < plan.count && shard_of[end] == shard_of[first])
            end++;
        char file[64], path[PATH_BYTES];
        shard_name(shard_of[first], spec->n_shards, file, sizeof(file));
        if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path))
            status = bad_spec("the output directory's path is too long");
        if (!status) status = write_shard(spec, &plan, first, end, path);
        first = end;
    }
    if (!status && spec->n_shards > 1)
        status = write_index(&plan, shard_of, spec->n_shards, total, dir);
    free(shard_of);
    moira_ckpt_plan_free(&plan);
    return status;
}

moira_status_t moira_random_checkpoint_write(const moira_random_checkpoint_spec_t *spec,
                                             const char *dir) {
    MOIRA_RETURN_IF_ERROR(check_spec(spec));
    char target[PATH_BYTES], temp[PATH_BYTES];
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') /* "out/" names the directory "out" */
        len--;
    if (len == 0 || len + 64 >= sizeof(target)) /* room for "/model-00001-of-00002..." */
        return bad_spec("the output directory's path is empty or too long");
    memcpy(target, dir, len);
    target[len] = '\0';
    MOIRA_RETURN_IF_ERROR(check_target(target));
    if (snprintf(temp, sizeof(temp), "%s.tmp.XXXXXX", target) >= (int)sizeof(temp) ||
        !mkdtemp(temp))
        return moira_status_make(MOIRA_CODE_IO, "cannot create a directory beside %s: %s", target,
                                 strerror(errno));
    /* mkdtemp makes 0700; a checkpoint gets what mkdir would give it. umask can only be read by
     * setting it back; this runs before any other thread of the writer creates a file. */
    mode_t mask = umask(0);
    umask(mask);
    moira_status_t status = MOIRA_OK_STATUS;
    if (chmod(temp, 0777 & ~mask) != 0)
        status = moira_status_make(MOIRA_CODE_IO, "%s: %s", temp, strerror(errno));
    if (!status) status = write_contents(spec, temp);
    if (!status && rename(temp, target) != 0) {
        int err = errno;
        status = moira_status_make(
            err == ENOTEMPTY || err == EEXIST ? MOIRA_CODE_INVALID_ARGUMENT : MOIRA_CODE_IO,
            "cannot move the finished checkpoint to %s: %s", target, strerror(err));
    }
    if (status) {
        remove_temp_dir(temp);
        return status;
    }
    sync_parent(target);
    return MOIRA_OK_STATUS;
}

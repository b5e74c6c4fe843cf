/* The parts of the random checkpoint writer (ops/random_checkpoint.h), private to
 * ops/random_checkpoint*.c: the tensor list (random_checkpoint_plan.c) and the JSON and tokenizer
 * files (random_checkpoint_files.c).
 *
 * The tensors are listed before any is made: their Hugging Face names, shapes, storage types and
 * value ranges in file order. Listing first lets the writer size and split the shards, write the
 * index, and then make one shard's tensors at a time. */
#ifndef MOIRA_OPS_RANDOM_CHECKPOINT_INTERNAL_H
#define MOIRA_OPS_RANDOM_CHECKPOINT_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/random_checkpoint.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

#define MOIRA_CKPT_NAME_MAX 112

/* One tensor to make: uniform values in [center - spread, center + spread) from a generator
 * seeded by the checkpoint's seed and `name`, stored as `dtype` (fp8 adds `name`'s
 * weight_scale_inv companion, F32 [ceil(rows/128), ceil(cols/128)]). */
typedef struct moira_ckpt_tensor {
    char name[MOIRA_CKPT_NAME_MAX];
    int rank; /* 1 or 2 */
    int64_t shape[2];
    moira_dtype_t dtype;
    float center;
    float spread;
} moira_ckpt_tensor_t;

/* Every tensor of a checkpoint, in file order. Owns `tensors`. */
typedef struct moira_ckpt_plan {
    moira_ckpt_tensor_t *tensors; /* owned; count entries */
    size_t count;
    size_t capacity;
} moira_ckpt_plan_t;

/* Lists the tensors of `spec`: the embedding, every decoder layer, the MTP layers, the final norm
 * and lm_head. `spec` is borrowed and already checked. Caller frees `out_plan` with
 * moira_ckpt_plan_free (also after an error). */
moira_status_t moira_ckpt_plan_make(const moira_random_checkpoint_spec_t *spec,
                                    moira_ckpt_plan_t *out_plan);
void moira_ckpt_plan_free(moira_ckpt_plan_t *plan);

/* Bytes `t` takes in a file, its fp8 scale included: what index.json's total_size adds up. */
size_t moira_ckpt_tensor_bytes(const moira_ckpt_tensor_t *t);

/* Makes `t`'s values for checkpoint seed `seed` as new owned tensors: `out_weight` in t->dtype and,
 * for fp8, `out_scale` (which out_weight->scale points at; zeroed otherwise). Caller releases
 * both. */
moira_status_t moira_ckpt_tensor_make(const moira_ckpt_tensor_t *t, uint64_t seed,
                                      moira_tensor_t *out_weight, moira_tensor_t *out_scale);

/* Writes `root` as the JSON file DIR/NAME, keys sorted and indented as Hugging Face writes its
 * files. All borrowed. Errors: IO naming the file. */
moira_status_t moira_ckpt_write_json(const char *dir, const char *name, json_t *root);

/* Writes config.json and generation_config.json for `spec` into the directory `dir`. Both
 * borrowed. Errors: IO naming the file; OUT_OF_MEMORY. */
moira_status_t moira_ckpt_write_configs(const moira_random_checkpoint_spec_t *spec,
                                        const char *dir);

/* Reads the tokenizer files in the folder `from`: checks that every id tokenizer.json can produce
 * is below `vocab_size`, and sets *io_bos and *io_eos to the ids of tokenizer_config.json's
 * bos_token and eos_token (left alone when it names none). Errors: NOT_FOUND or IO naming the
 * file; INVALID_INPUT for a file that is not JSON (file:line:col) or ids past the vocabulary. */
moira_status_t moira_ckpt_read_tokenizer(const char *from, int64_t vocab_size, int64_t *io_bos,
                                         int64_t *io_eos);

/* Copies tokenizer.json and tokenizer_config.json from the folder `from` into `dir` byte for
 * byte. Errors: NOT_FOUND or IO naming the file. */
moira_status_t moira_ckpt_copy_tokenizer(const char *from, const char *dir);

#endif

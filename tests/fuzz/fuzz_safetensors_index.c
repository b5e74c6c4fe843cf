/* Fuzz target: a sharded checkpoint's model.safetensors.index.json. The input is the index text;
 * the directory beside it holds two fixed, valid shards (an f32 and an fp8 weight with its block
 * scales in the first, bf16 and i64 tensors in the second). Whatever the index says, opening the
 * directory either fails as bad input or yields tensors that can all be found and read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz.h"

static char checkpoint_dir[256];
static char index_path[320];

/* An owned tensor of `dtype` and `shape`, its bytes a simple pattern. */
static moira_tensor_t pattern_tensor(moira_dtype_t dtype, int rank, const int64_t *shape,
                                     unsigned char seed) {
    moira_tensor_t t;
    moira_status_t status = moira_tensor_alloc(dtype, rank, shape, &t);
    FUZZ_ASSERT(!status, "cannot allocate a fixture tensor");
    unsigned char *p = t.data;
    for (size_t i = 0; i < moira_tensor_nbytes(&t); i++)
        p[i] = (unsigned char)(seed + i * 7) & 0x3f; /* small values: finite in every float type */
    return t;
}

/* Writes one fixture shard. */
static void write_shard(const char *name, const moira_named_tensor_t *tensors, size_t count) {
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", checkpoint_dir, name);
    moira_status_t status = moira_safetensors_write(path, tensors, count);
    FUZZ_ASSERT(!status, "cannot write fixture %s: %s", path, moira_status_message(status));
}

/* The checkpoint directory and its two shards, made once per process. */
static void setup_checkpoint(void) {
    if (checkpoint_dir[0]) return;
    const char *scratch = moira_fuzz_setup();
    snprintf(checkpoint_dir, sizeof(checkpoint_dir), "%s/checkpoint", scratch);
    FUZZ_ASSERT(mkdir(checkpoint_dir, 0755) == 0, "cannot create %s", checkpoint_dir);
    snprintf(index_path, sizeof(index_path), "%s/model.safetensors.index.json", checkpoint_dir);
    int64_t s_a[2] = {2, 3}, s_w[2] = {130, 4}, s_s[2] = {2, 1}, s_b[1] = {5}, s_i[2] = {1, 2};
    moira_tensor_t a = pattern_tensor(MOIRA_DTYPE_F32, 2, s_a, 1);
    moira_tensor_t w = pattern_tensor(MOIRA_DTYPE_F8_E4M3, 2, s_w, 2);
    moira_tensor_t s = pattern_tensor(MOIRA_DTYPE_F32, 2, s_s, 3);
    moira_tensor_t b = pattern_tensor(MOIRA_DTYPE_BF16, 1, s_b, 4);
    moira_tensor_t i = pattern_tensor(MOIRA_DTYPE_I64, 2, s_i, 5);
    moira_named_tensor_t first[] = {{"model.layers.0.mlp.gate.weight", &a},
                                    {"model.layers.0.mlp.experts.0.up_proj.weight", &w},
                                    {"model.layers.0.mlp.experts.0.up_proj.weight_scale_inv", &s}};
    moira_named_tensor_t second[] = {{"model.layers.1.input_layernorm.weight", &b},
                                     {"positions", &i}};
    write_shard("model-00001-of-00002.safetensors", first, 3);
    write_shard("model-00002-of-00002.safetensors", second, 2);
    moira_tensor_t *all[] = {&a, &w, &s, &b, &i};
    for (size_t k = 0; k < sizeof(all) / sizeof(all[0]); k++)
        moira_tensor_release(all[k]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup_checkpoint();
    moira_fuzz_write_file(index_path, data, size);
    moira_safetensors_t *file = NULL;
    moira_status_t status = moira_safetensors_open(checkpoint_dir, &file);
    if (status) {
        moira_fuzz_expect_input_error(status, "sharded open");
        return 0;
    }
    size_t count = moira_safetensors_count(file);
    FUZZ_ASSERT(count <= 5, "%zu tensors from two shards of five", count);
    for (size_t k = 0; k < count; k++) {
        const moira_tensor_t *t = NULL;
        const char *name = moira_safetensors_name(file, k);
        status = moira_safetensors_find(file, name, &t);
        FUZZ_ASSERT(!status && t, "\"%s\" listed but not found", name);
        const unsigned char *p = t->data;
        unsigned sum = 0;
        for (size_t b = 0; b < moira_tensor_nbytes(t); b++)
            sum += p[b];
        (void)sum;
    }
    moira_safetensors_close(file);
    return 0;
}

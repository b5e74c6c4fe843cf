/* Fuzz target: one safetensors file (8-byte header length, JSON header, data section), parsed
 * from memory so that a view reaching past the end of the file is caught by ASan. A file that
 * opens must hand out views that can be read whole, fp8 block scales that cover their weights,
 * and must survive the writer: written back and reopened, every tensor is the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz.h"

/* Reads every byte of a view, so a view outside its file is an ASan report, not a silent pass. */
static unsigned read_all(const moira_tensor_t *t) {
    const unsigned char *p = t->data;
    unsigned sum = 0;
    for (size_t i = 0, n = moira_tensor_nbytes(t); i < n; i++)
        sum += p[i];
    return sum;
}

/* What open promises about each tensor it hands out. */
static void check_tensors(const moira_safetensors_t *file) {
    size_t count = moira_safetensors_count(file);
    for (size_t i = 0; i < count; i++) {
        const char *name = moira_safetensors_name(file, i);
        FUZZ_ASSERT(name, "tensor %zu has no name", i);
        const moira_tensor_t *t = NULL;
        moira_status_t status = moira_safetensors_find(file, name, &t);
        FUZZ_ASSERT(!status && t, "tensor \"%s\" is listed but not found", name);
        FUZZ_ASSERT(t->rank >= 0 && t->rank <= MOIRA_MAX_RANK, "rank %d", t->rank);
        FUZZ_ASSERT((unsigned)t->dtype < MOIRA_DTYPE_COUNT, "dtype %d", (int)t->dtype);
        FUZZ_ASSERT(moira_tensor_nbytes(t) == 0 || t->data, "\"%s\" has bytes but no data", name);
        (void)read_all(t);
        if (!t->scale) continue;
        const moira_tensor_t *s = t->scale;
        FUZZ_ASSERT(t->dtype == MOIRA_DTYPE_F8_E4M3 && t->rank == 2, "scales on a non-fp8 weight");
        FUZZ_ASSERT(s->dtype == MOIRA_DTYPE_F32 && s->rank == 2 &&
                        s->shape[0] == (t->shape[0] + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK &&
                        s->shape[1] == (t->shape[1] + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK,
                    "block scales of \"%s\" do not cover the weight", name);
        (void)read_all(s);
    }
}

/* Writes every tensor back and reopens the result: what Moira reads it must be able to write. */
static void round_trip(const moira_safetensors_t *file, const char *dir) {
    size_t count = moira_safetensors_count(file);
    moira_named_tensor_t *named = calloc(count + 1, sizeof(*named));
    FUZZ_ASSERT(named, "out of memory");
    for (size_t i = 0; i < count; i++) {
        named[i].name = moira_safetensors_name(file, i);
        moira_status_t status = moira_safetensors_find(file, named[i].name, &named[i].tensor);
        FUZZ_ASSERT(!status, "find failed");
    }
    char path[256];
    snprintf(path, sizeof(path), "%s/round-trip.safetensors", dir);
    moira_status_t status = moira_safetensors_write(path, named, count);
    FUZZ_ASSERT(!status, "writing back what was read failed: %s", moira_status_message(status));
    moira_safetensors_t *again = NULL;
    status = moira_safetensors_open(path, &again);
    FUZZ_ASSERT(!status, "reading back what was written failed: %s", moira_status_message(status));
    FUZZ_ASSERT(moira_safetensors_count(again) == count, "tensor count changed");
    for (size_t i = 0; i < count; i++) {
        const moira_tensor_t *a = named[i].tensor, *b = NULL;
        status = moira_safetensors_find(again, named[i].name, &b);
        FUZZ_ASSERT(!status, "\"%s\" lost in the round trip", named[i].name);
        FUZZ_ASSERT(
            a->dtype == b->dtype && a->rank == b->rank &&
                !memcmp(a->shape, b->shape, sizeof(a->shape[0]) * (size_t)a->rank) &&
                (moira_tensor_nbytes(a) == 0 || !memcmp(a->data, b->data, moira_tensor_nbytes(a))),
            "\"%s\" changed in the round trip", named[i].name);
    }
    moira_safetensors_close(again);
    free(named);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = moira_fuzz_setup();
    moira_safetensors_t *file = NULL;
    moira_status_t status = moira_safetensors_open_memory("fuzz.safetensors", data, size, &file);
    if (status) {
        moira_fuzz_expect_input_error(status, "safetensors open");
        return 0;
    }
    check_tensors(file);
    round_trip(file, dir);
    moira_safetensors_close(file);
    return 0;
}

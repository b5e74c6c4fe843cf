/* safetensors I/O: the weight and activation file format (DESIGN.md §5, "Weights").
 *
 * A safetensors file is an 8-byte little-endian header length, a JSON header naming every tensor
 * (dtype, shape, byte range), then the raw data. The reader maps the file read-only and hands out
 * borrowed views into the mapping, so opening a model costs address space, not memory. A hostile
 * or truncated file is an error (MOIRA_CODE_INVALID_INPUT, "PATH: tensor NAME: ..."), never a
 * crash. The writer produces files the Hugging Face `safetensors` library reads, and writes them
 * whole or not at all (temporary file, fsync, rename). */
#ifndef MOIRA_RUNTIME_SAFETENSORS_H
#define MOIRA_RUNTIME_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "runtime/status.h"
#include "runtime/tensor.h"

/* The largest JSON header the reader accepts (the Hugging Face library uses the same limit). */
#define MOIRA_SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)

/* An open file, or a sharded checkpoint directory seen as one set of tensors. Opaque. After open
 * it is never modified, so any number of threads may look tensors up in it at once. */
typedef struct moira_safetensors moira_safetensors_t;

/* One tensor to write: `name` and `tensor` are borrowed for the duration of the call. */
typedef struct moira_named_tensor {
    const char *name;
    const moira_tensor_t *tensor;
} moira_named_tensor_t;

/* Opens `path`, which is either a .safetensors file or a directory holding
 * model.safetensors.index.json (every shard its "weight_map" names is opened) or exactly one
 * *.safetensors file. Everything is validated up front, so later lookups cannot fail on a
 * malformed file: bounds, sizes, duplicate names, dtypes (F32, F16, BF16, F8_E4M3, I32, I64; any
 * other is MOIRA_CODE_UNSUPPORTED), and the block scales of fp8 weights. `path` is borrowed
 * (copied). On success the caller owns `*out_file` and releases it with moira_safetensors_close;
 * on failure `*out_file` is NULL. */
moira_status_t moira_safetensors_open(const char *path, moira_safetensors_t **out_file);

/* Parses a safetensors file held in memory, with every check moira_safetensors_open makes.
 * The bytes are copied (into exactly `size` bytes of heap, so a sanitizer catches any read past
 * the end); `name` stands for the path in messages. Used where the bytes did not come from a
 * file, and by the fuzz targets. Ownership as moira_safetensors_open. */
moira_status_t moira_safetensors_open_memory(const char *name, const void *bytes, size_t size,
                                             moira_safetensors_t **out_file);

/* Unmaps the file(s) and frees every view handed out. Accepts NULL. */
void moira_safetensors_close(moira_safetensors_t *file);

/* The path given to open. Borrowed: valid until close. */
const char *moira_safetensors_path(const moira_safetensors_t *file);

/* Number of tensors (over all shards). */
size_t moira_safetensors_count(const moira_safetensors_t *file);

/* Name of tensor `index` (0 <= index < count), in header order, shard by shard; NULL when out of
 * range. Borrowed: valid until close. */
const char *moira_safetensors_name(const moira_safetensors_t *file, size_t index);

/* A tensor of a safetensors dtype Moira does not compute with (F64, BOOL, U8, I8, I16, U16, U32,
 * U64, F8_E5M2, F8_E8M0, C64): open checks its bounds like any other's and keeps it aside, so that
 * tools which only read values (`moira compare`) can still reach it. */
typedef struct moira_safetensors_other {
    const char *name;  /* borrowed: valid until close */
    const char *dtype; /* its safetensors dtype name; borrowed: valid until close */
    int rank;
    int64_t shape[MOIRA_MAX_RANK];
    const void *data; /* borrowed view into the file, valid until close; not aligned: memcpy */
    size_t nbytes;
} moira_safetensors_other_t;

/* Number of such tensors (over all shards). They are not in moira_safetensors_count. */
size_t moira_safetensors_other_count(const moira_safetensors_t *file);

/* Such tensor `index` (0 <= index < other_count), in header order; NULL when out of range.
 * Borrowed: valid until close. */
const moira_safetensors_other_t *moira_safetensors_other(const moira_safetensors_t *file,
                                                         size_t index);

/* Whether a tensor of that name exists; for optional weights, where a missing one is no error. */
bool moira_safetensors_has(const moira_safetensors_t *file, const char *name);

/* Looks a tensor up by name. `*out_tensor` is borrowed: a view (owns_data false) whose data points
 * into the mapping (or into an aligned copy the file owns, when the file placed it at an offset not
 * aligned to its element size), valid until close. An F8_E4M3 tensor `X.weight` with a companion
 * `X.weight_scale_inv` gets `scale` set to that tensor as F32 [ceil(rows/128), ceil(cols/128)]
 * (a BF16 scale is converted to an F32 copy the file owns). MOIRA_CODE_NOT_FOUND, naming the
 * tensor and the file, when there is none; `*out_tensor` is then NULL. */
moira_status_t moira_safetensors_find(const moira_safetensors_t *file, const char *name,
                                      const moira_tensor_t **out_tensor);

/* Writes `count` tensors, in the given order, to `path`: first to a temporary file next to it,
 * then fsync and rename, so readers never see a partial file and on failure an existing `path` is
 * left as it was. Names must be unique, non-empty valid UTF-8 and not "__metadata__"; tensors must
 * have a known dtype, rank <= 4 and data for every byte. `tensors` and everything it points to
 * are borrowed. */
moira_status_t moira_safetensors_write(const char *path, const moira_named_tensor_t *tensors,
                                       size_t count);

/* The same file's bytes written into `out` (borrowed; typically an output of runtime/atomic_file
 * that the caller commits together with others); `path` only names the file in messages. On
 * error part of the file may be in the stream: the caller aborts it. */
moira_status_t moira_safetensors_write_stream(const char *path, FILE *out,
                                              const moira_named_tensor_t *tensors, size_t count);

/* A file whose tensors are made one at a time, so that only one needs to be in memory (moira
 * quantize): the header, from tensors that give dtype and shape (their data is not read and may
 * be NULL), then each tensor's bytes, in the header's order, with
 * moira_safetensors_write_tensor_data. Same rules and errors as moira_safetensors_write_stream. */
moira_status_t moira_safetensors_write_header(const char *path, FILE *out,
                                              const moira_named_tensor_t *tensors, size_t count);

/* The bytes of one tensor whose entry the header written before has, in order. */
moira_status_t moira_safetensors_write_tensor_data(const char *path, FILE *out,
                                                   const moira_tensor_t *tensor);

#endif

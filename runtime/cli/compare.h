/* `moira compare`: comparing one tensor of a safetensors file with the tensor of the same name in
 * another (DESIGN.md §4 "Comparing backends"). cmd_compare.c pairs the names and prints; this
 * part reads the values and measures how far apart they are. */
#ifndef MOIRA_CLI_COMPARE_H
#define MOIRA_CLI_COMPARE_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/tensor.h"

/* One tensor as stored, whatever its dtype: a tensor Moira computes with (through
 * moira_safetensors_find) or one it only keeps aside (moira_safetensors_other). Everything is
 * borrowed from the open file and valid until it is closed. */
typedef struct compare_tensor {
    const char *name;
    const char *dtype; /* safetensors dtype name: "F32", "F64", "I64", "BOOL", ... */
    int rank;
    int64_t shape[MOIRA_MAX_RANK];
    const void *data;            /* little-endian elements; may be unaligned */
    const moira_tensor_t *scale; /* F8_E4M3 block scales (F32), or NULL */
} compare_tensor_t;

/* What comparing B with A (the reference) found. */
typedef struct compare_result {
    bool compared;     /* values were read (shapes and kinds of dtype allow it) */
    bool ok;           /* within the limit, no NaN/Inf mismatch, integers all equal */
    double nmse;       /* sum((a-b)^2) / sum(a^2) over elements finite in both; the plain sum of
                          squares when A is all zeros (as the conformance suite reports it) */
    double max_abs;    /* largest |a-b| over elements finite in both */
    double limit;      /* the NMSE limit applied; 0 for integers, which must match exactly */
    char problem[256]; /* why not ok, for people; "" when ok */
} compare_result_t;

/* Compares `b` with `a`. Floats (F64, F32, F16, BF16, F8_E4M3 with its block scales) pass when
 * the NMSE is within `limit`, or, when `limit` is negative, within the limit DESIGN.md gives the
 * less precise of the two dtypes (f32 and f64 1e-6, f16 1e-4, bf16 2e-3, fp8 2e-2); a NaN or Inf
 * where the other holds something else fails. Integers (I8..I64, U8..U64, BOOL) must be equal.
 * Shapes must be equal, or hold the same rows: the same element count with the lower-rank shape's
 * dimensions after its first equal to the other's last ones ([1, T, D] or [B, T, D] against
 * [B*T, D]). Reads the data in small chunks, so memory stays flat for any tensor size. */
void compare_tensors(const compare_tensor_t *a, const compare_tensor_t *b, double limit,
                     compare_result_t *out);

#endif

/* Reading two stored tensors as numbers and measuring how far apart they are, for `moira compare`.
 * Values are read chunk by chunk into doubles (and, for integer dtypes, into exact 64-bit
 * values), so a tensor of any size costs a few kilobytes of memory. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime/cli/compare.h"
#include "runtime/device.h"
#include "runtime/dtype.h"

#define CHUNK 512

typedef enum value_kind { VALUE_FLOAT, VALUE_INT } value_kind_t;

/* A safetensors dtype compare knows how to read. */
typedef struct element_type {
    const char *name;
    value_kind_t kind;
    size_t size;
    bool is_signed;
} element_type_t;

static const element_type_t element_types[] = {
    {"F64", VALUE_FLOAT, 8, true},     {"F32", VALUE_FLOAT, 4, true},
    {"F16", VALUE_FLOAT, 2, true},     {"BF16", VALUE_FLOAT, 2, true},
    {"F8_E4M3", VALUE_FLOAT, 1, true}, {"I64", VALUE_INT, 8, true},
    {"I32", VALUE_INT, 4, true},       {"I16", VALUE_INT, 2, true},
    {"I8", VALUE_INT, 1, true},        {"U64", VALUE_INT, 8, false},
    {"U32", VALUE_INT, 4, false},      {"U16", VALUE_INT, 2, false},
    {"U8", VALUE_INT, 1, false},       {"BOOL", VALUE_INT, 1, false},
};

/* An integer of any stored width, kept exact: U64 values above INT64_MAX and I64 values below
 * zero are told apart by `negative`, so equality needs no wider type. */
typedef struct int_value {
    uint64_t bits; /* two's complement, sign-extended to 64 bits */
    bool negative;
} int_value_t;

/* How the elements compared so far differ. */
typedef struct tally {
    double num, den, max_abs;
    int64_t mismatches; /* floats: NaN/Inf mismatches; integers: unequal elements */
    int64_t first;      /* flat index of the first mismatch */
    double first_a, first_b;
    int_value_t first_ia, first_ib;
} tally_t;

/* The table entry for a safetensors dtype name, or NULL when compare cannot read it. */
static const element_type_t *element_type(const char *name) {
    for (size_t i = 0; i < sizeof(element_types) / sizeof(element_types[0]); i++)
        if (!strcmp(element_types[i].name, name)) return &element_types[i];
    return NULL;
}

/* DESIGN.md's NMSE limit for results held in a dtype; f64 is held to f32's. */
static double dtype_limit(const char *name) {
    moira_dtype_t dtype;
    return moira_dtype_from_name(name, &dtype) ? moira_precision_nmse_limit(dtype)
                                               : moira_precision_nmse_limit(MOIRA_DTYPE_F32);
}

static int64_t numel(const compare_tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++)
        n *= t->shape[i];
    return n;
}

/* Whether the two shapes lay out the same rows: equal, or of different ranks with equal element
 * counts and the lower-rank shape's dimensions after its first equal to the other's last ones. A
 * batch-1 PyTorch dump [1, T, D] is Moira's [T, D]; [B, T, D] is [B*T, D] in memory. Equal ranks
 * must match exactly: [T, B, D] against [B, T, D] would pair the wrong rows. */
static bool same_rows(const compare_tensor_t *a, const compare_tensor_t *b) {
    const compare_tensor_t *lo = a->rank <= b->rank ? a : b, *hi = lo == a ? b : a;
    if (a->rank == b->rank) {
        for (int i = 0; i < a->rank; i++)
            if (a->shape[i] != b->shape[i]) return false;
        return true;
    }
    for (int i = 1; i < lo->rank; i++)
        if (lo->shape[lo->rank - i] != hi->shape[hi->rank - i]) return false;
    return numel(a) == numel(b);
}

/* The F8_E4M3 block scale of flat element `i` (1 for tensors without scales). */
static float scale_at(const compare_tensor_t *t, int64_t i) {
    if (!t->scale || t->rank != 2) return 1.0f;
    int64_t cols = t->shape[1], row = i / cols, col = i % cols;
    const float *scales = t->scale->data;
    return scales[(row / MOIRA_FP8_BLOCK) * t->scale->shape[1] + col / MOIRA_FP8_BLOCK];
}

/* Elements [start, start + count) of a float tensor as doubles. */
static void read_floats(const compare_tensor_t *t, const element_type_t *type, int64_t start,
                        size_t count, double *out) {
    const unsigned char *p = (const unsigned char *)t->data + (size_t)start * type->size;
    moira_dtype_t dtype;
    if (!moira_dtype_from_name(type->name, &dtype)) { /* F64, which Moira does not compute in */
        for (size_t i = 0; i < count; i++)
            memcpy(&out[i], p + 8 * i, 8);
        return;
    }
    /* moira_safetensors_find hands these out aligned, as moira_convert_to_f32 needs. */
    float f[CHUNK];
    moira_convert_to_f32(dtype, p, f, count);
    for (size_t i = 0; i < count; i++)
        out[i] = (double)(f[i] * scale_at(t, start + (int64_t)i));
}

/* Elements [start, start + count) of an integer tensor, exact and as doubles. */
static void read_ints(const compare_tensor_t *t, const element_type_t *type, int64_t start,
                      size_t count, int_value_t *ints, double *values) {
    const unsigned char *p = (const unsigned char *)t->data + (size_t)start * type->size;
    unsigned width = 8u * (unsigned)type->size;
    for (size_t i = 0; i < count; i++, p += type->size) {
        uint64_t bits = 0;
        for (size_t byte = 0; byte < type->size; byte++)
            bits |= (uint64_t)p[byte] << (8 * byte);
        if (type->is_signed && width < 64 && (bits >> (width - 1)) & 1) bits |= ~0ull << width;
        ints[i] = (int_value_t){bits, type->is_signed && (bits >> 63)};
        values[i] = ints[i].negative ? (double)(int64_t)bits : (double)bits;
    }
}

/* Adds one pair of float elements: NaN against NaN and an infinity against the same infinity
 * agree and add nothing to the sums; any other pair involving NaN or Inf is a mismatch. */
static void tally_float(tally_t *t, int64_t index, double a, double b) {
    if (isfinite(a) && isfinite(b)) {
        double d = a - b;
        t->num += d * d;
        t->den += a * a;
        if (fabs(d) > t->max_abs) t->max_abs = fabs(d);
        return;
    }
    if ((isnan(a) && isnan(b)) || a == b) return;
    if (t->mismatches++ == 0) {
        t->first = index;
        t->first_a = a;
        t->first_b = b;
    }
}

/* Adds one pair of integer elements; `a` and `b` are the same values as doubles. */
static void tally_int(tally_t *t, int64_t index, int_value_t ia, int_value_t ib, double a,
                      double b) {
    double d = a - b;
    t->num += d * d;
    t->den += a * a;
    if (fabs(d) > t->max_abs) t->max_abs = fabs(d);
    if (ia.bits == ib.bits && ia.negative == ib.negative) return;
    if (t->mismatches++ == 0) {
        t->first = index;
        t->first_ia = ia;
        t->first_ib = ib;
    }
}

/* "[2, 5]": flat index `flat` as an index into `t`'s shape. */
static const char *index_str(const compare_tensor_t *t, int64_t flat, char *buf, size_t size) {
    int64_t index[MOIRA_MAX_RANK] = {0};
    for (int i = t->rank - 1; i >= 0; i--) {
        if (t->shape[i] > 0) {
            index[i] = flat % t->shape[i];
            flat /= t->shape[i];
        }
    }
    size_t o = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < t->rank && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, i ? ", %" PRId64 : "%" PRId64, index[i]);
    if (o < size) snprintf(buf + o, size - o, "]");
    return buf;
}

static const char *int_str(int_value_t v, char *buf, size_t size) {
    if (v.negative)
        snprintf(buf, size, "%" PRId64, (int64_t)v.bits);
    else
        snprintf(buf, size, "%" PRIu64, v.bits);
    return buf;
}

/* Runs over every element pair of two tensors already known to hold the same rows. */
static void tally_all(const compare_tensor_t *a, const element_type_t *ta,
                      const compare_tensor_t *b, const element_type_t *tb, tally_t *t) {
    double va[CHUNK], vb[CHUNK];
    int_value_t ia[CHUNK], ib[CHUNK];
    int64_t n = numel(a);
    for (int64_t start = 0; start < n; start += CHUNK) {
        size_t count = (size_t)(n - start < CHUNK ? n - start : CHUNK);
        if (ta->kind == VALUE_INT) {
            read_ints(a, ta, start, count, ia, va);
            read_ints(b, tb, start, count, ib, vb);
            for (size_t i = 0; i < count; i++)
                tally_int(t, start + (int64_t)i, ia[i], ib[i], va[i], vb[i]);
        } else {
            read_floats(a, ta, start, count, va);
            read_floats(b, tb, start, count, vb);
            for (size_t i = 0; i < count; i++)
                tally_float(t, start + (int64_t)i, va[i], vb[i]);
        }
    }
}

void compare_tensors(const compare_tensor_t *a, const compare_tensor_t *b, double limit,
                     compare_result_t *out) {
    memset(out, 0, sizeof(*out));
    const element_type_t *ta = element_type(a->dtype), *tb = element_type(b->dtype);
    if (!ta || !tb) {
        snprintf(out->problem, sizeof(out->problem),
                 "dtype %s cannot be compared (compare reads F64, F32, F16, BF16, F8_E4M3, "
                 "integers and BOOL)",
                 ta ? b->dtype : a->dtype);
        return;
    }
    if (ta->kind != tb->kind) {
        snprintf(out->problem, sizeof(out->problem),
                 "one holds integers, the other floating-point numbers");
        return;
    }
    if (!same_rows(a, b)) {
        snprintf(out->problem, sizeof(out->problem), "shapes differ");
        return;
    }
    out->compared = true;
    out->limit = ta->kind == VALUE_INT ? 0
                 : limit >= 0          ? limit
                                       : fmax(dtype_limit(a->dtype), dtype_limit(b->dtype));
    tally_t t = {0};
    tally_all(a, ta, b, tb, &t);
    out->nmse = t.den > 0 ? t.num / t.den : t.num;
    out->max_abs = t.max_abs;
    char at[96], x[32], y[32];
    if (t.mismatches && ta->kind == VALUE_INT)
        snprintf(out->problem, sizeof(out->problem),
                 "%" PRId64 " of %" PRId64 " elements differ, the first at %s: A %s, B %s",
                 t.mismatches, numel(a), index_str(a, t.first, at, sizeof(at)),
                 int_str(t.first_ia, x, sizeof(x)), int_str(t.first_ib, y, sizeof(y)));
    else if (t.mismatches)
        snprintf(out->problem, sizeof(out->problem),
                 "%" PRId64 " NaN/Inf mismatch%s, the first at %s: A %g, B %g", t.mismatches,
                 t.mismatches == 1 ? "" : "es", index_str(a, t.first, at, sizeof(at)), t.first_a,
                 t.first_b);
    else if (!(out->nmse <= out->limit))
        snprintf(out->problem, sizeof(out->problem), "NMSE above the limit");
    out->ok = out->problem[0] == '\0';
}

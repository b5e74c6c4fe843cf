/* Op names, the gate's capacity rule and launch validation.
 *
 * Validation is driven by one table that restates ops/op.h: for every op, its parameter struct,
 * a function that checks the parameters and names the dimensions they fix, and one row per
 * operand with its name, element class, flags and shape written as the header writes it ("T,D",
 * "E,I,D", "T*k,D", "E+1"). Shapes are checked by unification: a dimension symbol seen for the
 * first time is bound to the operand's size, later uses must agree, and an expression such as
 * "T*k" waits until its symbols are known. */
#include "ops/op.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime/tensor.h"
#include "runtime/weight_format.h"

/* What element types an operand accepts. */
typedef enum operand_type {
    TYPE_F32,    /* activations, norm weights, biases */
    TYPE_I32,    /* indices, positions, offsets */
    TYPE_WEIGHT, /* F32, F16, BF16 or F8_E4M3 with block scales */
    TYPE_CACHE,  /* latent cache rows: F32 or BF16, one dtype for all of a launch's */
} operand_type_t;

enum operand_flags {
    OPTIONAL = 1 << 0, /* may be passed with a NULL buffer */
    STRIDED = 1 << 1,  /* may have a row_stride */
    OUTPUT = 1 << 2,   /* written by the op: must not overlap any other operand */
    IN_PLACE = 1 << 3, /* an output that may be exactly operand 0 */
};

#define MAX_RULE_OPERANDS 8
#define MAX_DIMS 4

typedef struct operand_rule {
    const char *name;
    operand_type_t type;
    const char *shape; /* comma-separated dimension expressions over one-letter symbols */
    unsigned flags;
} operand_rule_t;

/* Dimension symbols by letter; -1 while unbound. */
typedef struct symbols {
    int64_t value[128];
} symbols_t;

/* Checks the parameters on their own and binds the dimensions they fix. */
typedef moira_status_t (*bind_params_fn)(const void *params, symbols_t *symbols);

/* Checks what needs both parameters and operand shapes (NULL for most ops). */
typedef moira_status_t (*check_bound_fn)(const void *params, const symbols_t *symbols);

typedef struct op_rule {
    const char *name;
    size_t params_size;
    bind_params_fn bind_params;
    check_bound_fn check_bound;
    int n_operands;
    operand_rule_t operands[MAX_RULE_OPERANDS];
} op_rule_t;

/* Parameter errors read "gate: top_k 9 exceeds n_experts 8"; the op name is added by the caller. */
#define REQUIRE_PARAM(cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, __VA_ARGS__);           \
    } while (0)

/* A negative eps can make the root of a zero row imaginary; NaN would poison every output. */
static moira_status_t bind_rmsnorm(const void *raw, symbols_t *symbols) {
    const moira_rmsnorm_params_t *p = raw;
    (void)symbols;
    REQUIRE_PARAM(isfinite(p->eps) && p->eps >= 0, "eps %g must be finite and >= 0",
                  (double)p->eps);
    return MOIRA_OK_STATUS;
}

/* Shared by every op whose only parameter is an accumulation factor: a NaN or infinite beta
 * would poison y even where the caller meant to overwrite it. */
static moira_status_t check_beta(float beta) {
    REQUIRE_PARAM(isfinite(beta), "beta %g must be finite", (double)beta);
    return MOIRA_OK_STATUS;
}

/* The three beta-only ops differ only in their struct type, hence three one-line adapters. */
static moira_status_t bind_linear(const void *raw, symbols_t *symbols) {
    (void)symbols;
    return check_beta(((const moira_linear_params_t *)raw)->beta);
}

static moira_status_t bind_combine(const void *raw, symbols_t *symbols) {
    (void)symbols;
    return check_beta(((const moira_moe_combine_params_t *)raw)->beta);
}

static moira_status_t bind_swiglu(const void *raw, symbols_t *symbols) {
    (void)symbols;
    return check_beta(((const moira_swiglu_params_t *)raw)->beta);
}

/* Every head's rope slice must lie inside its head; whether the last head fits in the row is
 * checked against x once C is known (check_rope_row). */
static moira_status_t bind_rope(const void *raw, symbols_t *symbols) {
    const moira_rope_params_t *p = raw;
    (void)symbols;
    REQUIRE_PARAM(p->n_heads >= 1, "n_heads %d must be >= 1", p->n_heads);
    REQUIRE_PARAM(p->rope_dim >= 2 && p->rope_dim % 2 == 0 &&
                      p->rope_dim <= 2 * MOIRA_ROPE_MAX_PAIRS,
                  "rope_dim %d must be even and in [2, %d]", p->rope_dim, 2 * MOIRA_ROPE_MAX_PAIRS);
    REQUIRE_PARAM(p->rope_offset >= 0, "rope_offset %d must be >= 0", p->rope_offset);
    REQUIRE_PARAM(p->n_heads == 1 || (int64_t)p->rope_offset + p->rope_dim <= p->head_stride,
                  "rope slice [%d, %d) does not fit in a head of stride %d", p->rope_offset,
                  p->rope_offset + p->rope_dim, p->head_stride);
    REQUIRE_PARAM(isfinite(p->cos_sin_scale), "cos_sin_scale must be finite");
    for (int i = 0; i < p->rope_dim / 2; i++)
        REQUIRE_PARAM(isfinite(p->inv_freq[i]), "inv_freq[%d] must be finite", i);
    return MOIRA_OK_STATUS;
}

/* The last head's rope slice must end inside the row, or the kernel would rotate past it. */
static moira_status_t check_rope_row(const void *raw, const symbols_t *symbols) {
    const moira_rope_params_t *p = raw;
    int64_t end = (int64_t)(p->n_heads - 1) * p->head_stride + p->rope_offset + p->rope_dim;
    REQUIRE_PARAM(end <= symbols->value['C'],
                  "%d heads of stride %d with rope slice [%d, %d) need rows of %lld, x has %lld",
                  p->n_heads, p->head_stride, p->rope_offset, p->rope_offset + p->rope_dim,
                  (long long)end, (long long)symbols->value['C']);
    return MOIRA_OK_STATUS;
}

/* Everything the router's selection loops rely on: enough experts in the kept groups for top_k,
 * groups that tile the experts, and a known scoring function. */
static moira_status_t bind_gate(const void *raw, symbols_t *symbols) {
    const moira_gate_params_t *p = raw;
    REQUIRE_PARAM(p->n_experts >= 1, "n_experts %d must be >= 1", p->n_experts);
    REQUIRE_PARAM(p->top_k >= 1 && p->top_k <= p->n_experts, "top_k %d must be in [1, %d]",
                  p->top_k, p->n_experts);
    REQUIRE_PARAM(p->n_group >= 1 && p->n_experts % p->n_group == 0,
                  "n_group %d must be >= 1 and divide n_experts %d", p->n_group, p->n_experts);
    REQUIRE_PARAM(p->topk_group >= 1 && p->topk_group <= p->n_group,
                  "topk_group %d must be in [1, n_group %d]", p->topk_group, p->n_group);
    int64_t kept_experts = (int64_t)p->topk_group * (p->n_experts / p->n_group);
    REQUIRE_PARAM(p->top_k <= kept_experts, "top_k %d exceeds the %lld experts of %d kept groups",
                  p->top_k, (long long)kept_experts, p->topk_group);
    REQUIRE_PARAM(p->scoring == MOIRA_SCORING_SOFTMAX || p->scoring == MOIRA_SCORING_SIGMOID,
                  "unknown scoring %d", p->scoring);
    REQUIRE_PARAM(isfinite(p->routed_scaling_factor), "routed_scaling_factor must be finite");
    REQUIRE_PARAM(isfinite(p->capacity_factor) && p->capacity_factor >= 0,
                  "capacity_factor %g must be finite and >= 0", (double)p->capacity_factor);
    symbols->value['E'] = p->n_experts;
    symbols->value['k'] = p->top_k;
    return MOIRA_OK_STATUS;
}

/* n_experts sizes expert_offsets, the one shape topk_idx cannot tell. */
static moira_status_t bind_dispatch(const void *raw, symbols_t *symbols) {
    const moira_moe_dispatch_params_t *p = raw;
    REQUIRE_PARAM(p->n_experts >= 1, "n_experts %d must be >= 1", p->n_experts);
    symbols->value['E'] = p->n_experts;
    return MOIRA_OK_STATUS;
}

/* top_k maps a sorted row's assignment index back to its token (a / k), so it fixes ys's rows. */
static moira_status_t bind_moe_ffn(const void *raw, symbols_t *symbols) {
    const moira_moe_ffn_params_t *p = raw;
    REQUIRE_PARAM(p->top_k >= 1, "top_k %d must be >= 1", p->top_k);
    symbols->value['k'] = p->top_k;
    return MOIRA_OK_STATUS;
}

/* All four MLA ops share the parameter struct. Symbols: H heads, n nope, r rope, v v_dim,
 * L kv_lora_rank, S cache_len, and the row widths Q = H*(n+r) and B = H*(n+v). */
static moira_status_t bind_mla(const void *raw, symbols_t *symbols) {
    const moira_mla_params_t *p = raw;
    REQUIRE_PARAM(p->n_heads >= 1, "n_heads %d must be >= 1", p->n_heads);
    REQUIRE_PARAM(p->nope_dim >= 1, "nope_dim %d must be >= 1", p->nope_dim);
    REQUIRE_PARAM(p->rope_dim >= 0, "rope_dim %d must be >= 0", p->rope_dim);
    REQUIRE_PARAM(p->v_dim >= 1, "v_dim %d must be >= 1", p->v_dim);
    REQUIRE_PARAM(p->kv_lora_rank >= 1, "kv_lora_rank %d must be >= 1", p->kv_lora_rank);
    REQUIRE_PARAM(p->cache_len >= 0, "cache_len %d must be >= 0", p->cache_len);
    REQUIRE_PARAM(isfinite(p->scale), "scale must be finite");
    symbols->value['H'] = p->n_heads;
    symbols->value['n'] = p->nope_dim;
    symbols->value['r'] = p->rope_dim;
    symbols->value['v'] = p->v_dim;
    symbols->value['L'] = p->kv_lora_rank;
    symbols->value['S'] = p->cache_len;
    symbols->value['Q'] = (int64_t)p->n_heads * (p->nope_dim + p->rope_dim);
    symbols->value['B'] = (int64_t)p->n_heads * (p->nope_dim + p->v_dim);
    return MOIRA_OK_STATUS;
}

/* ops/op.h, restated as data. Keep the two in step. */
/* clang-format off */
static const op_rule_t op_rules[MOIRA_OP_COUNT] = {
    [MOIRA_OP_RMSNORM] = {
        "rmsnorm", sizeof(moira_rmsnorm_params_t), bind_rmsnorm, NULL, 3,
        {{"x", TYPE_F32, "T,N", STRIDED},
         {"w", TYPE_F32, "N", 0},
         {"y", TYPE_CACHE, "T,N", STRIDED | OUTPUT | IN_PLACE}}},
    [MOIRA_OP_LINEAR] = {
        "linear", sizeof(moira_linear_params_t), bind_linear, NULL, 3,
        {{"x", TYPE_F32, "T,K", STRIDED},
         {"W", TYPE_WEIGHT, "N,K", 0},
         {"y", TYPE_F32, "T,N", STRIDED | OUTPUT}}},
    [MOIRA_OP_ROPE] = {
        "rope", sizeof(moira_rope_params_t), bind_rope, check_rope_row, 3,
        {{"x", TYPE_F32, "T,C", STRIDED},
         {"positions", TYPE_I32, "T", 0},
         {"y", TYPE_CACHE, "T,C", STRIDED | OUTPUT | IN_PLACE}}},
    [MOIRA_OP_GATE] = {
        "gate", sizeof(moira_gate_params_t), bind_gate, NULL, 6,
        {{"x", TYPE_F32, "T,D", 0},
         {"W", TYPE_WEIGHT, "E,D", 0},
         {"bias", TYPE_F32, "E", OPTIONAL},
         {"topk_idx", TYPE_I32, "T,k", OUTPUT},
         {"topk_weight", TYPE_F32, "T,k", OUTPUT},
         {"selection", TYPE_F32, "T,E", OPTIONAL | OUTPUT}}},
    [MOIRA_OP_MOE_DISPATCH] = {
        "moe_dispatch", sizeof(moira_moe_dispatch_params_t), bind_dispatch, NULL, 4,
        {{"topk_idx", TYPE_I32, "T,k", 0},
         {"expert_offsets", TYPE_I32, "E+1", OUTPUT},
         {"sorted_rows", TYPE_I32, "T*k", OUTPUT},
         {"assignment_pos", TYPE_I32, "T*k", OUTPUT}}},
    [MOIRA_OP_MOE_FFN] = {
        "moe_ffn", sizeof(moira_moe_ffn_params_t), bind_moe_ffn, NULL, 7,
        {{"x", TYPE_F32, "T,D", 0},
         {"W1", TYPE_WEIGHT, "E,I,D", 0},
         {"W3", TYPE_WEIGHT, "E,I,D", 0},
         {"W2", TYPE_WEIGHT, "E,D,I", 0},
         {"expert_offsets", TYPE_I32, "E+1", 0},
         {"sorted_rows", TYPE_I32, "T*k", 0},
         {"ys", TYPE_F32, "T*k,D", OUTPUT}}},
    [MOIRA_OP_MOE_COMBINE] = {
        "moe_combine", sizeof(moira_moe_combine_params_t), bind_combine, NULL, 4,
        {{"ys", TYPE_F32, "T*k,D", 0},
         {"assignment_pos", TYPE_I32, "T,k", 0},
         {"topk_weight", TYPE_F32, "T,k", 0},
         {"y", TYPE_F32, "T,D", OUTPUT}}},
    [MOIRA_OP_SWIGLU] = {
        "swiglu", sizeof(moira_swiglu_params_t), bind_swiglu, NULL, 5,
        {{"x", TYPE_F32, "T,D", 0},
         {"W1", TYPE_WEIGHT, "I,D", 0},
         {"W3", TYPE_WEIGHT, "I,D", 0},
         {"W2", TYPE_WEIGHT, "D,I", 0},
         {"y", TYPE_F32, "T,D", OUTPUT}}},
    [MOIRA_OP_MLA_ATTENTION] = {
        "mla_attention", sizeof(moira_mla_params_t), bind_mla, NULL, 5,
        {{"q", TYPE_F32, "T,Q", 0},
         {"kv", TYPE_F32, "T,B", 0},
         {"k_pe", TYPE_F32, "T,r", STRIDED},
         {"positions", TYPE_I32, "T", 0},
         {"out", TYPE_F32, "T,H*v", OUTPUT}}},
    [MOIRA_OP_MLA_ABSORB_Q] = {
        "mla_absorb_q", sizeof(moira_mla_params_t), bind_mla, NULL, 3,
        {{"q", TYPE_F32, "T,Q", 0},
         {"W_kv_b", TYPE_WEIGHT, "B,L", 0},
         {"q_lat", TYPE_F32, "T,H*L", OUTPUT}}},
    [MOIRA_OP_MLA_DECODE_ATTENTION] = {
        "mla_decode_attention", sizeof(moira_mla_params_t), bind_mla, NULL, 6,
        {{"q_lat", TYPE_F32, "T,H*L", 0},
         {"q", TYPE_F32, "T,Q", 0},
         {"c", TYPE_CACHE, "S,L", 0},
         {"k_pe", TYPE_CACHE, "S,r", 0},
         {"positions", TYPE_I32, "T", 0},
         {"o_lat", TYPE_F32, "T,H*L", OUTPUT}}},
    [MOIRA_OP_MLA_ABSORB_OUT] = {
        "mla_absorb_out", sizeof(moira_mla_params_t), bind_mla, NULL, 3,
        {{"o_lat", TYPE_F32, "T,H*L", 0},
         {"W_kv_b", TYPE_WEIGHT, "B,L", 0},
         {"out", TYPE_F32, "T,H*v", OUTPUT}}},
};
/* clang-format on */

/* Names live in the rule table so they cannot drift from it; "unknown" keeps logs printable. */
const char *moira_op_name(int op) {
    if (op < 0 || op >= MOIRA_OP_COUNT) return "unknown";
    return op_rules[op].name;
}

/* From the rule table, so backends never restate which operands an op writes. */
bool moira_op_operand_is_output(int op, int operand) {
    if (op < 0 || op >= MOIRA_OP_COUNT || operand < 0 || operand >= op_rules[op].n_operands)
        return false;
    return (op_rules[op].operands[operand].flags & OUTPUT) != 0;
}

/* capacity_factor arrives as a float, so a configured 1.1 is really 1.10000002: a product that
 * lands within float rounding above an integer means that integer, not the next one up. */
int32_t moira_capacity_limit(float capacity_factor, int64_t tokens, int64_t top_k,
                             int64_t n_experts) {
    if (capacity_factor <= 0 || n_experts <= 0) return INT32_MAX;
    double wanted = (double)capacity_factor * (double)tokens * (double)top_k / (double)n_experts;
    double capacity = ceil(wanted - wanted * FLT_EPSILON);
    if (!(capacity < (double)INT32_MAX)) return INT32_MAX;
    return capacity < 0 ? 0 : (int32_t)capacity;
}

int32_t moira_gate_capacity(const moira_gate_params_t *params, int64_t tokens) {
    return moira_capacity_limit(params->capacity_factor, tokens, params->top_k, params->n_experts);
}

/* ---- Shape expressions ---- */

typedef struct dim_expr {
    const char *text;
    size_t length;
} dim_expr_t;

/* Splits "E,I,D" into its dimension expressions; returns the rank. */
static int split_shape(const char *shape, dim_expr_t dims[MAX_DIMS]) {
    int rank = 0;
    const char *start = shape;
    for (const char *c = shape;; c++) {
        if (*c != ',' && *c != '\0') continue;
        dims[rank].text = start;
        dims[rank].length = (size_t)(c - start);
        rank++;
        if (*c == '\0' || rank == MAX_DIMS) break;
        start = c + 1;
    }
    return rank;
}

/* Only a lone symbol may be bound from a shape; "T*k" can only be checked. */
static bool is_bare_symbol(dim_expr_t dim) {
    return dim.length == 1 && isalpha((unsigned char)dim.text[0]);
}

/* Evaluates "T*k" or "E+1" left to right (no precedence is needed by any rule). False while a
 * symbol in it is unbound. */
static bool eval_dim(dim_expr_t dim, const symbols_t *symbols, int64_t *out_value) {
    int64_t value = 0;
    char pending_op = '+';
    size_t i = 0;
    while (i < dim.length) {
        int64_t operand;
        char c = dim.text[i];
        if (isdigit((unsigned char)c)) {
            operand = 0;
            while (i < dim.length && isdigit((unsigned char)dim.text[i]))
                operand = operand * 10 + (dim.text[i++] - '0');
        } else {
            operand = symbols->value[(unsigned char)c & 127];
            if (operand < 0) return false;
            i++;
        }
        bool overflow = pending_op == '*' ? __builtin_mul_overflow(value, operand, &value)
                                          : __builtin_add_overflow(value, operand, &value);
        if (overflow) value = INT64_MAX; /* matches no real dimension */
        if (i < dim.length) pending_op = dim.text[i++];
    }
    *out_value = value;
    return true;
}

/* "[13, 67]", the way ops/op.h writes shapes, so messages read like the contract. */
static void format_shape(const int64_t *shape, int rank, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < rank && used < size; i++)
        used +=
            (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
}

/* The expected shape with known dimensions as numbers and the rest as their expressions. */
static void format_expected(const dim_expr_t *dims, int rank, const symbols_t *symbols, char *buf,
                            size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < rank && used < size; i++) {
        int64_t value;
        const char *sep = i ? ", " : "";
        if (eval_dim(dims[i], symbols, &value))
            used += (size_t)snprintf(buf + used, size - used, "%s%lld", sep, (long long)value);
        else
            used += (size_t)snprintf(buf + used, size - used, "%s%.*s", sep, (int)dims[i].length,
                                     dims[i].text);
    }
    if (used < size) snprintf(buf + used, size - used, "]");
}

typedef enum shape_result { SHAPE_OK, SHAPE_DEFERRED, SHAPE_MISMATCH } shape_result_t;

/* Binds the operand's unbound bare symbols and checks everything else. Deferred when an
 * expression needs a symbol that a later operand binds. */
static shape_result_t unify_shape(const moira_dtensor_t *tensor, const char *shape,
                                  symbols_t *symbols) {
    dim_expr_t dims[MAX_DIMS];
    int rank = split_shape(shape, dims);
    for (int i = 0; i < rank; i++) {
        int64_t unused;
        if (!is_bare_symbol(dims[i]) && !eval_dim(dims[i], symbols, &unused)) return SHAPE_DEFERRED;
    }
    if (tensor->rank != rank) return SHAPE_MISMATCH;
    for (int i = 0; i < rank; i++) {
        if (!is_bare_symbol(dims[i])) continue;
        int64_t *slot = &symbols->value[(unsigned char)dims[i].text[0] & 127];
        if (*slot < 0) *slot = tensor->shape[i];
    }
    for (int i = 0; i < rank; i++) {
        int64_t expected;
        eval_dim(dims[i], symbols, &expected);
        if (expected != tensor->shape[i]) return SHAPE_MISMATCH;
    }
    return SHAPE_OK;
}

/* ---- Storage checks ---- */

static moira_status_t operand_error(const op_rule_t *rule, int index, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "moe_ffn: operand 1 (W1) ..." so the caller can find the operand in its launch. */
static moira_status_t operand_error(const op_rule_t *rule, int index, const char *fmt, ...) {
    char detail[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(detail, sizeof(detail), fmt, args);
    va_end(args);
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: operand %d (%s) %s", rule->name,
                             index, rule->operands[index].name, detail);
}

/* Bytes from the tensor's offset to the end of its last element, overflow-checked because shapes
 * can come from files. */
static bool data_span(const moira_dtensor_t *tensor, size_t *out_bytes) {
    uint64_t rows = 1;
    for (int i = 0; i + 1 < tensor->rank; i++)
        if (__builtin_mul_overflow(rows, (uint64_t)tensor->shape[i], &rows)) return false;
    uint64_t cols = tensor->rank ? (uint64_t)tensor->shape[tensor->rank - 1] : 1;
    uint64_t stride = tensor->row_stride ? (uint64_t)tensor->row_stride : cols;
    uint64_t elems = 0;
    if (rows && cols) {
        if (__builtin_mul_overflow(rows - 1, stride, &elems)) return false;
        if (__builtin_add_overflow(elems, cols, &elems)) return false;
    }
    if (moira_dtype_is_quantized(tensor->dtype))
        return !__builtin_mul_overflow(rows, (uint64_t)moira_weight_row_bytes(tensor->dtype, cols),
                                       out_bytes);
    return !__builtin_mul_overflow(elems, (uint64_t)moira_dtype_size(tensor->dtype), out_bytes);
}

/* A scaled weight's scales over all its matrices (weight_format.h). */
static uint64_t scale_bytes_of(const moira_dtensor_t *tensor) {
    uint64_t matrices = 1;
    for (int i = 0; i + 2 < tensor->rank; i++)
        matrices *= (uint64_t)tensor->shape[i];
    return matrices * moira_weight_scale_bytes(tensor->dtype, tensor->shape[tensor->rank - 2],
                                               tensor->shape[tensor->rank - 1]);
}

/* Weights may be any float type or quantised format because backends widen them as they read
 * (whether a device computes an op with a format is its own answer, moira_device_supports);
 * activations and indices have exactly one type so kernels can index them directly. */
static bool type_accepts(operand_type_t type, moira_dtype_t dtype) {
    switch (type) {
    case TYPE_F32:
        return dtype == MOIRA_DTYPE_F32;
    case TYPE_I32:
        return dtype == MOIRA_DTYPE_I32;
    case TYPE_WEIGHT:
        return moira_dtype_is_weight(dtype);
    case TYPE_CACHE:
        return dtype == MOIRA_DTYPE_F32 || dtype == MOIRA_DTYPE_BF16;
    }
    return false;
}

/* What an error message says was expected. */
static const char *type_description(operand_type_t type) {
    switch (type) {
    case TYPE_F32:
        return "F32";
    case TYPE_I32:
        return "I32";
    case TYPE_WEIGHT:
        return "a weight type (F32, F16, BF16, F8_E4M3, MXFP4, INT8)";
    case TYPE_CACHE:
        return "F32 or BF16 (a latent cache)";
    }
    return "?";
}

/* What can be judged from one operand alone; runs before shapes are unified so that the
 * unifier only ever sees sane ranks and dimensions. */
static moira_status_t check_type(const op_rule_t *rule, int index, const moira_dtensor_t *tensor) {
    const operand_rule_t *operand = &rule->operands[index];
    if (!type_accepts(operand->type, tensor->dtype))
        return operand_error(rule, index, "has dtype %s, expected %s",
                             moira_dtype_name(tensor->dtype), type_description(operand->type));
    if (tensor->rank < 0 || tensor->rank > MAX_DIMS)
        return operand_error(rule, index, "has rank %d", tensor->rank);
    for (int i = 0; i < tensor->rank; i++)
        if (tensor->shape[i] < 0)
            return operand_error(rule, index, "has negative dimension %lld",
                                 (long long)tensor->shape[i]);
    return MOIRA_OK_STATUS;
}

/* Layout in memory: strides where allowed, alignment, and the bytes (fp8 scales included) lying
 * inside the buffer. Runs after shapes, so a wrong shape is reported as such rather than as the
 * buffer overrun it would cause. */
static moira_status_t check_storage(const op_rule_t *rule, int index,
                                    const moira_dtensor_t *tensor) {
    const operand_rule_t *operand = &rule->operands[index];
    if (tensor->row_stride != 0) {
        if (!(operand->flags & STRIDED))
            return operand_error(rule, index, "must be contiguous but has row_stride %lld",
                                 (long long)tensor->row_stride);
        int64_t row_length = tensor->rank ? tensor->shape[tensor->rank - 1] : 1;
        if (tensor->rank < 2 || tensor->row_stride < row_length)
            return operand_error(rule, index, "has row_stride %lld, less than its row of %lld",
                                 (long long)tensor->row_stride, (long long)row_length);
    }
    if (moira_dtype_is_quantized(tensor->dtype)) {
        if (tensor->row_stride != 0)
            return operand_error(rule, index, "is %s and must be contiguous",
                                 moira_dtype_name(tensor->dtype));
        if (tensor->rank < 2 ||
            !moira_weight_shape_fits(tensor->dtype, tensor->shape[tensor->rank - 2],
                                     tensor->shape[tensor->rank - 1]))
            return operand_error(rule, index, "has %s rows of %lld inputs (need a multiple of 32)",
                                 moira_dtype_name(tensor->dtype),
                                 (long long)(tensor->rank ? tensor->shape[tensor->rank - 1] : 0));
    }
    size_t element = moira_dtype_size(tensor->dtype);
    if (element && tensor->offset % element)
        return operand_error(rule, index, "offset %zu is not a multiple of its %zu-byte elements",
                             tensor->offset, element);
    size_t span;
    if (!data_span(tensor, &span)) return operand_error(rule, index, "is too large to address");
    size_t size = tensor->buffer->size;
    if (tensor->offset > size || span > size - tensor->offset)
        return operand_error(rule, index, "bytes [%zu, %zu) lie outside its buffer of %zu bytes",
                             tensor->offset, tensor->offset + span, size);
    uint64_t scale_bytes = tensor->rank >= 2 ? scale_bytes_of(tensor) : 0;
    const moira_weight_format_t *format = moira_weight_format(tensor->dtype);
    size_t scale_align = format && format->scale_dtype == MOIRA_DTYPE_F32 ? sizeof(float) : 1;
    if (scale_bytes && (tensor->scale_offset % scale_align || tensor->scale_offset > size ||
                        scale_bytes > size - tensor->scale_offset))
        return operand_error(rule, index,
                             "%s scales at offset %zu (%llu bytes) are misaligned or outside its "
                             "buffer of %zu bytes",
                             moira_dtype_name(tensor->dtype), tensor->scale_offset,
                             (unsigned long long)scale_bytes, size);
    return MOIRA_OK_STATUS;
}

/* ---- Cache dtype ---- */

/* A kernel reads or writes one cache in one dtype: c and k_pe rows of a position go together. */
static moira_status_t check_cache_dtypes(const op_rule_t *rule, const moira_op_launch_t *launch) {
    int first = -1;
    for (int i = 0; i < rule->n_operands; i++) {
        if (rule->operands[i].type != TYPE_CACHE || !launch->operands[i].buffer) continue;
        if (first < 0) {
            first = i;
        } else if (launch->operands[i].dtype != launch->operands[first].dtype) {
            return operand_error(rule, i, "has dtype %s, but operand %d (%s) has %s",
                                 moira_dtype_name(launch->operands[i].dtype), first,
                                 rule->operands[first].name,
                                 moira_dtype_name(launch->operands[first].dtype));
        }
    }
    return MOIRA_OK_STATUS;
}

moira_dtype_t moira_op_cache_dtype(const moira_op_launch_t *launch) {
    if (launch->op < 0 || launch->op >= MOIRA_OP_COUNT) return MOIRA_DTYPE_F32;
    const op_rule_t *rule = &op_rules[launch->op];
    for (int i = 0; i < rule->n_operands && i < launch->n_operands; i++)
        if (rule->operands[i].type == TYPE_CACHE && launch->operands[i].buffer)
            return launch->operands[i].dtype;
    return MOIRA_DTYPE_F32;
}

/* ---- Aliasing ---- */

/* In-place ops are safe only when output and input are the very same elements. */
static bool same_view(const moira_dtensor_t *a, const moira_dtensor_t *b) {
    if (a->buffer != b->buffer || a->offset != b->offset || a->dtype != b->dtype ||
        a->rank != b->rank || moira_dtensor_row_stride(a) != moira_dtensor_row_stride(b))
        return false;
    for (int i = 0; i < a->rank; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

/* Whether two views share a byte. Column slices of one buffer with the same row pitch (MLA's
 * [c | k_pe] split) are told apart exactly; anything else that shares a byte range overlaps. */
static bool views_overlap(const moira_dtensor_t *a, const moira_dtensor_t *b) {
    if (a->buffer != b->buffer) return false;
    size_t span_a = 0, span_b = 0;
    data_span(a, &span_a);
    data_span(b, &span_b);
    if (!span_a || !span_b) return false;
    if (a->offset + span_a <= b->offset || b->offset + span_b <= a->offset) return false;
    size_t pitch_a = (size_t)moira_dtensor_row_stride(a) * moira_dtype_size(a->dtype);
    size_t pitch_b = (size_t)moira_dtensor_row_stride(b) * moira_dtype_size(b->dtype);
    if (pitch_a != pitch_b || a->rank < 1 || b->rank < 1) return true;
    size_t width_a = (size_t)a->shape[a->rank - 1] * moira_dtype_size(a->dtype);
    size_t width_b = (size_t)b->shape[b->rank - 1] * moira_dtype_size(b->dtype);
    size_t shift = ((b->offset % pitch_a) + pitch_a - (a->offset % pitch_a)) % pitch_a;
    bool b_fits_after_a = shift >= width_a && shift + width_b <= pitch_a;
    return !b_fits_after_a;
}

/* Kernels read inputs while writing outputs, so a written operand that shares memory with any
 * other gives results that depend on thread timing; only the noted in-place cases are allowed. */
static moira_status_t check_aliasing(const op_rule_t *rule, const moira_op_launch_t *launch) {
    for (int j = 0; j < rule->n_operands; j++) {
        const moira_dtensor_t *b = &launch->operands[j];
        if (!b->buffer) continue;
        for (int i = 0; i < j; i++) {
            const moira_dtensor_t *a = &launch->operands[i];
            bool either_written = (rule->operands[i].flags | rule->operands[j].flags) & OUTPUT;
            if (!a->buffer || !either_written || !views_overlap(a, b)) continue;
            if (i == 0 && (rule->operands[j].flags & IN_PLACE) && same_view(a, b)) continue;
            return operand_error(rule, j, "overlaps operand %d (%s)%s", i, rule->operands[i].name,
                                 rule->operands[j].flags & IN_PLACE ? " without being it" : "");
        }
    }
    return MOIRA_OK_STATUS;
}

/* ---- The validator ---- */

/* Unifies shapes in passes: each pass checks every operand whose expressions can be evaluated,
 * so an operand listed before the one that binds its symbols ("ys" [T*k, D] of moe_combine) is
 * checked on the next pass. */
static moira_status_t check_shapes(const op_rule_t *rule, const moira_op_launch_t *launch,
                                   symbols_t *symbols) {
    bool done[MAX_RULE_OPERANDS] = {false};
    int remaining = rule->n_operands;
    while (remaining > 0) {
        int progress = 0;
        for (int i = 0; i < rule->n_operands; i++) {
            const moira_dtensor_t *tensor = &launch->operands[i];
            if (done[i]) continue;
            shape_result_t result =
                tensor->buffer ? unify_shape(tensor, rule->operands[i].shape, symbols) : SHAPE_OK;
            if (result == SHAPE_DEFERRED) continue;
            if (result == SHAPE_MISMATCH) {
                dim_expr_t dims[MAX_DIMS];
                int rank = split_shape(rule->operands[i].shape, dims);
                char got[96], expected[96];
                format_shape(tensor->shape, tensor->rank, got, sizeof(got));
                format_expected(dims, rank, symbols, expected, sizeof(expected));
                return operand_error(rule, i, "has shape %s, expected %s", got, expected);
            }
            done[i] = true;
            remaining--;
            progress++;
        }
        if (!progress)
            return moira_status_make(MOIRA_CODE_INTERNAL, "%s: shape rules cannot be resolved",
                                     rule->name);
    }
    return MOIRA_OK_STATUS;
}

/* Cheapest and most basic checks first, so the message names the first real mistake: the
 * launch's framing, the parameters, each operand's type, the shapes together, then memory. */
moira_status_t moira_op_validate(const moira_op_launch_t *launch) {
    if (launch->op < 0 || launch->op >= MOIRA_OP_COUNT)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "unknown op %d", launch->op);
    const op_rule_t *rule = &op_rules[launch->op];
    if (!launch->params || launch->params_size != rule->params_size)
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT, "%s: params of %zu bytes%s, expected %zu", rule->name,
            launch->params_size, launch->params ? "" : " (NULL)", rule->params_size);
    if (launch->n_operands != rule->n_operands)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %d operands, expected %d",
                                 rule->name, launch->n_operands, rule->n_operands);
    symbols_t symbols;
    for (size_t i = 0; i < sizeof(symbols.value) / sizeof(symbols.value[0]); i++)
        symbols.value[i] = -1;
    moira_status_t status = rule->bind_params(launch->params, &symbols);
    if (status) return moira_status_annotate(status, "%s", rule->name);
    for (int i = 0; i < rule->n_operands; i++) {
        const moira_dtensor_t *tensor = &launch->operands[i];
        if (!tensor->buffer) {
            if (rule->operands[i].flags & OPTIONAL) continue;
            return operand_error(rule, i, "is required but has no buffer");
        }
        MOIRA_RETURN_IF_ERROR(check_type(rule, i, tensor));
    }
    MOIRA_RETURN_IF_ERROR(check_cache_dtypes(rule, launch));
    MOIRA_RETURN_IF_ERROR(check_shapes(rule, launch, &symbols));
    if (rule->check_bound) {
        status = rule->check_bound(launch->params, &symbols);
        if (status) return moira_status_annotate(status, "%s", rule->name);
    }
    for (int i = 0; i < rule->n_operands; i++)
        if (launch->operands[i].buffer)
            MOIRA_RETURN_IF_ERROR(check_storage(rule, i, &launch->operands[i]));
    return check_aliasing(rule, launch);
}

moira_status_t moira_launch_op(moira_queue_t *queue, int op, const void *params, size_t params_size,
                               int n, const moira_dtensor_t *operands) {
    if (n < 0 || n > MOIRA_OP_MAX_OPERANDS)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %d operands", moira_op_name(op),
                                 n);
    moira_op_launch_t l = {.op = op, .params = params, .params_size = params_size, .n_operands = n};
    memcpy(l.operands, operands, (size_t)n * sizeof(*operands));
    return moira_queue_launch(queue, &l);
}

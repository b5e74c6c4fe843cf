/* The Jinja interpreter's internals, shared by the runtime/text/jinja_*.c files only.
 *
 * Memory: every object (tokens, syntax tree, values, scopes, output) lives in an arena. A parsed
 * template owns the arena of its tree; each render makes a fresh arena and drops it whole at the
 * end, so values are never reference-counted or freed one by one, and cycles (a namespace holding
 * itself) cost nothing.
 *
 * Errors: a failure anywhere (syntax error, undefined attribute, exhausted limit) formats its
 * status into the context and longjmps back to moira_jinja_parse or moira_jinja_render, which free
 * the arena. Nothing outside the arena is allocated while a jump can happen, so unwinding leaks
 * nothing, and the code between needs no error plumbing. */
#ifndef MOIRA_RUNTIME_TEXT_JINJA_INTERNAL_H
#define MOIRA_RUNTIME_TEXT_JINJA_INTERNAL_H

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "runtime/status.h"
#include "runtime/text/jinja.h"

/* Limits that keep a hostile template from crashing or hanging the process. */
#define JJ_MEMORY_LIMIT ((size_t)256 << 20) /* bytes one parse or one render may allocate */
#define JJ_OUTPUT_LIMIT                                                                            \
    ((size_t)64 << 20)         /* bytes of rendered text (and of any captured block)               \
                                */
#define JJ_PARSE_DEPTH 256     /* nesting of blocks and expressions in the source */
#define JJ_MACRO_DEPTH 256     /* macro calls in progress at once */
#define JJ_EVAL_DEPTH 2000     /* C frames of evaluation, statements and value walks */
#define JJ_LOOP_LIMIT 10000000 /* loop iterations in one render */
#define JJ_WORK_LIMIT                                                                              \
    ((uint64_t)4000000000)  /* elements and bytes visited by filters and methods                   \
                             */
#define JJ_MAX_RANGE 100000 /* range() size, as Jinja's sandbox allows */

/* ---- Arena ------------------------------------------------------------------------------ */

typedef struct jj_chunk jj_chunk;

typedef struct jj_arena {
    jj_chunk *head;
    size_t total; /* bytes allocated from the system so far, checked against JJ_MEMORY_LIMIT */
} jj_arena;

typedef struct jj_buf jj_buf;

/* The state every phase shares: where memory comes from, where errors jump to, and the source
 * text that error locations point into. */
typedef struct jj_ctx {
    jj_arena arena;
    jj_buf *open_outputs; /* output buffers on the heap, freed if an error unwinds past them */
    size_t output_pos;    /* where output is being written from, for the output-limit error */
    jmp_buf *on_error;
    moira_status_t error;
    const char *origin;
    const char *src; /* the normalized template text (newlines as \n) */
    size_t src_len;
} jj_ctx;

void *jj_alloc(jj_ctx *ctx, size_t size);
void *jj_grow(jj_ctx *ctx, void *old, size_t old_size, size_t new_size);
char *jj_strndup(jj_ctx *ctx, const char *s, size_t n);
void jj_arena_free(jj_arena *arena);

/* Fails with INVALID_INPUT at source offset `pos` (SIZE_MAX: no location); never returns. */
_Noreturn void jj_fail_at(jj_ctx *ctx, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
_Noreturn void jj_vfail_at(jj_ctx *ctx, size_t pos, const char *fmt, va_list args);
/* Fails with `code` and no location; never returns. */
_Noreturn void jj_fail_code(jj_ctx *ctx, moira_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 1-based line and column (in characters) of a source offset. */
void jj_line_col(const jj_ctx *ctx, size_t pos, int *line, int *col);

/* A growing byte string. Scratch strings live in the arena. Rendered output (the result and
 * the text macros and blocks capture) lives on the heap instead, so that growing a large output
 * leaves no copies behind in the arena; those buffers are capped at JJ_OUTPUT_LIMIT, their bytes
 * count towards JJ_MEMORY_LIMIT, and they are chained in jj_ctx.open_outputs until closed. */
struct jj_buf {
    char *p;
    size_t n, cap;
    bool heap;
    jj_buf *next_open;
};

void jj_output_open(jj_ctx *ctx, jj_buf *b);
/* Closes an output buffer: returns its malloc'd text (the caller owns it), or with `to_arena` a
 * copy in the arena (the heap text is freed). */
char *jj_output_close(jj_ctx *ctx, jj_buf *b, bool to_arena);
/* Frees every output buffer still open (the error path). */
void jj_output_free_all(jj_ctx *ctx);

void jj_buf_put(jj_ctx *ctx, jj_buf *b, const char *s, size_t n);
void jj_buf_puts(jj_ctx *ctx, jj_buf *b, const char *s);
void jj_buf_putc(jj_ctx *ctx, jj_buf *b, char c);
void jj_buf_printf(jj_ctx *ctx, jj_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- UTF-8 and Python's character classes ---------------------------------------------- */

/* Decodes the code point at s[*i] (advancing *i); invalid bytes decode as themselves. */
uint32_t jj_utf8_next(const char *s, size_t n, size_t *i);
/* Appends code point `cp` as UTF-8. */
void jj_utf8_put(jj_ctx *ctx, jj_buf *b, uint32_t cp);
size_t jj_utf8_len(const char *s, size_t n);
size_t jj_utf8_check(const char *s, size_t n); /* offset of the first invalid byte, or n */
/* Byte offsets of the code points of s (n_cp + 1 entries, the last one n). */
size_t *jj_utf8_offsets(jj_ctx *ctx, const char *s, size_t n, size_t *n_cp);
bool jj_is_space(uint32_t cp); /* str.isspace() */
bool jj_is_alpha(uint32_t cp); /* an approximation of str.isalpha() */
bool jj_is_digit(uint32_t cp);
bool jj_is_linebreak(uint32_t cp); /* a str.splitlines() boundary */
uint32_t jj_to_upper(uint32_t cp);
uint32_t jj_to_lower(uint32_t cp);
bool jj_is_upper(uint32_t cp);
bool jj_is_lower(uint32_t cp);

/* ---- Values -------------------------------------------------------------------------------- */

typedef enum jv_type {
    JV_UNDEFINED, /* u.s holds the message an error about it shows */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST, /* also tuples (JV_FLAG_TUPLE) */
    JV_DICT,
    JV_NAMESPACE,
    JV_MACRO,
    JV_FUNC, /* a global function or a method bound to a value */
    JV_LOOP,
} jv_type;

#define JV_FLAG_TUPLE 1u  /* JV_LIST: a tuple (prints with parentheses) */
#define JV_FLAG_UNSAFE 2u /* JV_UNDEFINED: a sandbox refusal, an error on any use */

typedef struct jj_list jj_list;
typedef struct jj_dict jj_dict;
typedef struct jj_render jj_render;
typedef struct jj_macro jj_macro;
typedef struct jj_func jj_func;
typedef struct jj_loop jj_loop;

typedef struct jv {
    uint8_t type;
    uint8_t flags;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        jj_list *list;
        jj_dict *dict; /* JV_DICT and JV_NAMESPACE */
        jj_macro *macro;
        jj_func *func;
        jj_loop *loop;
    } u;
} jv;

/* Lists and dicts never change once built (the sandbox forbids mutating methods), except a
 * namespace's dict, which {% set ns.x %} updates in place. */
struct jj_list {
    size_t n, cap;
    jv *items;
    /* A generator (what map, select, reject, unique, batch, items and reverse give in Jinja):
     * always true, without len() or indexing, and used up by iterating it; `taken` items are
     * gone. */
    bool lazy;
    size_t taken;
    const char *error; /* a generator over something not iterable fails when iterated */
};

struct jj_dict {
    size_t n, cap;
    jv *keys;
    jv *vals;
};

typedef struct jj_node jj_node;
typedef struct jj_frame jj_frame;

struct jj_macro {
    const jj_node *def; /* N_MACRO (or N_CALL_BLOCK for `caller`) */
    jj_frame *closure;  /* the scope it was defined in */
};

/* Built-in callables: the globals, and methods bound to their receiver. */
typedef enum jj_func_kind {
    JF_RANGE,
    JF_NAMESPACE,
    JF_DICT,
    JF_RAISE_EXCEPTION,
    JF_STRFTIME_NOW,
    JF_METHOD, /* `name` of `self` */
} jj_func_kind;

struct jj_func {
    jj_func_kind kind;
    jv self;
    const char *name;
};

/* The `loop` variable of a for loop; one per loop, advanced in place as Jinja's is. */
struct jj_loop {
    const jj_list *items;
    size_t index0;
};

static inline jv jv_undefined_msg(const char *msg) {
    jv v = {.type = JV_UNDEFINED};
    v.u.s.p = msg;
    v.u.s.n = msg ? strlen(msg) : 0;
    return v;
}
static inline jv jv_none(void) {
    jv v = {.type = JV_NONE};
    return v;
}
static inline jv jv_bool(bool b) {
    jv v = {.type = JV_BOOL};
    v.u.b = b;
    return v;
}
static inline jv jv_int(int64_t i) {
    jv v = {.type = JV_INT};
    v.u.i = i;
    return v;
}
static inline jv jv_float(double f) {
    jv v = {.type = JV_FLOAT};
    v.u.f = f;
    return v;
}
static inline jv jv_str(const char *p, size_t n) {
    jv v = {.type = JV_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
static inline jv jv_list_v(jj_list *l, bool tuple) {
    jv v = {.type = JV_LIST, .flags = tuple ? JV_FLAG_TUPLE : 0};
    v.u.list = l;
    return v;
}
static inline jv jv_dict_v(jj_dict *d) {
    jv v = {.type = JV_DICT};
    v.u.dict = d;
    return v;
}

jv jv_cstr(const char *s); /* a static or arena NUL-terminated string */

/* memcpy that accepts NULL pointers for zero bytes (an empty list has no items array). */
static inline void jj_copy(void *dst, const void *src, size_t n) {
    if (n) memcpy(dst, src, n);
}

jj_list *jj_list_new(jj_ctx *ctx, size_t cap);
void jj_list_push(jj_ctx *ctx, jj_list *l, jv v);
jj_dict *jj_dict_new(jj_ctx *ctx, size_t cap);
/* Sets key to val, keeping the position of an existing key (Python's dict order). */
void jj_dict_set(jj_render *r, jj_dict *d, jv key, jv val);
/* The value of `key`, or NULL when absent. */
jv *jj_dict_get(jj_render *r, const jj_dict *d, jv key);
jv *jj_dict_get_str(const jj_dict *d, const char *key, size_t n);

/* Converts a JSON value (borrowed; strings point into it) to a value. */
jv jj_from_json(jj_render *r, const json_t *json, int depth);

/* ---- The render state ---------------------------------------------------------------------- */

/* A scope: the names bound by a template, a loop iteration or a macro call. */
struct jj_frame {
    jj_frame *parent;
    size_t n, cap;
    const char **names;
    jv *vals;
};

typedef struct jj_template_data jj_template_data;

struct jj_render {
    jj_ctx ctx; /* first, so a jj_render * is a jj_ctx * */
    const jj_node *root;
    jj_buf *out;       /* where text goes: the result, or a block being captured */
    jj_frame *globals; /* the context variables */
    int depth;         /* C frames in evaluation, checked against JJ_EVAL_DEPTH */
    int macro_depth;
    uint64_t loop_iters;
    uint64_t work;
    int control;    /* JJ_CONTROL_*: a pending break or continue */
    size_t pos;     /* source offset of the node being evaluated, for error locations */
    jv block_value; /* the text a {% filter %} or {% set x | f %} block captured */
};

enum { JJ_CONTROL_NONE, JJ_CONTROL_BREAK, JJ_CONTROL_CONTINUE };

/* Fails at the current node's location. */
_Noreturn void jj_error(jj_render *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Counts `n` units of work (bytes scanned, elements visited) against JJ_WORK_LIMIT. */
void jj_charge(jj_render *r, uint64_t n);
void jj_enter(jj_render *r); /* one more level of C recursion, checked */
static inline void jj_leave(jj_render *r) {
    r->depth--;
}

jv jj_lookup(jj_render *r, jj_frame *f, const char *name);
void jj_frame_set(jj_render *r, jj_frame *f, const char *name, jv v);
jj_frame *jj_frame_new(jj_render *r, jj_frame *parent);

/* ---- Value semantics (Python's, as Jinja exposes them) --------------------------------------- */

const char *jj_type_name(jv v); /* Python's type(x).__name__ */
bool jj_truthy(jv v);
bool jj_equal(jj_render *r, jv a, jv b);
/* Python's a < b etc.: negative, zero or positive; a type error for unordered types. */
int jj_compare(jj_render *r, jv a, jv b, const char *op);
bool jj_contains(jj_render *r, jv container, jv item);
/* Fails with the undefined value's message (any use of it but printing, testing, iterating). */
_Noreturn void jj_undefined_fail(jj_render *r, jv v);
/* The items a for loop or a filter visits: a list's items, a dict's keys, a string's
 * characters; undefined gives none. Other types are a type error. */
const jj_list *jj_iterate(jj_render *r, jv v);
/* len(); a type error for values without one. */
int64_t jj_length(jj_render *r, jv v);
/* A number as int (bools too), or fails. */
int64_t jj_as_int(jj_render *r, jv v, const char *what);
double jj_as_double(jv v);
bool jj_is_number(jv v); /* int, float or bool */

/* str(v) and repr(v), appended to b or as a string value. */
void jj_str_to(jj_render *r, jj_buf *b, jv v);
void jj_repr_to(jj_render *r, jj_buf *b, jv v);
jv jj_to_str(jj_render *r, jv v);
bool jj_str_is_case(jv s, bool upper); /* str.isupper() / str.islower() of a string */
void jj_float_repr(char *out, size_t size, double f);
/* json.dumps(v, ensure_ascii=False, indent, separators, sort_keys) as transformers' tojson. */
void jj_json_to(jj_render *r, jj_buf *b, jv v, const char *indent, const char *item_sep,
                const char *key_sep, bool sort_keys, int level);

/* a op b for the arithmetic operators (OP_ADD .. OP_POW), with Python's rules. */
jv jj_arith(jj_render *r, int op, jv a, jv b);

/* fmt % args: Python's printf-style formatting (jinja_format.c). */
jv jj_percent_format(jj_render *r, jv fmt, jv args);

/* Undefined values for a missing attribute or item of `obj` (Jinja's messages). */
jv jj_undefined_attr(jj_render *r, jv obj, const char *name, size_t n);
jv jj_undefined_item(jj_render *r, jv obj, jv key);

/* Attribute `.name` and subscript `[key]`, with Jinja's fallbacks from one to the other. */
jv jj_getattr(jj_render *r, jv obj, const char *name, size_t n);
jv jj_getitem(jj_render *r, jv obj, jv key);
jv jj_slice(jj_render *r, jv obj, jv start, jv stop, jv step);

/* Arguments of a call, positional then keyword. */
typedef struct jj_args {
    size_t n;
    jv *pos;
    size_t nk;
    const char **knames;
    jv *kvals;
} jj_args;

/* Argument `i` (or keyword `name`), else `dflt`; *given reports whether it was passed. */
jv jj_arg(const jj_args *a, size_t i, const char *name, jv dflt);
bool jj_has_arg(const jj_args *a, size_t i, const char *name);
/* Fails when more than `max_pos` positional or a keyword not in `names` (NULL-ended) was passed. */
void jj_check_args(jj_render *r, const jj_args *a, const char *fname, size_t max_pos,
                   const char *const *names);

jv jj_call(jj_render *r, jv callee, const jj_args *args);
jv jj_call_method(jj_render *r, jv self, const char *name, const jj_args *args);
jv jj_str_method(jj_render *r, jv s, const char *name, const jj_args *args);
/* String helpers the filters share with the str methods. */
jv jj_strip(jj_render *r, jv s, jv chars, bool left, bool right);
jv jj_replace(jj_render *r, jv s, jv old, jv new_, int64_t count);
jv jj_map_case(jj_render *r, jv s, uint32_t (*first)(uint32_t), uint32_t (*rest)(uint32_t));
bool jj_has_method(jv self, const char *name, bool *unsafe);
jv jj_apply_filter(jj_render *r, const char *name, jv value, const jj_args *args);
bool jj_apply_test(jj_render *r, const char *name, jv value, const jj_args *args);
bool jj_test_exists(const char *name);
bool jj_filter_exists(const char *name);
/* The global of that name (range, namespace, dict, raise_exception, strftime_now), else
 * undefined; and the call of one. */
jv jj_global(jj_render *r, const char *name);
jv jj_call_global(jj_render *r, jj_func_kind kind, const jj_args *args);

/* ---- Syntax tree ------------------------------------------------------------------------------
 */

typedef enum jj_kind {
    /* statements */
    N_TEXT,         /* value: the text */
    N_OUTPUT,       /* a: the expression printed */
    N_IF,           /* a: test; body; alt: else (an elif is an N_IF alone in alt) */
    N_FOR,          /* a: target; b: iterable; c: filter or NULL; body; alt: else */
    N_SET,          /* a: target; b: value */
    N_SET_BLOCK,    /* a: target; c: filters applied (E_FILTER on E_BLOCK_VALUE) or NULL; body */
    N_MACRO,        /* name; params: E_PARAM list; body */
    N_CALL_BLOCK,   /* a: the call; params: caller's parameters; body: caller's body */
    N_FILTER_BLOCK, /* c: filters on E_BLOCK_VALUE; body */
    N_BREAK,
    N_CONTINUE,
    N_WITH,  /* args: targets; kwargs: their values; body */
    N_GROUP, /* body: {% generation %}, {% print %} and the template itself */
    /* expressions */
    E_CONST,       /* value */
    E_NAME,        /* name */
    E_NSREF,       /* name . attr (an assignment target) */
    E_ATTR,        /* a . name */
    E_ITEM,        /* a [ b ] */
    E_SLICE,       /* a [ b : c : d ], each of b c d may be NULL */
    E_CALL,        /* a ( args, kwargs, *c, **d ) */
    E_FILTER,      /* a | name ( args, kwargs, *c, **d ) */
    E_TEST,        /* a is name ( args, kwargs, *c, **d ) */
    E_NOT,         /* not a */
    E_NEG,         /* - a */
    E_POS,         /* + a */
    E_BINARY,      /* a op b: op is a jj_binop */
    E_AND,         /* a and b */
    E_OR,          /* a or b */
    E_CONCAT,      /* args joined with ~ */
    E_COMPARE,     /* a, then args: E_OPERAND each with op and a */
    E_OPERAND,     /* op a */
    E_COND,        /* b if a else c (c may be NULL) */
    E_LIST,        /* args */
    E_TUPLE,       /* args */
    E_DICT,        /* args: keys; kwargs: values, in pairs */
    E_PARAM,       /* name, a: default or NULL */
    E_BLOCK_VALUE, /* the captured text a block filter applies to */
} jj_kind;

typedef enum jj_binop {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOTIN,
} jj_binop;

typedef struct jj_nodes {
    jj_node **v;
    size_t n;
} jj_nodes;

struct jj_node {
    jj_kind kind;
    int op;
    size_t pos; /* source offset, for error locations */
    jv value;
    const char *name; /* NUL-terminated, in the template's arena */
    const char *attr; /* E_NSREF's attribute */
    jj_node *a, *b, *c, *d;
    jj_nodes body, alt;    /* statements */
    jj_nodes args, kwargs; /* positional arguments; keyword arguments (E_PARAM: name = a) */
    jj_nodes params;       /* macro parameters */
    bool uses_varargs, uses_kwargs, uses_caller;
};

/* Tokens of the template source. */
typedef enum jj_tok_type {
    T_EOF,
    T_DATA,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
} jj_tok_type;

typedef struct jj_token {
    jj_tok_type type;
    size_t pos;
    const char *p; /* the source text (T_NAME, T_OP), the decoded text (T_DATA, T_STRING) */
    size_t n;
    int64_t i;
    double f;
} jj_token;

typedef struct jj_tokens {
    jj_token *v;
    size_t n;
} jj_tokens;

/* Splits normalized source into tokens, applying Jinja's whitespace control, trim_blocks and
 * lstrip_blocks. */
jj_tokens jj_lex(jj_ctx *ctx);
/* Parses tokens into the template's tree (an N_GROUP). */
jj_node *jj_parse_tokens(jj_ctx *ctx, const jj_tokens *toks);

/* The expression parser, used by the statement parser. */
typedef struct jj_parser {
    jj_ctx *ctx;
    const jj_tokens *toks;
    size_t i;
    int depth;
    jj_node *macro; /* the macro being parsed, to learn whether it reads varargs or kwargs */
    int loops;      /* for loops around the statement being parsed (break needs one) */
} jj_parser;

jj_node *jj_parse_expression(jj_parser *p, bool with_condexpr);
jj_node *jj_parse_tuple(jj_parser *p, bool simplified, bool with_condexpr, const char *extra_end,
                        bool explicit_parens, bool with_namespace);
jj_node *jj_parse_primary(jj_parser *p, bool with_namespace);
jj_node *jj_parse_filter(jj_parser *p, jj_node *input, bool start_inline);
jj_node *jj_node_new(jj_parser *p, jj_kind kind, size_t pos);
void jj_nodes_push(jj_parser *p, jj_nodes *list, jj_node *n);
const jj_token *jj_peek(const jj_parser *p);
const jj_token *jj_peek2(const jj_parser *p);
const jj_token *jj_next(jj_parser *p);
bool jj_tok_is(const jj_token *t, jj_tok_type type, const char *text);
bool jj_skip_if(jj_parser *p, jj_tok_type type, const char *text);
const jj_token *jj_expect(jj_parser *p, jj_tok_type type, const char *text);
/* How a token reads in an error message ("end of template", "'foo'"). */
const char *jj_describe(jj_parser *p, const jj_token *t);
void jj_parse_enter(jj_parser *p);

/* Runs statements, writing to r->out. */
void jj_exec_body(jj_render *r, const jj_nodes *body, jj_frame *f);
jv jj_eval(jj_render *r, const jj_node *e, jj_frame *f);
/* The arguments of a call, filter or test node, evaluated. */
void jj_eval_args(jj_render *r, const jj_node *call, jj_frame *f, jj_args *args);
/* Renders `body` in frame f into a fresh string (macros, set blocks, filter blocks). */
jv jj_capture(jj_render *r, const jj_nodes *body, jj_frame *f);
jv jj_call_macro(jj_render *r, const jj_macro *m, const jj_args *args, jv caller);

#endif

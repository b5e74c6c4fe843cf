/* Expression evaluation: walks an expression tree (names, literals, operators, comparisons,
 * conditionals, calls, filters, tests) and the error, work and depth accounting every part of the
 * interpreter reports through. Access and arithmetic are in jinja_access.c and jinja_arith.c. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* Every runtime error goes through here, located at the node being evaluated. */
_Noreturn void jj_error(jj_render *r, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    jj_vfail_at(&r->ctx, r->pos, fmt, args);
}

/* Work that is not a loop iteration (bytes scanned, elements sorted) still counts: a template
 * could otherwise spin in filters inside a loop of allowed length. */
void jj_charge(jj_render *r, uint64_t n) {
    r->work += n;
    if (r->work > JJ_WORK_LIMIT)
        jj_error(r, "template exceeded its work limit (%llu element and byte operations)",
                 (unsigned long long)JJ_WORK_LIMIT);
}

/* The C stack is the interpreter's stack: every recursive step passes here, so a deep template
 * or value fails cleanly instead of overflowing it. */
void jj_enter(jj_render *r) {
    if (++r->depth > JJ_EVAL_DEPTH)
        jj_error(r, "template nests too deeply (more than %d levels of evaluation)", JJ_EVAL_DEPTH);
}

/* Using an undefined value raises what it carries ("'x' is undefined", ...), as Jinja's
 * Undefined does on any use other than printing, testing and iterating. */
_Noreturn void jj_undefined_fail(jj_render *r, jv v) {
    jj_error(r, "%.*s", (int)v.u.s.n, v.u.s.p);
}

/* One link of a comparison chain (a < b in a < b < c). */
static bool compare_op(jj_render *r, int op, jv a, jv b) {
    switch (op) {
    case OP_EQ:
        return jj_equal(r, a, b);
    case OP_NE:
        return !jj_equal(r, a, b);
    case OP_LT: {
        int c = jj_compare(r, a, b, "<");
        return c == -1;
    }
    case OP_LE: {
        int c = jj_compare(r, a, b, "<=");
        return c == -1 || c == 0;
    }
    case OP_GT:
        return jj_compare(r, a, b, ">") == 1;
    case OP_GE: {
        int c = jj_compare(r, a, b, ">=");
        return c == 1 || c == 0;
    }
    case OP_IN:
        return jj_contains(r, b, a);
    case OP_NOTIN:
        return !jj_contains(r, b, a);
    }
    return false;
}

/* Evaluates a call's arguments, spreading `*seq` after the positional ones and `**dict`
 * after the keyword ones. */
void jj_eval_args(jj_render *r, const jj_node *call, jj_frame *f, jj_args *args) {
    const jj_list *spread = NULL;
    const jj_dict *spread_kw = NULL;
    if (call->c) {
        jv seq = jj_eval(r, call->c, f);
        r->pos = call->c->pos;
        spread = jj_iterate(r, seq);
    }
    if (call->d) {
        jv kw = jj_eval(r, call->d, f);
        r->pos = call->d->pos;
        if (kw.type != JV_DICT && kw.type != JV_UNDEFINED)
            jj_error(r, "argument after ** must be a mapping, not %s", jj_type_name(kw));
        if (kw.type == JV_DICT) spread_kw = kw.u.dict;
    }
    size_t extra = spread ? spread->n : 0, extra_kw = spread_kw ? spread_kw->n : 0;
    args->n = call->args.n + extra;
    args->pos = jj_alloc(&r->ctx, (args->n + 1) * sizeof(jv));
    for (size_t i = 0; i < call->args.n; i++)
        args->pos[i] = jj_eval(r, call->args.v[i], f);
    for (size_t i = 0; i < extra; i++)
        args->pos[call->args.n + i] = spread->items[i];
    args->nk = call->kwargs.n + extra_kw;
    args->knames = jj_alloc(&r->ctx, (args->nk + 1) * sizeof(char *));
    args->kvals = jj_alloc(&r->ctx, (args->nk + 1) * sizeof(jv));
    for (size_t i = 0; i < call->kwargs.n; i++) {
        args->knames[i] = call->kwargs.v[i]->name;
        args->kvals[i] = jj_eval(r, call->kwargs.v[i]->a, f);
    }
    for (size_t i = 0; i < extra_kw; i++) {
        jv key = spread_kw->keys[i];
        if (key.type != JV_STR) jj_error(r, "keywords must be strings");
        const char *name = jj_strndup(&r->ctx, key.u.s.p, key.u.s.n);
        for (size_t k = 0; k < call->kwargs.n + i; k++)
            if (!strcmp(args->knames[k], name))
                jj_error(r, "got multiple values for keyword argument '%s'", name);
        args->knames[call->kwargs.n + i] = name;
        args->kvals[call->kwargs.n + i] = spread_kw->vals[i];
    }
}

/* A call. obj.method(...) calls the method directly; anything else evaluates the callee first. */
static jv eval_call(jj_render *r, const jj_node *e, jj_frame *f) {
    jj_args args;
    const jj_node *callee = e->a;
    if (callee->kind == E_ATTR) {
        /* obj.method(...) calls the method directly instead of binding it first */
        jv obj = jj_eval(r, callee->a, f);
        bool unsafe = false;
        if (obj.type != JV_UNDEFINED && jj_has_method(obj, callee->name, &unsafe) && !unsafe) {
            jj_eval_args(r, e, f, &args);
            r->pos = e->pos;
            return jj_call_method(r, obj, callee->name, &args);
        }
        r->pos = callee->pos;
        jv fn = jj_getattr(r, obj, callee->name, strlen(callee->name));
        jj_eval_args(r, e, f, &args);
        r->pos = e->pos;
        return jj_call(r, fn, &args);
    }
    jv fn = jj_eval(r, callee, f);
    jj_eval_args(r, e, f, &args);
    r->pos = e->pos;
    return jj_call(r, fn, &args);
}

/* The value of one expression node; jj_eval wraps it with depth and location bookkeeping. */
static jv eval_inner(jj_render *r, const jj_node *e, jj_frame *f) {
    switch (e->kind) {
    case E_CONST:
        return e->value;
    case E_NAME:
        return jj_lookup(r, f, e->name);
    case E_ATTR: {
        jv obj = jj_eval(r, e->a, f);
        r->pos = e->pos;
        return jj_getattr(r, obj, e->name, strlen(e->name));
    }
    case E_ITEM: {
        jv obj = jj_eval(r, e->a, f);
        jv key = jj_eval(r, e->b, f);
        r->pos = e->pos;
        return jj_getitem(r, obj, key);
    }
    case E_SLICE: {
        jv obj = jj_eval(r, e->a, f);
        jv start = e->b ? jj_eval(r, e->b, f) : jv_none();
        jv stop = e->c ? jj_eval(r, e->c, f) : jv_none();
        jv step = e->d ? jj_eval(r, e->d, f) : jv_none();
        r->pos = e->pos;
        return jj_slice(r, obj, start, stop, step);
    }
    case E_CALL:
        return eval_call(r, e, f);
    case E_FILTER: {
        jv value = jj_eval(r, e->a, f);
        jj_args args;
        jj_eval_args(r, e, f, &args);
        r->pos = e->pos;
        return jj_apply_filter(r, e->name, value, &args);
    }
    case E_TEST: {
        jv value = jj_eval(r, e->a, f);
        jj_args args;
        jj_eval_args(r, e, f, &args);
        r->pos = e->pos;
        return jv_bool(jj_apply_test(r, e->name, value, &args));
    }
    case E_NOT:
        return jv_bool(!jj_truthy(jj_eval(r, e->a, f)));
    case E_NEG:
    case E_POS: {
        jv v = jj_eval(r, e->a, f);
        r->pos = e->pos;
        if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
        if (e->kind == E_POS && jj_is_number(v)) return v.type == JV_BOOL ? jv_int(v.u.b) : v;
        if (v.type == JV_FLOAT) return jv_float(-v.u.f);
        if (v.type == JV_INT || v.type == JV_BOOL) {
            int64_t i = v.type == JV_BOOL ? v.u.b : v.u.i;
            if (i == INT64_MIN) jj_error(r, "integer overflow");
            return jv_int(-i);
        }
        jj_error(r, "bad operand type for unary %c: '%s'", e->kind == E_NEG ? '-' : '+',
                 jj_type_name(v));
    }
    case E_BINARY: {
        jv a = jj_eval(r, e->a, f);
        jv b = jj_eval(r, e->b, f);
        r->pos = e->pos;
        return jj_arith(r, e->op, a, b);
    }
    case E_AND: {
        jv a = jj_eval(r, e->a, f);
        return jj_truthy(a) ? jj_eval(r, e->b, f) : a;
    }
    case E_OR: {
        jv a = jj_eval(r, e->a, f);
        return jj_truthy(a) ? a : jj_eval(r, e->b, f);
    }
    case E_CONCAT: {
        jj_buf b = {0};
        for (size_t i = 0; i < e->args.n; i++) {
            jv v = jj_eval(r, e->args.v[i], f);
            r->pos = e->pos;
            jj_str_to(r, &b, v);
        }
        return jv_str(b.p ? b.p : "", b.n);
    }
    case E_COMPARE: {
        jv left = jj_eval(r, e->a, f);
        for (size_t i = 0; i < e->args.n; i++) {
            const jj_node *operand = e->args.v[i];
            jv right = jj_eval(r, operand->a, f);
            r->pos = operand->pos;
            if (!compare_op(r, operand->op, left, right)) return jv_bool(false);
            left = right;
        }
        return jv_bool(true);
    }
    case E_COND:
        if (jj_truthy(jj_eval(r, e->a, f))) return jj_eval(r, e->b, f);
        if (e->c) return jj_eval(r, e->c, f);
        return jv_undefined_msg("the inline if-expression evaluated to false and no else "
                                "section was defined.");
    case E_LIST:
    case E_TUPLE: {
        jj_list *l = jj_list_new(&r->ctx, e->args.n);
        for (size_t i = 0; i < e->args.n; i++)
            l->items[i] = jj_eval(r, e->args.v[i], f);
        l->n = e->args.n;
        return jv_list_v(l, e->kind == E_TUPLE);
    }
    case E_DICT: {
        jj_dict *d = jj_dict_new(&r->ctx, e->args.n);
        for (size_t i = 0; i < e->args.n; i++) {
            jv k = jj_eval(r, e->args.v[i], f);
            jv v = jj_eval(r, e->kwargs.v[i], f);
            r->pos = e->args.v[i]->pos;
            if ((k.type == JV_LIST && !(k.flags & JV_FLAG_TUPLE)) || k.type == JV_DICT)
                jj_error(r, "unhashable type: '%s'", jj_type_name(k));
            jj_dict_set(r, d, k, v);
        }
        return jv_dict_v(d);
    }
    case E_BLOCK_VALUE:
        return r->block_value;
    default:
        jj_error(r, "internal error: node %d is not an expression", (int)e->kind);
    }
}

/* Evaluates an expression, keeping the error location at the innermost node being evaluated. */
jv jj_eval(jj_render *r, const jj_node *e, jj_frame *f) {
    jj_enter(r);
    size_t saved = r->pos;
    r->pos = e->pos;
    jv v = eval_inner(r, e, f);
    r->pos = saved;
    jj_leave(r);
    return v;
}

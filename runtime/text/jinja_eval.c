/* Expression evaluation: names, literals, operators with Python's arithmetic (floor division and
 * modulo round toward negative infinity, int overflow is an error rather than a wrong number),
 * attribute and item access with Jinja's fallbacks, slices, calls, filters and tests. */
#include <math.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

_Noreturn void jj_error(jj_render *r, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    jj_vfail_at(&r->ctx, r->pos, fmt, args);
}

void jj_charge(jj_render *r, uint64_t n) {
    r->work += n;
    if (r->work > JJ_WORK_LIMIT)
        jj_error(r, "template exceeded its work limit (%llu element and byte operations)",
                 (unsigned long long)JJ_WORK_LIMIT);
}

void jj_enter(jj_render *r) {
    if (++r->depth > JJ_EVAL_DEPTH)
        jj_error(r, "template nests too deeply (more than %d levels of evaluation)", JJ_EVAL_DEPTH);
}

_Noreturn void jj_undefined_fail(jj_render *r, jv v) {
    jj_error(r, "%.*s", (int)v.u.s.n, v.u.s.p);
}

/* Jinja's object_type_repr: how an error names the type of the value it failed on. */
static const char *object_type(jv obj) {
    switch (obj.type) {
    case JV_NONE:
        return "None";
    case JV_BOOL:
        return "bool object";
    case JV_INT:
        return "int object";
    case JV_FLOAT:
        return "float object";
    case JV_STR:
        return "str object";
    case JV_LIST:
        return (obj.flags & JV_FLAG_TUPLE) ? "tuple object" : "list object";
    case JV_DICT:
        return "dict object";
    case JV_NAMESPACE:
        return "jinja2.utils.Namespace object";
    case JV_LOOP:
        return "jinja2.runtime.LoopContext object";
    case JV_MACRO:
        return "jinja2.runtime.Macro object";
    case JV_UNDEFINED:
        return "jinja2.runtime.Undefined object";
    case JV_FUNC:
        break;
    }
    return "builtin_function_or_method object";
}

jv jj_undefined_attr(jj_render *r, jv obj, const char *name, size_t n) {
    jj_buf b = {0};
    jj_repr_to(r, &b, jv_cstr(object_type(obj)));
    jj_buf_puts(&r->ctx, &b, " has no attribute ");
    jj_repr_to(r, &b, jv_str(name, n));
    return jv_undefined_msg(b.p);
}

jv jj_undefined_item(jj_render *r, jv obj, jv key) {
    if (key.type == JV_STR) return jj_undefined_attr(r, obj, key.u.s.p, key.u.s.n);
    jj_buf b = {0};
    jj_buf_puts(&r->ctx, &b, object_type(obj));
    jj_buf_puts(&r->ctx, &b, " has no element ");
    jj_repr_to(r, &b, key);
    return jv_undefined_msg(b.p);
}

/* The loop variable's attributes, computed from where the loop stands. */
static bool loop_attr(jj_render *r, const jj_loop *l, const char *name, jv *out) {
    size_t i = l->index0, n = l->items->n;
    if (!strcmp(name, "index"))
        *out = jv_int((int64_t)i + 1);
    else if (!strcmp(name, "index0"))
        *out = jv_int((int64_t)i);
    else if (!strcmp(name, "revindex"))
        *out = jv_int((int64_t)(n - i));
    else if (!strcmp(name, "revindex0"))
        *out = jv_int((int64_t)(n - i - 1));
    else if (!strcmp(name, "first"))
        *out = jv_bool(i == 0);
    else if (!strcmp(name, "last"))
        *out = jv_bool(i + 1 == n);
    else if (!strcmp(name, "length"))
        *out = jv_int((int64_t)n);
    else if (!strcmp(name, "depth"))
        *out = jv_int(1);
    else if (!strcmp(name, "depth0"))
        *out = jv_int(0);
    else if (!strcmp(name, "previtem"))
        *out = i > 0 ? l->items->items[i - 1] : jv_undefined_msg("there is no previous item");
    else if (!strcmp(name, "nextitem"))
        *out = i + 1 < n ? l->items->items[i + 1] : jv_undefined_msg("there is no next item");
    else
        return false;
    (void)r;
    return true;
}

static jv bound_method(jj_render *r, jv self, const char *name) {
    jj_func *fn = jj_alloc(&r->ctx, sizeof(jj_func));
    fn->kind = JF_METHOD;
    fn->self = self;
    fn->name = name;
    jv v = {.type = JV_FUNC};
    v.u.func = fn;
    return v;
}

/* The sandbox's answer to a method that would modify a list or dict: a value that fails when
 * used, as ImmutableSandboxedEnvironment's unsafe_undefined does. */
static jv unsafe_method(jj_render *r, jv self, const char *name) {
    jj_buf b = {0};
    jj_buf_puts(&r->ctx, &b, "access to attribute ");
    jj_repr_to(r, &b, jv_cstr(name));
    jj_buf_printf(&r->ctx, &b, " of '%s' object is unsafe.", jj_type_name(self));
    jv v = jv_undefined_msg(b.p);
    v.flags |= JV_FLAG_UNSAFE;
    return v;
}

/* `obj.name`: a Python attribute (a method) first, then the item of that name, as Jinja's
 * getattr does. */
jv jj_getattr(jj_render *r, jv obj, const char *name, size_t n) {
    if (obj.type == JV_UNDEFINED) jj_undefined_fail(r, obj);
    const char *cname = name[n] ? jj_strndup(&r->ctx, name, n) : name;
    bool unsafe = false;
    if (jj_has_method(obj, cname, &unsafe))
        return unsafe ? unsafe_method(r, obj, cname) : bound_method(r, obj, cname);
    switch (obj.type) {
    case JV_DICT:
    case JV_NAMESPACE: {
        jv *v = jj_dict_get_str(obj.u.dict, name, n);
        if (v) return *v;
        break;
    }
    case JV_LOOP: {
        jv v;
        if (loop_attr(r, obj.u.loop, cname, &v)) return v;
        break;
    }
    default:
        break;
    }
    return jj_undefined_attr(r, obj, name, n);
}

/* `obj[key]`: the item first, then (for a string key) the attribute of that name. */
jv jj_getitem(jj_render *r, jv obj, jv key) {
    if (obj.type == JV_UNDEFINED) jj_undefined_fail(r, obj);
    switch (obj.type) {
    case JV_DICT: {
        /* an unhashable key is a TypeError, which Jinja's getitem turns into undefined */
        if ((key.type == JV_LIST && !(key.flags & JV_FLAG_TUPLE)) || key.type == JV_DICT)
            return jj_undefined_item(r, obj, key);
        jv *v = jj_dict_get(r, obj.u.dict, key);
        if (v) return *v;
        break;
    }
    case JV_LIST:
        if (key.type == JV_INT || key.type == JV_BOOL) {
            int64_t i = key.type == JV_BOOL ? key.u.b : key.u.i, n = (int64_t)obj.u.list->n;
            if (i < 0) i += n;
            if (i >= 0 && i < n) return obj.u.list->items[i];
            return jj_undefined_item(r, obj, key);
        }
        break;
    case JV_STR:
        if (key.type == JV_INT || key.type == JV_BOOL) {
            int64_t i = key.type == JV_BOOL ? key.u.b : key.u.i;
            size_t n_cp;
            jj_charge(r, obj.u.s.n);
            size_t *off = jj_utf8_offsets(&r->ctx, obj.u.s.p, obj.u.s.n, &n_cp);
            if (i < 0) i += (int64_t)n_cp;
            if (i >= 0 && i < (int64_t)n_cp) return jv_str(obj.u.s.p + off[i], off[i + 1] - off[i]);
            return jj_undefined_item(r, obj, key);
        }
        break;
    default:
        break;
    }
    if (key.type == JV_STR) return jj_getattr(r, obj, key.u.s.p, key.u.s.n);
    return jj_undefined_item(r, obj, key);
}

/* Python's slice index rules (PySlice_AdjustIndices): negative counts from the end, out of
 * range clamps, and a negative step walks backwards. */
static bool slice_index(jj_render *r, jv v, int64_t *out) {
    if (v.type == JV_NONE || v.type == JV_UNDEFINED) return false;
    if (v.type != JV_INT && v.type != JV_BOOL)
        jj_error(r, "slice indices must be integers or None");
    *out = v.type == JV_BOOL ? v.u.b : v.u.i;
    return true;
}

jv jj_slice(jj_render *r, jv obj, jv start_v, jv stop_v, jv step_v) {
    if (obj.type == JV_UNDEFINED) jj_undefined_fail(r, obj);
    if (obj.type != JV_STR && obj.type != JV_LIST)
        return jv_undefined_msg("object is not sliceable");
    int64_t step = 1, start, stop;
    if (slice_index(r, step_v, &step) && step == 0) jj_error(r, "slice step cannot be zero");
    size_t n_cp = 0, *off = NULL;
    if (obj.type == JV_STR) {
        jj_charge(r, obj.u.s.n);
        off = jj_utf8_offsets(&r->ctx, obj.u.s.p, obj.u.s.n, &n_cp);
    }
    int64_t len = obj.type == JV_STR ? (int64_t)n_cp : (int64_t)obj.u.list->n;
    if (!slice_index(r, start_v, &start)) {
        start = step < 0 ? len - 1 : 0;
    } else if (start < 0) {
        start += len;
        if (start < 0) start = step < 0 ? -1 : 0;
    } else if (start >= len) {
        start = step < 0 ? len - 1 : len;
    }
    if (!slice_index(r, stop_v, &stop)) {
        stop = step < 0 ? -1 : len;
    } else if (stop < 0) {
        stop += len;
        if (stop < 0) stop = step < 0 ? -1 : 0;
    } else if (stop >= len) {
        stop = step < 0 ? len - 1 : len;
    }
    if (obj.type == JV_STR) {
        if (step == 1) {
            if (stop <= start) return jv_str("", 0);
            return jv_str(obj.u.s.p + off[start], off[stop] - off[start]);
        }
        jj_buf b = {0};
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            jj_buf_put(&r->ctx, &b, obj.u.s.p + off[i], off[i + 1] - off[i]);
        return jv_str(b.p ? b.p : "", b.n);
    }
    jj_list *l = jj_list_new(&r->ctx, 0);
    jj_charge(r, (uint64_t)len);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
        jj_list_push(&r->ctx, l, obj.u.list->items[i]);
    return jv_list_v(l, obj.flags & JV_FLAG_TUPLE);
}

static _Noreturn void binop_type_error(jj_render *r, const char *op, jv a, jv b) {
    if (!strcmp(op, "*") &&
        (a.type == JV_STR || a.type == JV_LIST || b.type == JV_STR || b.type == JV_LIST))
        jj_error(r, "can't multiply sequence by non-int of type '%s'",
                 jj_type_name(a.type == JV_STR || a.type == JV_LIST ? b : a));
    if (!strcmp(op, "+") && (a.type == JV_STR || a.type == JV_LIST))
        jj_error(r, "can only concatenate %s (not \"%s\") to %s", jj_type_name(a), jj_type_name(b),
                 jj_type_name(a));
    jj_error(r, "unsupported operand type(s) for %s: '%s' and '%s'", op, jj_type_name(a),
             jj_type_name(b));
}

static int64_t int_of(jv v) {
    return v.type == JV_BOOL ? v.u.b : v.u.i;
}

/* Python's float divmod (floor division and modulo with the divisor's sign). */
static void float_divmod(double x, double y, double *floordiv, double *mod) {
    double m = fmod(x, y);
    double div = (x - m) / y;
    if (m != 0) {
        if ((y < 0) != (m < 0)) {
            m += y;
            div -= 1.0;
        }
    } else {
        m = copysign(0.0, y);
    }
    double fd;
    if (div != 0) {
        fd = floor(div);
        if (div - fd > 0.5) fd += 1.0;
    } else {
        fd = copysign(0.0, x / y);
    }
    *floordiv = fd;
    *mod = m;
}

static jv repeat(jj_render *r, jv seq, int64_t times) {
    if (times < 0) times = 0;
    if (seq.type == JV_STR) {
        if (seq.u.s.n && (uint64_t)times > JJ_MEMORY_LIMIT / seq.u.s.n)
            jj_error(r, "string repetition too large");
        jj_buf b = {0};
        jj_charge(r, seq.u.s.n * (uint64_t)times);
        for (int64_t i = 0; i < times; i++)
            jj_buf_put(&r->ctx, &b, seq.u.s.p, seq.u.s.n);
        return jv_str(b.p ? b.p : "", b.n);
    }
    size_t n = seq.u.list->n;
    if (n && (uint64_t)times > JJ_MEMORY_LIMIT / (n * sizeof(jv)))
        jj_error(r, "list repetition too large");
    jj_charge(r, n * (uint64_t)times);
    jj_list *l = jj_list_new(&r->ctx, n * (size_t)times);
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < n; k++)
            l->items[l->n++] = seq.u.list->items[k];
    return jv_list_v(l, seq.flags & JV_FLAG_TUPLE);
}

jv jj_arith(jj_render *r, int op, jv a, jv b) {
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a.type == JV_UNDEFINED) jj_undefined_fail(r, a);
    if (b.type == JV_UNDEFINED) jj_undefined_fail(r, b);
    bool nums = jj_is_number(a) && jj_is_number(b);
    bool ints = nums && a.type != JV_FLOAT && b.type != JV_FLOAT;
    int64_t x = ints ? int_of(a) : 0, y = ints ? int_of(b) : 0, z;
    double fx = jj_as_double(a), fy = jj_as_double(b);
    switch (op) {
    case OP_ADD:
        if (ints) {
            if (__builtin_add_overflow(x, y, &z)) jj_error(r, "integer overflow");
            return jv_int(z);
        }
        if (nums) return jv_float(fx + fy);
        if (a.type == JV_STR && b.type == JV_STR) {
            jj_charge(r, a.u.s.n + b.u.s.n);
            char *p = jj_alloc(&r->ctx, a.u.s.n + b.u.s.n + 1);
            jj_copy(p, a.u.s.p, a.u.s.n);
            jj_copy(p + a.u.s.n, b.u.s.p, b.u.s.n);
            return jv_str(p, a.u.s.n + b.u.s.n);
        }
        if (a.type == JV_LIST && b.type == JV_LIST &&
            (a.flags & JV_FLAG_TUPLE) == (b.flags & JV_FLAG_TUPLE)) {
            size_t n = a.u.list->n + b.u.list->n;
            jj_charge(r, n);
            jj_list *l = jj_list_new(&r->ctx, n);
            jj_copy(l->items, a.u.list->items, a.u.list->n * sizeof(jv));
            jj_copy(l->items + a.u.list->n, b.u.list->items, b.u.list->n * sizeof(jv));
            l->n = n;
            return jv_list_v(l, a.flags & JV_FLAG_TUPLE);
        }
        break;
    case OP_SUB:
        if (ints) {
            if (__builtin_sub_overflow(x, y, &z)) jj_error(r, "integer overflow");
            return jv_int(z);
        }
        if (nums) return jv_float(fx - fy);
        break;
    case OP_MUL:
        if (ints) {
            if (__builtin_mul_overflow(x, y, &z)) jj_error(r, "integer overflow");
            return jv_int(z);
        }
        if (nums) return jv_float(fx * fy);
        if ((a.type == JV_STR || a.type == JV_LIST) && (b.type == JV_INT || b.type == JV_BOOL))
            return repeat(r, a, int_of(b));
        if ((b.type == JV_STR || b.type == JV_LIST) && (a.type == JV_INT || a.type == JV_BOOL))
            return repeat(r, b, int_of(a));
        break;
    case OP_DIV:
        if (nums) {
            if (fy == 0) jj_error(r, "division by zero");
            return jv_float(fx / fy);
        }
        break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (ints) {
            if (y == 0)
                jj_error(r, op == OP_MOD ? "integer modulo by zero"
                                         : "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) {
                if (op == OP_MOD) return jv_int(0);
                jj_error(r, "integer overflow");
            }
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q -= 1;
                m += y;
            }
            return jv_int(op == OP_MOD ? m : q);
        }
        if (nums) {
            if (fy == 0)
                jj_error(r, op == OP_MOD ? "float modulo" : "float floor division by zero");
            double fd, fm;
            float_divmod(fx, fy, &fd, &fm);
            return jv_float(op == OP_MOD ? fm : fd);
        }
        if (op == OP_MOD && a.type == JV_STR)
            jj_error(r, "printf-style string formatting (str %% value) is not supported");
        break;
    case OP_POW:
        if (ints && y >= 0) {
            int64_t result = 1, base = x;
            uint64_t e = (uint64_t)y;
            while (e) {
                if (e & 1 && __builtin_mul_overflow(result, base, &result))
                    jj_error(r, "integer overflow");
                e >>= 1;
                if (e && __builtin_mul_overflow(base, base, &base)) jj_error(r, "integer overflow");
            }
            return jv_int(result);
        }
        if (nums) {
            if (fx == 0 && fy < 0) jj_error(r, "0.0 cannot be raised to a negative power");
            if (fx < 0 && fy != floor(fy))
                jj_error(r, "a negative number to a fractional power is complex");
            return jv_float(pow(fx, fy));
        }
        break;
    }
    binop_type_error(r, names[op], a, b);
}

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
            int64_t i = int_of(v);
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

jv jj_eval(jj_render *r, const jj_node *e, jj_frame *f) {
    jj_enter(r);
    size_t saved = r->pos;
    r->pos = e->pos;
    jv v = eval_inner(r, e, f);
    r->pos = saved;
    jj_leave(r);
    return v;
}

/* Arithmetic with Python's rules: int op int stays int (overflow is an error, where Python would
 * grow a big integer), mixing in a float gives a float, / always divides as floats, // and %
 * round toward negative infinity, + joins strings, lists and tuples, * repeats them. */
#include <math.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* The TypeError Python raises for an operator on the wrong types, in its words. */
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

/* An int or bool as int64 (True + 1 is 2 in Python). */
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

/* str * n and list * n; a negative count gives an empty result, as in Python. */
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

/* a op b for + - * / // % **, with Python's rules and Python's TypeError messages. */
jv jj_arith(jj_render *r, int op, jv a, jv b) {
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (op == OP_MOD && a.type == JV_STR) return jj_percent_format(r, a, b);
    if (a.type == JV_UNDEFINED) jj_undefined_fail(r, a);
    if (b.type == JV_UNDEFINED) jj_undefined_fail(r, b);
    bool gen_a = a.type == JV_LIST && a.u.list->lazy, gen_b = b.type == JV_LIST && b.u.list->lazy;
    if (gen_a || gen_b) { /* a generator takes part in no arithmetic */
        if (op == OP_ADD && !gen_a && (a.type == JV_STR || a.type == JV_LIST))
            binop_type_error(r, names[op], a, b);
        jj_error(r, "unsupported operand type(s) for %s: '%s' and '%s'", names[op], jj_type_name(a),
                 jj_type_name(b));
    }
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
            if (b.u.list->n) /* (l->items is NULL when both are empty) */
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
            double z = pow(fx, fy);
            if (isinf(z) && isfinite(fx) && isfinite(fy))
                jj_error(r, "(34, 'Numerical result out of range')");
            return jv_float(z);
        }
        break;
    }
    binop_type_error(r, names[op], a, b);
}

/* Jinja's tests (`x is defined`, `n is divisibleby 3`, `a is eq b`, ...), with the answers
 * Python's types give: a bool is a number and not an integer, and an undefined value is
 * iterable, a sequence and callable, as Jinja's Undefined is. */
#include <math.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

static const char *const test_names[] = {
    "defined",     "undefined", "none",        "boolean", "false",    "true",     "integer",
    "float",       "number",    "string",      "mapping", "iterable", "sequence", "callable",
    "odd",         "even",      "divisibleby", "eq",      "equalto",  "==",       "ne",
    "!=",          "lt",        "lessthan",    "<",       "le",       "<=",       "gt",
    "greaterthan", ">",         "ge",          ">=",      "in",       "lower",    "upper",
    "sameas",      "escaped",   "filter",      "test",    NULL};

bool jj_test_exists(const char *name) {
    for (size_t i = 0; test_names[i]; i++)
        if (!strcmp(test_names[i], name)) return true;
    return false;
}

static bool is(const char *name, const char *a, const char *b, const char *c) {
    return !strcmp(name, a) || (b && !strcmp(name, b)) || (c && !strcmp(name, c));
}

static jv need_arg(jj_render *r, const char *test, const jj_args *a) {
    if (a->n < 1 && a->nk < 1) jj_error(r, "test '%s' needs an argument", test);
    return a->n ? a->pos[0] : a->kvals[0];
}

/* x % n as Python computes it, for odd, even and divisibleby. */
static bool divisible(jj_render *r, jv v, jv n) {
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    if (!jj_is_number(v) || !jj_is_number(n))
        jj_error(r, "unsupported operand type(s) for %%: '%s' and '%s'", jj_type_name(v),
                 jj_type_name(n));
    if (v.type != JV_FLOAT && n.type != JV_FLOAT) {
        int64_t x = v.type == JV_BOOL ? v.u.b : v.u.i, y = n.type == JV_BOOL ? n.u.b : n.u.i;
        if (y == 0) jj_error(r, "integer division or modulo by zero");
        if (y == -1) return true;
        return x % y == 0;
    }
    double y = jj_as_double(n);
    if (y == 0) jj_error(r, "float modulo");
    return fmod(jj_as_double(v), y) == 0;
}

static bool all_case(jj_render *r, jv v, bool upper) {
    jv s = jj_to_str(r, v);
    bool cased = false;
    for (size_t i = 0; i < s.u.s.n;) {
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        if (upper ? jj_is_lower(cp) : jj_is_upper(cp)) return false;
        if (upper ? jj_is_upper(cp) : jj_is_lower(cp)) cased = true;
    }
    return cased;
}

bool jj_apply_test(jj_render *r, const char *name, jv v, const jj_args *a) {
    jv_type t = (jv_type)v.type;
    if (!strcmp(name, "defined")) return t != JV_UNDEFINED;
    if (!strcmp(name, "undefined")) return t == JV_UNDEFINED;
    if (!strcmp(name, "none")) return t == JV_NONE;
    if (!strcmp(name, "boolean")) return t == JV_BOOL;
    if (!strcmp(name, "false")) return t == JV_BOOL && !v.u.b;
    if (!strcmp(name, "true")) return t == JV_BOOL && v.u.b;
    if (!strcmp(name, "integer")) return t == JV_INT;
    if (!strcmp(name, "float")) return t == JV_FLOAT;
    if (!strcmp(name, "number")) return jj_is_number(v);
    if (!strcmp(name, "string")) return t == JV_STR;
    if (!strcmp(name, "mapping")) return t == JV_DICT;
    if (!strcmp(name, "iterable") || !strcmp(name, "sequence"))
        return t == JV_STR || t == JV_LIST || t == JV_DICT || t == JV_UNDEFINED;
    if (!strcmp(name, "callable")) return t == JV_MACRO || t == JV_FUNC || t == JV_UNDEFINED;
    if (!strcmp(name, "odd")) return !divisible(r, v, jv_int(2));
    if (!strcmp(name, "even")) return divisible(r, v, jv_int(2));
    if (!strcmp(name, "divisibleby")) return divisible(r, v, need_arg(r, name, a));
    if (is(name, "eq", "equalto", "==")) return jj_equal(r, v, need_arg(r, name, a));
    if (is(name, "ne", "!=", NULL)) return !jj_equal(r, v, need_arg(r, name, a));
    if (is(name, "lt", "lessthan", "<")) return jj_compare(r, v, need_arg(r, name, a), "<") == -1;
    if (is(name, "le", "<=", NULL)) {
        int c = jj_compare(r, v, need_arg(r, name, a), "<=");
        return c == -1 || c == 0;
    }
    if (is(name, "gt", "greaterthan", ">")) return jj_compare(r, v, need_arg(r, name, a), ">") == 1;
    if (is(name, "ge", ">=", NULL)) {
        int c = jj_compare(r, v, need_arg(r, name, a), ">=");
        return c == 1 || c == 0;
    }
    if (!strcmp(name, "in")) return jj_contains(r, need_arg(r, name, a), v);
    if (!strcmp(name, "lower")) return all_case(r, v, false);
    if (!strcmp(name, "upper")) return all_case(r, v, true);
    if (!strcmp(name, "sameas")) {
        jv o = need_arg(r, name, a);
        if (t != o.type) return false;
        if (t == JV_NONE || t == JV_UNDEFINED) return true;
        if (t == JV_BOOL) return v.u.b == o.u.b;
        if (t == JV_INT) return v.u.i == o.u.i && v.u.i >= -5 && v.u.i <= 256; /* CPython's cache */
        if (t == JV_STR) return v.u.s.p == o.u.s.p && v.u.s.n == o.u.s.n;
        return memcmp(&v.u, &o.u, sizeof(v.u)) == 0;
    }
    if (!strcmp(name, "escaped")) return false;
    if (!strcmp(name, "filter") || !strcmp(name, "test")) {
        if (t != JV_STR) return false;
        char *n = jj_strndup(&r->ctx, v.u.s.p, v.u.s.n);
        return name[0] == 'f' ? jj_filter_exists(n) : jj_test_exists(n);
    }
    jj_error(r, "No test named '%s'.", name);
}

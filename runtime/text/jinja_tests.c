/* Jinja's tests (`x is defined`, `n is divisibleby 3`, `a is eq b`, ...), with the answers
 * Python's types give: a bool is a number and not an integer, and an undefined value is
 * iterable, a sequence and callable, as Jinja's Undefined is. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

static const char *const test_names[] = {
    "defined",     "undefined", "none",        "boolean", "false",    "true",     "integer",
    "float",       "number",    "string",      "mapping", "iterable", "sequence", "callable",
    "odd",         "even",      "divisibleby", "eq",      "equalto",  "==",       "ne",
    "!=",          "lt",        "lessthan",    "<",       "le",       "<=",       "gt",
    "greaterthan", ">",         "ge",          ">=",      "in",       "lower",    "upper",
    "sameas",      "escaped",   "filter",      "test",    NULL};

/* Whether a test of that name exists (the `test` test). */
bool jj_test_exists(const char *name) {
    for (size_t i = 0; test_names[i]; i++)
        if (!strcmp(test_names[i], name)) return true;
    return false;
}

/* Whether name is one of up to three aliases. */
static bool is(const char *name, const char *a, const char *b, const char *c) {
    return !strcmp(name, a) || (b && !strcmp(name, b)) || (c && !strcmp(name, c));
}

/* The argument of a test that takes one. */
static jv need_arg(jj_render *r, const char *test, const jj_args *a) {
    if (a->n < 1 && a->nk < 1) jj_error(r, "test '%s' needs an argument", test);
    return a->n ? a->pos[0] : a->kvals[0];
}

/* `value % n == want`, which is how Jinja defines odd (1), even and divisibleby (0): a float
 * is odd only when it is an odd integer, and the types are Python's to check. */
static bool mod_is(jj_render *r, jv v, jv n, int64_t want) {
    return jj_equal(r, jj_arith(r, OP_MOD, v, n), jv_int(want));
}

/* The lower/upper tests: str(value).islower()/isupper(). */
static bool all_case(jj_render *r, jv v, bool upper) {
    return jj_str_is_case(jj_to_str(r, v), upper);
}

/* Applies the named test; an unknown name is an error when reached. */
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
    if (!strcmp(name, "iterable"))
        return t == JV_STR || t == JV_LIST || t == JV_DICT || t == JV_UNDEFINED;
    if (!strcmp(name, "sequence")) /* len() and indexing: not a generator */
        return t == JV_STR || (t == JV_LIST && !v.u.list->lazy) || t == JV_DICT ||
               t == JV_UNDEFINED;
    if (!strcmp(name, "callable")) return t == JV_MACRO || t == JV_FUNC || t == JV_UNDEFINED;
    if (!strcmp(name, "odd")) return mod_is(r, v, jv_int(2), 1);
    if (!strcmp(name, "even")) return mod_is(r, v, jv_int(2), 0);
    if (!strcmp(name, "divisibleby")) return mod_is(r, v, need_arg(r, name, a), 0);
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

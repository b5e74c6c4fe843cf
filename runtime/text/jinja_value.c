/* Values and the Python semantics Jinja gives them: truthiness, equality (1 == 1.0 == True),
 * ordering, membership, length, and iteration. */
#include <math.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* A string value for a NUL-terminated string (static or in the arena). */
jv jv_cstr(const char *s) {
    return jv_str(s, strlen(s));
}

/* An empty list with room for cap items. */
jj_list *jj_list_new(jj_ctx *ctx, size_t cap) {
    jj_list *l = jj_alloc(ctx, sizeof(jj_list));
    if (cap) {
        l->items = jj_alloc(ctx, cap * sizeof(jv));
        l->cap = cap;
    }
    return l;
}

/* Appends to a list being built. */
void jj_list_push(jj_ctx *ctx, jj_list *l, jv v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        l->items = jj_grow(ctx, l->items, l->cap * sizeof(jv), cap * sizeof(jv));
        l->cap = cap;
    }
    l->items[l->n++] = v;
}

/* An empty dict with room for cap items. */
jj_dict *jj_dict_new(jj_ctx *ctx, size_t cap) {
    jj_dict *d = jj_alloc(ctx, sizeof(jj_dict));
    if (cap) {
        d->keys = jj_alloc(ctx, cap * sizeof(jv));
        d->vals = jj_alloc(ctx, cap * sizeof(jv));
        d->cap = cap;
    }
    return d;
}

/* The value under a string key (the common case, by bytes), or NULL. */
jv *jj_dict_get_str(const jj_dict *d, const char *key, size_t n) {
    for (size_t i = 0; i < d->n; i++) {
        const jv *k = &d->keys[i];
        if (k->type == JV_STR && k->u.s.n == n && memcmp(k->u.s.p, key, n) == 0) return &d->vals[i];
    }
    return NULL;
}

/* Keys compare as Python's dict does: by equality (so 1, 1.0 and True are one key). */
jv *jj_dict_get(jj_render *r, const jj_dict *d, jv key) {
    if (key.type == JV_STR) return jj_dict_get_str(d, key.u.s.p, key.u.s.n);
    for (size_t i = 0; i < d->n; i++)
        if (d->keys[i].type != JV_STR && jj_equal(r, d->keys[i], key)) return &d->vals[i];
    return NULL;
}

/* Sets key to val; an existing key keeps its place, a new one goes last (Python's order). */
void jj_dict_set(jj_render *r, jj_dict *d, jv key, jv val) {
    jj_ctx *ctx = &r->ctx;
    jv *slot = jj_dict_get(r, d, key);
    if (slot) {
        *slot = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        d->keys = jj_grow(ctx, d->keys, d->cap * sizeof(jv), cap * sizeof(jv));
        d->vals = jj_grow(ctx, d->vals, d->cap * sizeof(jv), cap * sizeof(jv));
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
}

/* JSON integers become ints and reals floats, as Python's json module reads them. Strings are
 * borrowed from the JSON, which outlives the render. */
jv jj_from_json(jj_render *r, const json_t *json, int depth) {
    jj_ctx *ctx = &r->ctx;
    if (depth > JJ_EVAL_DEPTH / 4) jj_fail_at(ctx, SIZE_MAX, "template variables nest too deeply");
    switch (json_typeof(json)) {
    case JSON_OBJECT: {
        jj_dict *d = jj_dict_new(ctx, json_object_size(json));
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)json, key, val) {
            jv k = jv_str(key, strlen(key));
            jv v = jj_from_json(r, val, depth + 1);
            if (d->n < d->cap) { /* JSON keys are unique: no lookup needed */
                d->keys[d->n] = k;
                d->vals[d->n++] = v;
            } else {
                jj_dict_set(r, d, k, v);
            }
        }
        return jv_dict_v(d);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(json);
        jj_list *l = jj_list_new(ctx, n);
        for (size_t i = 0; i < n; i++)
            l->items[l->n++] = jj_from_json(r, json_array_get(json, i), depth + 1);
        return jv_list_v(l, false);
    }
    case JSON_STRING:
        return jv_str(json_string_value(json), json_string_length(json));
    case JSON_INTEGER:
        return jv_int((int64_t)json_integer_value(json));
    case JSON_REAL:
        return jv_float(json_real_value(json));
    case JSON_TRUE:
        return jv_bool(true);
    case JSON_FALSE:
        return jv_bool(false);
    default:
        return jv_none();
    }
}

/* Python's name for a value's type, for error messages. */
const char *jj_type_name(jv v) {
    switch (v.type) {
    case JV_UNDEFINED:
        return "Undefined";
    case JV_NONE:
        return "NoneType";
    case JV_BOOL:
        return "bool";
    case JV_INT:
        return "int";
    case JV_FLOAT:
        return "float";
    case JV_STR:
        return "str";
    case JV_LIST:
        if (v.u.list->lazy) return "generator";
        return (v.flags & JV_FLAG_TUPLE) ? "tuple" : "list";
    case JV_DICT:
        return "dict";
    case JV_NAMESPACE:
        return "Namespace";
    case JV_MACRO:
        return "Macro";
    case JV_FUNC:
        return v.u.func->kind == JF_METHOD ? "builtin_function_or_method" : "function";
    case JV_LOOP:
        return "LoopContext";
    }
    return "object";
}

/* Python's truth: empty strings and containers, zero, None and undefined are false. */
bool jj_truthy(jv v) {
    switch (v.type) {
    case JV_UNDEFINED:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v.u.b;
    case JV_INT:
        return v.u.i != 0;
    case JV_FLOAT:
        return v.u.f != 0.0;
    case JV_STR:
        return v.u.s.n != 0;
    case JV_LIST:
        return v.u.list->lazy || v.u.list->n != 0;
    case JV_DICT:
        return v.u.dict->n != 0;
    default:
        return true;
    }
}

/* int, float or bool (a bool is an int in Python). */
bool jj_is_number(jv v) {
    return v.type == JV_INT || v.type == JV_FLOAT || v.type == JV_BOOL;
}

/* A number as double (0 for anything else). */
double jj_as_double(jv v) {
    return v.type == JV_FLOAT  ? v.u.f
           : v.type == JV_INT  ? (double)v.u.i
           : v.type == JV_BOOL ? v.u.b
                               : 0.0;
}

/* An int (or bool) argument, or an error naming what it was for. */
int64_t jj_as_int(jj_render *r, jv v, const char *what) {
    if (v.type == JV_INT) return v.u.i;
    if (v.type == JV_BOOL) return v.u.b;
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    jj_error(r, "%s must be an integer, not '%s'", what, jj_type_name(v));
}

/* int == float compares the exact values, as Python does (2**53 + 1 != 2.0**53). */
static int compare_int_double(int64_t i, double d) {
    if (isnan(d)) return 2;
    if (d >= 9223372036854775808.0) return -1;
    if (d < -9223372036854775808.0) return 1;
    double t = trunc(d);
    int64_t di = (int64_t)t;
    if (i != di) return i < di ? -1 : 1;
    return d > t ? -1 : d < t ? 1 : 0;
}

/* Numbers compared as Python does; 2 when unordered (NaN). */
static int compare_numbers(jv a, jv b) {
    if (a.type != JV_FLOAT && b.type != JV_FLOAT) {
        int64_t x = a.type == JV_BOOL ? a.u.b : a.u.i, y = b.type == JV_BOOL ? b.u.b : b.u.i;
        return x < y ? -1 : x > y;
    }
    if (a.type == JV_FLOAT && b.type == JV_FLOAT) {
        if (isnan(a.u.f) || isnan(b.u.f)) return 2;
        return a.u.f < b.u.f ? -1 : a.u.f > b.u.f;
    }
    if (a.type == JV_FLOAT) {
        int c = compare_int_double(b.type == JV_BOOL ? b.u.b : b.u.i, a.u.f);
        return c == 2 ? 2 : -c;
    }
    return compare_int_double(a.type == JV_BOOL ? a.u.b : a.u.i, b.u.f);
}

/* Byte order of two strings, which for UTF-8 is code point order, as Python compares str. */
static int compare_bytes(jv a, jv b) {
    size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
    int c = n ? memcmp(a.u.s.p, b.u.s.p, n) : 0;
    if (c) return c < 0 ? -1 : 1;
    return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
}

/* Python's ==: numbers by value across int, float and bool, containers item by item, a list
 * never equal to a tuple. */
bool jj_equal(jj_render *r, jv a, jv b) {
    if (jj_is_number(a) && jj_is_number(b)) return compare_numbers(a, b) == 0;
    if (a.type != b.type) return false;
    switch (a.type) {
    case JV_UNDEFINED:
    case JV_NONE:
        return true;
    case JV_STR:
        jj_charge(r, a.u.s.n);
        return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case JV_LIST: {
        if (a.u.list->lazy || b.u.list->lazy) return a.u.list == b.u.list;
        if ((a.flags & JV_FLAG_TUPLE) != (b.flags & JV_FLAG_TUPLE)) return false;
        if (a.u.list->n != b.u.list->n) return false;
        jj_enter(r);
        bool eq = true;
        for (size_t i = 0; i < a.u.list->n && eq; i++)
            eq = jj_equal(r, a.u.list->items[i], b.u.list->items[i]);
        jj_leave(r);
        return eq;
    }
    case JV_DICT: {
        if (a.u.dict->n != b.u.dict->n) return false;
        jj_enter(r);
        bool eq = true;
        for (size_t i = 0; i < a.u.dict->n && eq; i++) {
            jv *other = jj_dict_get(r, b.u.dict, a.u.dict->keys[i]);
            eq = other && jj_equal(r, a.u.dict->vals[i], *other);
        }
        jj_leave(r);
        return eq;
    }
    case JV_NAMESPACE:
        return a.u.dict == b.u.dict;
    case JV_MACRO:
        return a.u.macro == b.u.macro;
    case JV_FUNC:
        return a.u.func == b.u.func;
    case JV_LOOP:
        return a.u.loop == b.u.loop;
    default:
        return false;
    }
}

/* Python's ordering of two values for <, <=, >, >=, sort, min and max: numbers, strings and
 * same-kind sequences; anything else is the TypeError Python raises. */
int jj_compare(jj_render *r, jv a, jv b, const char *op) {
    if (a.type == JV_UNDEFINED) jj_undefined_fail(r, a);
    if (b.type == JV_UNDEFINED) jj_undefined_fail(r, b);
    if (jj_is_number(a) && jj_is_number(b)) return compare_numbers(a, b);
    if (a.type == JV_STR && b.type == JV_STR) {
        jj_charge(r, a.u.s.n);
        return compare_bytes(a, b); /* UTF-8 byte order is code point order */
    }
    if (a.type == JV_LIST && b.type == JV_LIST && !a.u.list->lazy && !b.u.list->lazy &&
        (a.flags & JV_FLAG_TUPLE) == (b.flags & JV_FLAG_TUPLE)) {
        jj_enter(r);
        const jj_list *x = a.u.list, *y = b.u.list;
        for (size_t i = 0; i < x->n && i < y->n; i++) {
            if (jj_equal(r, x->items[i], y->items[i])) continue;
            int c = jj_compare(r, x->items[i], y->items[i], op);
            jj_leave(r);
            return c;
        }
        jj_leave(r);
        return x->n < y->n ? -1 : x->n > y->n;
    }
    jj_error(r, "'%s' not supported between instances of '%s' and '%s'", op, jj_type_name(a),
             jj_type_name(b));
}

/* Whether needle occurs in haystack (the empty string occurs everywhere). */
static bool find_bytes(const char *h, size_t hn, const char *n, size_t nn) {
    if (nn == 0) return true;
    return hn >= nn && memmem(h, hn, n, nn) != NULL;
}

/* Python's `in`: substring, list membership by ==, dict key; undefined contains nothing. */
bool jj_contains(jj_render *r, jv container, jv item) {
    switch (container.type) {
    case JV_STR:
        if (item.type == JV_UNDEFINED) jj_undefined_fail(r, item);
        if (item.type != JV_STR)
            jj_error(r, "'in <string>' requires string as left operand, not %s",
                     jj_type_name(item));
        jj_charge(r, container.u.s.n);
        return find_bytes(container.u.s.p, container.u.s.n, item.u.s.p, item.u.s.n);
    case JV_LIST: {
        /* a generator is consumed up to the item found, as Python's `in` leaves it */
        jj_list *l = container.u.list;
        if (l->error) jj_error(r, "%s", l->error);
        jj_charge(r, l->n);
        for (size_t i = l->lazy ? l->taken : 0; i < l->n; i++)
            if (jj_equal(r, l->items[i], item)) {
                if (l->lazy) l->taken = i + 1;
                return true;
            }
        if (l->lazy) l->taken = l->n;
        return false;
    }
    case JV_DICT:
        if ((item.type == JV_LIST && !(item.flags & JV_FLAG_TUPLE)) || item.type == JV_DICT)
            jj_error(r, "unhashable type: '%s'", jj_type_name(item));
        jj_charge(r, container.u.dict->n);
        return jj_dict_get(r, container.u.dict, item) != NULL;
    case JV_UNDEFINED:
        if (container.flags & JV_FLAG_UNSAFE) jj_undefined_fail(r, container);
        return false;
    default:
        jj_error(r, "argument of type '%s' is not iterable", jj_type_name(container));
    }
}

/* What iterating a value visits: a list's items, a dict's keys, a string's characters,
 * nothing for undefined; other types are not iterable. */
const jj_list *jj_iterate(jj_render *r, jv v) {
    switch (v.type) {
    case JV_LIST: {
        jj_list *l = v.u.list;
        if (!l->lazy) return l;
        if (l->error) jj_error(r, "%s", l->error);
        /* what is left of a generator, which is then used up */
        jj_list *rest = jj_list_new(&r->ctx, 0);
        rest->items = l->items ? l->items + l->taken : NULL;
        rest->n = rest->cap = l->n - l->taken;
        l->taken = l->n;
        return rest;
    }
    case JV_DICT: {
        jj_list *l = jj_list_new(&r->ctx, v.u.dict->n);
        jj_copy(l->items, v.u.dict->keys, v.u.dict->n * sizeof(jv));
        l->n = v.u.dict->n;
        return l;
    }
    case JV_STR: {
        size_t n_cp;
        size_t *off = jj_utf8_offsets(&r->ctx, v.u.s.p, v.u.s.n, &n_cp);
        jj_list *l = jj_list_new(&r->ctx, n_cp);
        for (size_t i = 0; i < n_cp; i++)
            l->items[i] = jv_str(v.u.s.p + off[i], off[i + 1] - off[i]);
        l->n = n_cp;
        return l;
    }
    case JV_UNDEFINED: {
        if (v.flags & JV_FLAG_UNSAFE) jj_undefined_fail(r, v);
        static jj_list empty;
        return &empty;
    }
    default:
        jj_error(r, "'%s' object is not iterable", jj_type_name(v));
    }
}

/* len(): characters of a string, items of a list or dict, 0 for undefined. */
int64_t jj_length(jj_render *r, jv v) {
    switch (v.type) {
    case JV_STR:
        jj_charge(r, v.u.s.n);
        return (int64_t)jj_utf8_len(v.u.s.p, v.u.s.n);
    case JV_LIST:
        if (v.u.list->lazy) break;
        return (int64_t)v.u.list->n;
    case JV_DICT:
        return (int64_t)v.u.dict->n;
    case JV_UNDEFINED:
        return 0;
    default:
        break;
    }
    jj_error(r, "object of type '%s' has no len()", jj_type_name(v));
}

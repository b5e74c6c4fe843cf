/* Attribute and item access with Jinja's rules: `obj.name` tries a Python attribute (a method)
 * before the item, `obj[key]` the item before the attribute; what is missing is an undefined value
 * carrying Jinja's message for when it is used; slices follow Python's index rules and count
 * code points in strings. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

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
        if (obj.u.list->lazy) return "generator object";
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

/* An undefined value for `obj.name` that was not there; using it raises "'dict object' has
 * no attribute 'name'", Jinja's wording. */
jv jj_undefined_attr(jj_render *r, jv obj, const char *name, size_t n) {
    jj_buf b = {0};
    jj_repr_to(r, &b, jv_cstr(object_type(obj)));
    jj_buf_puts(&r->ctx, &b, " has no attribute ");
    jj_repr_to(r, &b, jv_str(name, n));
    return jv_undefined_msg(b.p);
}

/* An undefined value for `obj[key]` with a non-string key ("list object has no element 5"). */
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

/* `obj.method` without a call: a value that calls the method on obj when called later. */
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
        if (obj.u.list->lazy) break; /* a generator cannot be indexed: undefined */
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

/* obj[start:stop:step] for strings (by code point), lists and tuples; anything else gives
 * undefined, as Jinja's getitem turns the TypeError into one. */
jv jj_slice(jj_render *r, jv obj, jv start_v, jv stop_v, jv step_v) {
    if (obj.type == JV_UNDEFINED) jj_undefined_fail(r, obj);
    /* Jinja compiles slices to plain Python subscripts, so a wrong type is an error here rather
     * than an undefined value */
    if (obj.type == JV_DICT) jj_error(r, "unhashable type: 'slice'");
    if ((obj.type != JV_STR && obj.type != JV_LIST) || (obj.type == JV_LIST && obj.u.list->lazy))
        jj_error(r, "'%s' object is not subscriptable", jj_type_name(obj));
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

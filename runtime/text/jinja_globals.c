/* The globals a chat template can call: Jinja's range, namespace and dict, and the two that
 * transformers adds, raise_exception (the template's way to reject a conversation) and
 * strftime_now (today's date for system prompts). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "runtime/text/jinja_internal.h"

static jj_func globals[] = {
    {JF_RANGE, {0}, "range"},
    {JF_NAMESPACE, {0}, "namespace"},
    {JF_DICT, {0}, "dict"},
    {JF_RAISE_EXCEPTION, {0}, "raise_exception"},
    {JF_STRFTIME_NOW, {0}, "strftime_now"},
};

/* The global of that name, or undefined: range, namespace, dict, raise_exception, strftime_now. */
jv jj_global(jj_render *r, const char *name) {
    (void)r;
    for (size_t i = 0; i < sizeof(globals) / sizeof(*globals); i++)
        if (!strcmp(globals[i].name, name)) {
            jv v = {.type = JV_FUNC};
            v.u.func = &globals[i];
            return v;
        }
    return jv_undefined_msg(NULL);
}

/* range() as Jinja's sandbox allows it: at most JJ_MAX_RANGE items. */
static jv call_range(jj_render *r, const jj_args *a) {
    jj_check_args(r, a, "range", 3, NULL);
    if (a->n == 0) jj_error(r, "range expected at least 1 argument, got 0");
    int64_t start = 0, stop, step = 1;
    if (a->n == 1) {
        stop = jj_as_int(r, a->pos[0], "range() argument");
    } else {
        start = jj_as_int(r, a->pos[0], "range() argument");
        stop = jj_as_int(r, a->pos[1], "range() argument");
        if (a->n == 3) step = jj_as_int(r, a->pos[2], "range() argument");
    }
    if (step == 0) jj_error(r, "range() arg 3 must not be zero");
    /* the count without overflow: ceil((stop - start) / step) when positive */
    __int128 span = step > 0 ? (__int128)stop - start : (__int128)start - stop;
    __int128 st = step > 0 ? step : -(__int128)step;
    __int128 count = span <= 0 ? 0 : (span + st - 1) / st;
    if (count > JJ_MAX_RANGE)
        jj_error(r, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).",
                 JJ_MAX_RANGE);
    jj_list *l = jj_list_new(&r->ctx, (size_t)count);
    for (int64_t i = 0; i < (int64_t)count; i++)
        l->items[i] = jv_int(start + i * step);
    l->n = (size_t)count;
    return jv_list_v(l, false);
}

/* dict(mapping_or_pairs, **kwargs), which namespace() takes too. */
static jj_dict *dict_from_args(jj_render *r, const jj_args *a, const char *fname) {
    if (a->n > 1) jj_error(r, "%s() expected at most 1 positional argument, got %zu", fname, a->n);
    jj_dict *d = jj_dict_new(&r->ctx, 0);
    if (a->n == 1) {
        jv src = a->pos[0];
        if (src.type == JV_DICT || src.type == JV_NAMESPACE) {
            for (size_t i = 0; i < src.u.dict->n; i++)
                jj_dict_set(r, d, src.u.dict->keys[i], src.u.dict->vals[i]);
        } else {
            const jj_list *pairs = jj_iterate(r, src);
            for (size_t i = 0; i < pairs->n; i++) {
                jv pair = pairs->items[i];
                const jj_list *kv = jj_iterate(r, pair);
                if (kv->n != 2)
                    jj_error(
                        r, "dictionary update sequence element #%zu has length %zu; 2 is required",
                        i, kv->n);
                jj_dict_set(r, d, kv->items[0], kv->items[1]);
            }
        }
    }
    for (size_t k = 0; k < a->nk; k++)
        jj_dict_set(r, d, jv_cstr(a->knames[k]), a->kvals[k]);
    return d;
}

/* strftime_now(format): the local time now, formatted by strftime as Python's is. */
static jv call_strftime_now(jj_render *r, const jj_args *a) {
    static const char *const names[] = {"format", NULL};
    jj_check_args(r, a, "strftime_now", 1, names);
    jv fmt = jj_arg(a, 0, "format", jv_undefined_msg("strftime_now() missing argument 'format'"));
    if (fmt.type == JV_UNDEFINED) jj_undefined_fail(r, fmt);
    if (fmt.type != JV_STR)
        jj_error(r, "strftime_now() format must be a string, not '%s'", jj_type_name(fmt));
    if (fmt.u.s.n > 1024) jj_error(r, "strftime_now() format is too long");
    if (memchr(fmt.u.s.p, 0, fmt.u.s.n)) jj_error(r, "embedded null character");
    if (fmt.u.s.n == 0) return jv_str("", 0);
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char *cfmt = jj_strndup(&r->ctx, fmt.u.s.p, fmt.u.s.n);
    /* strftime returns 0 both for "no room" and for an empty result, so the format gets a
     * marker character that makes every successful result non-empty. */
    jj_buf marked = {0};
    jj_buf_puts(&r->ctx, &marked, cfmt);
    jj_buf_putc(&r->ctx, &marked, 'x');
    for (size_t size = 256; size <= ((size_t)1 << 20); size *= 4) {
        char *out = jj_alloc(&r->ctx, size);
        size_t n = strftime(out, size, marked.p, &tm);
        if (n > 0) return jv_str(out, n - 1);
    }
    jj_error(r, "strftime_now() result is too long");
}

/* Calls a global function. */
jv jj_call_global(jj_render *r, jj_func_kind kind, const jj_args *a) {
    switch (kind) {
    case JF_RANGE:
        return call_range(r, a);
    case JF_NAMESPACE: {
        jv v = {.type = JV_NAMESPACE};
        v.u.dict = dict_from_args(r, a, "namespace");
        return v;
    }
    case JF_DICT:
        return jv_dict_v(dict_from_args(r, a, "dict"));
    case JF_RAISE_EXCEPTION: {
        jv msg = jj_arg(a, 0, "message", jv_str("", 0));
        jv text = jj_to_str(r, msg);
        jj_error(r, "%.*s", (int)text.u.s.n, text.u.s.p);
    }
    case JF_STRFTIME_NOW:
        return call_strftime_now(r, a);
    case JF_METHOD:
        break;
    }
    jj_error(r, "internal error: unknown global");
}

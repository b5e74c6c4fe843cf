/* Jinja's filters on sequences: sort, unique, map, select/reject(attr), join, first/last, list,
 * reverse, items, dictsort, min/max/sum, batch and length. Where Jinja returns a generator (map,
 * select, reject, unique, batch, items, reverse) these return one too (jj_list.lazy): true even
 * when empty, without a length, used up by iterating. Sorting and uniqueness ignore case by
 * default, as in Jinja. */
#include <string.h>

#include "runtime/text/jinja_filters.h"
#include "runtime/text/jinja_internal.h"

/* item.a.b (or item[0] for a number), each step by Jinja's getitem. */
static jv attr_path(jj_render *r, jv item, jv attribute) {
    if (attribute.type == JV_INT) return jj_getitem(r, item, attribute);
    if (attribute.type != JV_STR) jj_error(r, "attribute must be a string or an integer");
    const char *p = attribute.u.s.p, *end = p + attribute.u.s.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot) dot = end;
        jv part = jv_str(p, (size_t)(dot - p));
        bool digits = dot > p;
        int64_t idx = 0;
        for (const char *c = p; c < dot; c++) {
            if (*c < '0' || *c > '9')
                digits = false;
            else if (idx < INT64_MAX / 10)
                idx = idx * 10 + (*c - '0');
        }
        if (item.type == JV_UNDEFINED) jj_undefined_fail(r, item);
        item = jj_getitem(r, item, digits ? jv_int(idx) : part);
        p = dot + 1;
    }
    return item;
}

/* A generator holding `l` (see jj_list.lazy). */
static jv generator(jj_list *l) {
    l->lazy = true;
    return jv_list_v(l, false);
}

/* The items a generator filter walks. Python builds the generator without looking at its input,
 * so input that cannot be iterated gives a generator that fails only when it is used (*bad). */
static const jj_list *generator_source(jj_render *r, jv v, jv *bad) {
    *bad = jv_none();
    if (v.type == JV_LIST && v.u.list->error) { /* a failing generator stays unused */
        *bad = v;
        return NULL;
    }
    if (v.type == JV_STR || v.type == JV_LIST || v.type == JV_DICT || v.type == JV_UNDEFINED)
        return jj_iterate(r, v);
    jj_list *failing = jj_list_new(&r->ctx, 0);
    jj_buf b = {0};
    jj_buf_printf(&r->ctx, &b, "'%s' object is not iterable", jj_type_name(v));
    failing->error = b.p;
    *bad = generator(failing);
    return NULL;
}

/* A sort or uniqueness key ignoring case unless case_sensitive. */
static jv fold_case(jj_render *r, jv v, bool case_sensitive) {
    if (case_sensitive || v.type != JV_STR) return v;
    return jj_map_case(r, v, jj_to_lower, jj_to_lower);
}

/* The sort key of an item: its attribute(s) (comma-separated for several) or itself, lower-cased
 * unless case_sensitive. */
static jv sort_key(jj_render *r, jv item, jv attribute, bool case_sensitive) {
    if (attribute.type == JV_NONE || attribute.type == JV_UNDEFINED)
        return fold_case(r, item, case_sensitive);
    if (attribute.type == JV_STR && memchr(attribute.u.s.p, ',', attribute.u.s.n)) {
        jj_list *parts = jj_list_new(&r->ctx, 0);
        const char *p = attribute.u.s.p, *end = p + attribute.u.s.n;
        while (p <= end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            if (!comma) comma = end;
            jv v = attr_path(r, item, jv_str(p, (size_t)(comma - p)));
            jj_list_push(&r->ctx, parts, fold_case(r, v, case_sensitive));
            p = comma + 1;
        }
        return jv_list_v(parts, false);
    }
    return fold_case(r, attr_path(r, item, attribute), case_sensitive);
}

/* The items a filter walks (see jj_iterate), as a fresh list it may reorder. */
static jj_list *copy_items(jj_render *r, jv v) {
    const jj_list *src = jj_iterate(r, v);
    jj_list *l = jj_list_new(&r->ctx, src->n);
    jj_copy(l->items, src->items, src->n * sizeof(jv));
    l->n = src->n;
    jj_charge(r, src->n);
    return l;
}

/* A stable merge sort of items by keys using only `<`, as Python's sorted does; reverse keeps
 * equal items in their order, as sorted(reverse=True) does. */
static void merge_sort(jj_render *r, jv *items, jv *keys, size_t n, bool reverse, jv *tmp_i,
                       jv *tmp_k) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(r, items, keys, h, reverse, tmp_i, tmp_k);
    merge_sort(r, items + h, keys + h, n - h, reverse, tmp_i, tmp_k);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        jj_charge(r, 1);
        bool take_right = reverse ? jj_compare(r, keys[i], keys[j], "<") == -1
                                  : jj_compare(r, keys[j], keys[i], "<") == -1;
        if (take_right) {
            tmp_i[k] = items[j];
            tmp_k[k++] = keys[j++];
        } else {
            tmp_i[k] = items[i];
            tmp_k[k++] = keys[i++];
        }
    }
    while (i < h) {
        tmp_i[k] = items[i];
        tmp_k[k++] = keys[i++];
    }
    while (j < n) {
        tmp_i[k] = items[j];
        tmp_k[k++] = keys[j++];
    }
    jj_copy(items, tmp_i, n * sizeof(jv));
    jj_copy(keys, tmp_k, n * sizeof(jv));
}

/* Sorts l in place by keys (parallel arrays), stably. */
static jj_list *sorted(jj_render *r, jj_list *l, jv *keys, bool reverse) {
    jv *tmp_i = jj_alloc(&r->ctx, (l->n + 1) * sizeof(jv));
    jv *tmp_k = jj_alloc(&r->ctx, (l->n + 1) * sizeof(jv));
    jj_enter(r);
    merge_sort(r, l->items, keys, l->n, reverse, tmp_i, tmp_k);
    jj_leave(r);
    return l;
}

/* sort(reverse=False, case_sensitive=False, attribute=None). */
jv jj_f_sort(jj_render *r, jv v, const jj_args *a) {
    static const char *const names[] = {"reverse", "case_sensitive", "attribute", NULL};
    jj_check_args(r, a, "sort", 3, names);
    bool reverse = jj_truthy(jj_arg(a, 0, "reverse", jv_bool(false)));
    bool cs = jj_truthy(jj_arg(a, 1, "case_sensitive", jv_bool(false)));
    jv attribute = jj_arg(a, 2, "attribute", jv_none());
    jj_list *l = copy_items(r, v);
    jv *keys = jj_alloc(&r->ctx, (l->n + 1) * sizeof(jv));
    for (size_t i = 0; i < l->n; i++)
        keys[i] = sort_key(r, l->items[i], attribute, cs);
    return jv_list_v(sorted(r, l, keys, reverse), false);
}

/* dictsort(case_sensitive=False, by='key', reverse=False): a dict's (key, value) pairs sorted. */
jv jj_f_dictsort(jj_render *r, jv v, const jj_args *a) {
    static const char *const names[] = {"case_sensitive", "by", "reverse", NULL};
    jj_check_args(r, a, "dictsort", 3, names);
    bool cs = jj_truthy(jj_arg(a, 0, "case_sensitive", jv_bool(false)));
    jv by = jj_arg(a, 1, "by", jv_cstr("key"));
    bool reverse = jj_truthy(jj_arg(a, 2, "reverse", jv_bool(false)));
    int pos;
    if (by.type == JV_STR && by.u.s.n == 3 && !memcmp(by.u.s.p, "key", 3))
        pos = 0;
    else if (by.type == JV_STR && by.u.s.n == 5 && !memcmp(by.u.s.p, "value", 5))
        pos = 1;
    else
        jj_error(r, "You can only sort by either \"key\" or \"value\"");
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v); /* value.items() of undefined */
    if (v.type != JV_DICT) jj_error(r, "'%s' object has no attribute 'items'", jj_type_name(v));
    jj_args none = {0};
    jj_list *l = jj_call_method(r, v, "items", &none).u.list;
    jv *keys = jj_alloc(&r->ctx, (l->n + 1) * sizeof(jv));
    for (size_t i = 0; i < l->n; i++)
        keys[i] = fold_case(r, l->items[i].u.list->items[pos], cs);
    return jv_list_v(sorted(r, l, keys, reverse), false);
}

/* unique(case_sensitive=False, attribute=None): first occurrences, in order. */
jv jj_f_unique(jj_render *r, jv v, const jj_args *a) {
    static const char *const names[] = {"case_sensitive", "attribute", NULL};
    jj_check_args(r, a, "unique", 2, names);
    bool cs = jj_truthy(jj_arg(a, 0, "case_sensitive", jv_bool(false)));
    jv attribute = jj_arg(a, 1, "attribute", jv_none());
    jv bad;
    const jj_list *src = generator_source(r, v, &bad);
    if (!src) return bad;
    jj_list *out = jj_list_new(&r->ctx, 0), *seen = jj_list_new(&r->ctx, 0);
    for (size_t i = 0; i < src->n; i++) {
        jv key = sort_key(r, src->items[i], attribute, cs);
        bool dup = false;
        jj_charge(r, seen->n);
        for (size_t k = 0; k < seen->n && !dup; k++)
            dup = jj_equal(r, seen->items[k], key);
        if (dup) continue;
        jj_list_push(&r->ctx, seen, key);
        jj_list_push(&r->ctx, out, src->items[i]);
    }
    return generator(out);
}

/* map(attribute=..., default=...) or map('filter', args...): each item transformed. */
jv jj_f_map(jj_render *r, jv v, const jj_args *a) {
    jv bad;
    const jj_list *src = generator_source(r, v, &bad);
    if (!src) return bad;
    jj_list *out = jj_list_new(&r->ctx, src->n);
    jj_charge(r, src->n);
    if (a->n == 0 && jj_has_arg(a, SIZE_MAX, "attribute")) {
        static const char *const names[] = {"attribute", "default", NULL};
        jj_check_args(r, a, "map", 0, names);
        jv attribute = jj_arg(a, SIZE_MAX, "attribute", jv_none());
        jv dflt = jj_arg(a, SIZE_MAX, "default", jv_undefined_msg(NULL));
        bool has_default = jj_has_arg(a, SIZE_MAX, "default");
        for (size_t i = 0; i < src->n; i++) {
            jv x = attr_path(r, src->items[i], attribute);
            out->items[i] = (x.type == JV_UNDEFINED && has_default) ? dflt : x;
        }
    } else {
        if (a->n == 0) jj_error(r, "map requires a filter argument");
        jv name = a->pos[0];
        if (name.type != JV_STR) jj_error(r, "map filter name must be a string");
        const char *fname = jj_strndup(&r->ctx, name.u.s.p, name.u.s.n);
        jj_args rest = *a;
        rest.n--;
        rest.pos++;
        for (size_t i = 0; i < src->n; i++)
            out->items[i] = jj_apply_filter(r, fname, src->items[i], &rest);
    }
    out->n = src->n;
    return generator(out);
}

/* select/reject(test, args...) and selectattr/rejectattr(attr, test, args...); without a test
 * the value's truth decides. */
static jv select_common(jj_render *r, jv v, const jj_args *a, bool by_attr, bool keep) {
    size_t off = by_attr ? 1 : 0;
    if (by_attr && a->n < 1) jj_error(r, "Missing parameter for attribute name");
    jv attribute = by_attr ? a->pos[0] : jv_none();
    const char *test = NULL;
    jj_args rest = *a;
    if (a->n > off) {
        jv name = a->pos[off];
        if (name.type != JV_STR) jj_error(r, "test name must be a string");
        test = jj_strndup(&r->ctx, name.u.s.p, name.u.s.n);
        rest.n = a->n - off - 1;
        rest.pos = a->pos + off + 1;
    } else {
        rest.n = 0;
    }
    jv bad;
    const jj_list *src = generator_source(r, v, &bad);
    if (!src) return bad;
    jj_list *out = jj_list_new(&r->ctx, 0);
    jj_charge(r, src->n);
    for (size_t i = 0; i < src->n; i++) {
        jv item = src->items[i];
        jv x = by_attr ? attr_path(r, item, attribute) : item;
        bool ok = test ? jj_apply_test(r, test, x, &rest) : jj_truthy(x);
        if (ok == keep) jj_list_push(&r->ctx, out, item);
    }
    return generator(out);
}

/* select(test, args...): the items that pass. */
jv jj_f_select(jj_render *r, jv v, const jj_args *a) {
    return select_common(r, v, a, false, true);
}

/* reject(test, args...): the items that fail. */
jv jj_f_reject(jj_render *r, jv v, const jj_args *a) {
    return select_common(r, v, a, false, false);
}

/* selectattr(attr, test, args...): the items whose attribute passes. */
jv jj_f_selectattr(jj_render *r, jv v, const jj_args *a) {
    return select_common(r, v, a, true, true);
}

/* rejectattr(attr, test, args...): the items whose attribute fails. */
jv jj_f_rejectattr(jj_render *r, jv v, const jj_args *a) {
    return select_common(r, v, a, true, false);
}

/* join(d='', attribute=None): str() of each item joined. */
jv jj_f_join(jj_render *r, jv v, const jj_args *a) {
    static const char *const names[] = {"d", "attribute", NULL};
    jj_check_args(r, a, "join", 2, names);
    jv sep = jj_soft_str(r, jj_arg(a, 0, "d", jv_str("", 0)));
    jv attribute = jj_arg(a, 1, "attribute", jv_none());
    const jj_list *src = jj_iterate(r, v);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    for (size_t i = 0; i < src->n; i++) {
        jv item = src->items[i];
        if (attribute.type != JV_NONE) item = attr_path(r, item, attribute);
        if (i) jj_buf_put(&r->ctx, &b, sep.u.s.p, sep.u.s.n);
        if (item.type == JV_UNDEFINED && (item.flags & JV_FLAG_UNSAFE)) jj_undefined_fail(r, item);
        jj_str_to(r, &b, item);
    }
    jj_charge(r, b.n);
    return jv_str(b.p, b.n);
}

/* first: the first item, or undefined for an empty sequence. */
jv jj_f_first(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    if (v.type == JV_LIST && v.u.list->lazy) { /* next(): takes one item */
        jj_list *g = v.u.list;
        if (g->error) jj_error(r, "%s", g->error);
        if (g->taken < g->n) return g->items[g->taken++];
        return jv_undefined_msg("No first item, sequence was empty.");
    }
    const jj_list *l = jj_iterate(r, v);
    return l->n ? l->items[0] : jv_undefined_msg("No first item, sequence was empty.");
}

/* last: the last item, or undefined for an empty sequence. */
jv jj_f_last(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    if (v.type == JV_LIST && v.u.list->lazy) jj_error(r, "'generator' object is not reversible");
    const jj_list *l = jj_iterate(r, v);
    return l->n ? l->items[l->n - 1] : jv_undefined_msg("No last item, sequence was empty.");
}

/* length, count: len(value) (0 for undefined). */
jv jj_f_length(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jv_int(jj_length(r, v));
}

/* list: the items as a list (a string's characters, a dict's keys). */
jv jj_f_list(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jv_list_v(copy_items(r, v), false);
}

/* reverse: a reversed string, or the items in reverse order. */
jv jj_f_reverse(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    jj_list *l = copy_items(r, v);
    for (size_t i = 0, j = l->n ? l->n - 1 : 0; i < j; i++, j--) {
        jv t = l->items[i];
        l->items[i] = l->items[j];
        l->items[j] = t;
    }
    /* reversed() of a list or dict is an iterator; of a generator, Jinja falls back to a list */
    if (v.type == JV_LIST && v.u.list->lazy) return jv_list_v(l, false);
    if (v.type != JV_STR) return generator(l);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    for (size_t i = 0; i < l->n; i++)
        jj_buf_put(&r->ctx, &b, l->items[i].u.s.p, l->items[i].u.s.n);
    return jv_str(b.p, b.n);
}

/* items: a dict's (key, value) pairs; none for undefined. */
jv jj_f_items(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    if (v.type == JV_UNDEFINED) return generator(jj_list_new(&r->ctx, 0));
    if (v.type != JV_DICT) { /* the error comes when the generator is used */
        jj_list *failing = jj_list_new(&r->ctx, 0);
        failing->error = "Can only get item pairs from a mapping.";
        return generator(failing);
    }
    jj_args none = {0};
    return generator(jj_call_method(r, v, "items", &none).u.list);
}

/* The smallest or largest item (by attribute, ignoring case unless asked): Python's min and
 * max, which keep the first of equal items. */
static jv min_max(jj_render *r, jv v, const jj_args *a, bool want_max) {
    static const char *const names[] = {"case_sensitive", "attribute", NULL};
    jj_check_args(r, a, want_max ? "max" : "min", 2, names);
    bool cs = jj_truthy(jj_arg(a, 0, "case_sensitive", jv_bool(false)));
    jv attribute = jj_arg(a, 1, "attribute", jv_none());
    const jj_list *src = jj_iterate(r, v);
    if (!src->n) return jv_undefined_msg("No aggregated item, sequence was empty.");
    jj_charge(r, src->n);
    size_t best = 0;
    jv best_key = sort_key(r, src->items[0], attribute, cs);
    for (size_t i = 1; i < src->n; i++) {
        jv key = sort_key(r, src->items[i], attribute, cs);
        bool better = want_max ? jj_compare(r, key, best_key, ">") == 1
                               : jj_compare(r, key, best_key, "<") == -1;
        if (better) {
            best = i;
            best_key = key;
        }
    }
    return src->items[best];
}

/* min(case_sensitive=False, attribute=None). */
jv jj_f_min(jj_render *r, jv v, const jj_args *a) {
    return min_max(r, v, a, false);
}

/* max(case_sensitive=False, attribute=None). */
jv jj_f_max(jj_render *r, jv v, const jj_args *a) {
    return min_max(r, v, a, true);
}

/* sum(attribute=None, start=0): start + each item, with Python's +. */
jv jj_f_sum(jj_render *r, jv v, const jj_args *a) {
    static const char *const names[] = {"attribute", "start", NULL};
    jj_check_args(r, a, "sum", 2, names);
    jv attribute = jj_arg(a, 0, "attribute", jv_none());
    jv total = jj_arg(a, 1, "start", jv_int(0));
    const jj_list *src = jj_iterate(r, v);
    jj_charge(r, src->n);
    for (size_t i = 0; i < src->n; i++) {
        jv x = attribute.type == JV_NONE ? src->items[i] : attr_path(r, src->items[i], attribute);
        total = jj_arith(r, OP_ADD, total, x);
    }
    return total;
}

/* batch(linecount, fill_with=None): the items in lists of linecount, the last one padded. */
jv jj_f_batch(jj_render *r, jv v, const jj_args *a) {
    int64_t count = jj_as_int(r, jj_arg(a, 0, "linecount", jv_int(0)), "linecount");
    if (count <= 0) jj_error(r, "batch size must be positive");
    bool fill = jj_has_arg(a, 1, "fill_with");
    jv fill_with = jj_arg(a, 1, "fill_with", jv_none());
    jv bad;
    const jj_list *src = generator_source(r, v, &bad);
    if (!src) return bad;
    jj_list *out = jj_list_new(&r->ctx, 0), *cur = NULL;
    jj_charge(r, src->n);
    for (size_t i = 0; i < src->n; i++) {
        if (!cur || cur->n == (size_t)count) {
            cur = jj_list_new(&r->ctx, 0);
            jj_list_push(&r->ctx, out, jv_list_v(cur, false));
        }
        jj_list_push(&r->ctx, cur, src->items[i]);
    }
    if (cur && fill && fill_with.type != JV_NONE)
        while (cur->n < (size_t)count)
            jj_list_push(&r->ctx, cur, fill_with);
    return generator(out);
}

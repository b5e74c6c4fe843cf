/* Which methods values have, and the dict (items, keys, values, get), list (index, count) and
 * loop (cycle) ones; the str methods are in jinja_str_methods.c. Methods that would modify a list
 * or dict are refused, as transformers' ImmutableSandboxedEnvironment refuses them. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

static const char *const str_methods[] = {
    "strip",    "lstrip",  "rstrip",  "split",        "rsplit",       "splitlines", "startswith",
    "endswith", "replace", "upper",   "lower",        "title",        "capitalize", "swapcase",
    "find",     "rfind",   "index",   "rindex",       "count",        "join",       "isdigit",
    "isalpha",  "isalnum", "isspace", "islower",      "isupper",      "center",     "ljust",
    "rjust",    "zfill",   "format",  "removeprefix", "removesuffix", "casefold",   NULL};
static const char *const dict_methods[] = {"items", "keys", "values", "get", "copy", NULL};
static const char *const dict_unsafe[] = {"pop", "popitem", "setdefault", "update", "clear", NULL};
static const char *const list_methods[] = {"index", "count", "copy", NULL};
static const char *const list_unsafe[] = {"append",  "extend", "insert", "pop", "remove",
                                          "reverse", "sort",   "clear",  NULL};

/* Whether name is in a NULL-ended list of names. */
static bool in_list(const char *const *list, const char *name) {
    for (size_t i = 0; list[i]; i++)
        if (!strcmp(list[i], name)) return true;
    return false;
}

/* Whether `self.name` is a method; *unsafe says the sandbox refuses it. */
bool jj_has_method(jv self, const char *name, bool *unsafe) {
    *unsafe = false;
    switch (self.type) {
    case JV_STR:
        return in_list(str_methods, name);
    case JV_DICT:
        if (in_list(dict_unsafe, name)) return *unsafe = true;
        return in_list(dict_methods, name);
    case JV_LIST:
        if (self.u.list->lazy) return false;
        if (in_list(list_unsafe, name) && !(self.flags & JV_FLAG_TUPLE)) return *unsafe = true;
        return in_list(list_methods, name);
    case JV_LOOP:
        return !strcmp(name, "cycle");
    default:
        return false;
    }
}

/* dict.items/keys/values/get/copy. keys() and the others give lists, which iterate and print
 * like Python's views in every way templates use them except their repr. */
static jv dict_method(jj_render *r, jv self, const char *m, const jj_args *a) {
    const jj_dict *d = self.u.dict;
    jj_charge(r, d->n);
    if (!strcmp(m, "items")) {
        jj_list *l = jj_list_new(&r->ctx, d->n);
        for (size_t i = 0; i < d->n; i++) {
            jj_list *pair = jj_list_new(&r->ctx, 2);
            pair->items[0] = d->keys[i];
            pair->items[1] = d->vals[i];
            pair->n = 2;
            l->items[i] = jv_list_v(pair, true);
        }
        l->n = d->n;
        return jv_list_v(l, false);
    }
    if (!strcmp(m, "keys") || !strcmp(m, "values")) {
        jj_list *l = jj_list_new(&r->ctx, d->n);
        jj_copy(l->items, m[0] == 'k' ? d->keys : d->vals, d->n * sizeof(jv));
        l->n = d->n;
        return jv_list_v(l, false);
    }
    if (!strcmp(m, "get")) {
        static const char *const names[] = {"key", "default", NULL};
        (void)names;
        if (a->n < 1) jj_error(r, "get expected at least 1 argument, got 0");
        if (a->n > 2 || a->nk) jj_error(r, "get() takes at most 2 arguments");
        jv key = a->pos[0];
        if ((key.type == JV_LIST && !(key.flags & JV_FLAG_TUPLE)) || key.type == JV_DICT)
            jj_error(r, "unhashable type: '%s'", jj_type_name(key));
        jv *v = jj_dict_get(r, d, key);
        return v ? *v : (a->n > 1 ? a->pos[1] : jv_none());
    }
    if (!strcmp(m, "copy")) {
        jj_dict *c = jj_dict_new(&r->ctx, d->n);
        jj_copy(c->keys, d->keys, d->n * sizeof(jv));
        jj_copy(c->vals, d->vals, d->n * sizeof(jv));
        c->n = d->n;
        return jv_dict_v(c);
    }
    jj_error(r, "'dict' object has no attribute '%s'", m);
}

/* list.index/count/copy. */
static jv list_method(jj_render *r, jv self, const char *m, const jj_args *a) {
    const jj_list *l = self.u.list;
    jj_charge(r, l->n);
    if (!strcmp(m, "index") || !strcmp(m, "count")) {
        if (a->n < 1) jj_error(r, "%s() takes at least 1 argument (0 given)", m);
        int64_t count = 0;
        for (size_t i = 0; i < l->n; i++)
            if (jj_equal(r, l->items[i], a->pos[0])) {
                if (m[0] == 'i') return jv_int((int64_t)i);
                count++;
            }
        if (m[0] == 'c') return jv_int(count);
        jj_buf b = {0};
        jj_repr_to(r, &b, a->pos[0]);
        jj_error(r, "%s is not in list", b.p);
    }
    if (!strcmp(m, "copy")) {
        jj_list *c = jj_list_new(&r->ctx, l->n);
        jj_copy(c->items, l->items, l->n * sizeof(jv));
        c->n = l->n;
        return jv_list_v(c, self.flags & JV_FLAG_TUPLE);
    }
    jj_error(r, "'%s' object has no attribute '%s'", jj_type_name(self), m);
}

/* Calls method `name` of self (one jj_has_method accepted). */
jv jj_call_method(jj_render *r, jv self, const char *name, const jj_args *args) {
    switch (self.type) {
    case JV_STR:
        return jj_str_method(r, self, name, args);
    case JV_DICT:
        return dict_method(r, self, name, args);
    case JV_LIST:
        return list_method(r, self, name, args);
    case JV_LOOP:
        if (!args->n) jj_error(r, "no items for cycling given");
        return args->pos[self.u.loop->index0 % args->n];
    default:
        jj_error(r, "'%s' object has no attribute '%s'", jj_type_name(self), name);
    }
}

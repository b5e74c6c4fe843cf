/* Scopes: the template's top level, each for-loop iteration, each macro call and each with
 * block bind names in a frame of their own, looked up innermost first, then the context
 * variables, then Jinja's globals. This reproduces Jinja's scoping: a {% set %} inside a loop is
 * gone after the iteration (namespaces exist to carry state out), and a macro sees the scope it
 * was defined in, not its caller's. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* A new empty scope inside `parent`. */
jj_frame *jj_frame_new(jj_render *r, jj_frame *parent) {
    jj_frame *f = jj_alloc(&r->ctx, sizeof(jj_frame));
    f->parent = parent;
    return f;
}

/* Binds name in frame f (replacing an earlier binding there). */
void jj_frame_set(jj_render *r, jj_frame *f, const char *name, jv v) {
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) {
            f->vals[i] = v;
            return;
        }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        f->names = jj_grow(&r->ctx, f->names, f->cap * sizeof(char *), cap * sizeof(char *));
        f->vals = jj_grow(&r->ctx, f->vals, f->cap * sizeof(jv), cap * sizeof(jv));
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->vals[f->n] = v;
    f->n++;
}

/* The value of a name: the innermost binding, then the globals, else undefined ("'x' is
 * undefined" when used). */
jv jj_lookup(jj_render *r, jj_frame *f, const char *name) {
    for (; f; f = f->parent) {
        jj_charge(r, f->n);
        for (size_t i = f->n; i-- > 0;)
            if (!strcmp(f->names[i], name)) return f->vals[i];
    }
    jv g = jj_global(r, name);
    if (g.type != JV_UNDEFINED) return g;
    jj_buf b = {0};
    jj_repr_to(r, &b, jv_cstr(name));
    jj_buf_puts(&r->ctx, &b, " is undefined");
    return jv_undefined_msg(b.p);
}

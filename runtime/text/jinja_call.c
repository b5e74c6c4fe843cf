/* Calls: argument binding for macros (defaults, varargs, kwargs, caller), the helpers built-in
 * functions use to read their arguments, and the dispatch from a called value to its code. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* The index of keyword argument `name`, or -1. */
static int kwarg_index(const jj_args *a, const char *name) {
    if (!name) return -1;
    for (size_t i = 0; i < a->nk; i++)
        if (!strcmp(a->knames[i], name)) return (int)i;
    return -1;
}

/* Argument i, or keyword `name`, or dflt: how built-ins read Python-style arguments. */
jv jj_arg(const jj_args *a, size_t i, const char *name, jv dflt) {
    if (i < a->n) return a->pos[i];
    int k = kwarg_index(a, name);
    return k >= 0 ? a->kvals[k] : dflt;
}

/* Whether argument i or keyword `name` was passed at all. */
bool jj_has_arg(const jj_args *a, size_t i, const char *name) {
    return i < a->n || kwarg_index(a, name) >= 0;
}

/* Refuses more positional arguments than a built-in takes, or a keyword it does not know, as
 * Python's own calls would. */
void jj_check_args(jj_render *r, const jj_args *a, const char *fname, size_t max_pos,
                   const char *const *names) {
    if (a->n > max_pos)
        jj_error(r, "%s() takes at most %zu positional argument%s (%zu given)", fname, max_pos,
                 max_pos == 1 ? "" : "s", a->n);
    for (size_t k = 0; k < a->nk; k++) {
        bool known = false;
        for (size_t j = 0; names && names[j]; j++) {
            if (strcmp(names[j], a->knames[k])) continue;
            known = true;
            if (j < a->n)
                jj_error(r, "%s() got multiple values for argument '%s'", fname, names[j]);
        }
        if (!known)
            jj_error(r, "%s() got an unexpected keyword argument '%s'", fname, a->knames[k]);
    }
}

/* Calls a macro: binds parameters from positions, keywords and defaults (missing ones are
 * undefined, as in Jinja), collects extras into varargs and kwargs when the body reads them, and
 * renders the body into a string. */
jv jj_call_macro(jj_render *r, const jj_macro *m, const jj_args *args, jv caller) {
    const jj_node *def = m->def;
    if (++r->macro_depth > JJ_MACRO_DEPTH)
        jj_error(r, "macro calls nest too deeply (more than %d)", JJ_MACRO_DEPTH);
    size_t np = def->params.n;
    if (args->n > np && !def->uses_varargs)
        jj_error(r, "macro '%s' takes not more than %zu argument(s)", def->name, np);
    jj_frame *f = jj_frame_new(r, m->closure);
    jj_dict *extra_kw = jj_dict_new(&r->ctx, 0);
    for (size_t k = 0; k < args->nk; k++) {
        bool is_param = false;
        for (size_t i = 0; i < np; i++)
            if (!strcmp(def->params.v[i]->name, args->knames[k])) {
                is_param = true;
                if (i < args->n)
                    jj_error(r, "macro '%s' got multiple values for argument '%s'", def->name,
                             args->knames[k]);
            }
        if (is_param) continue;
        if (!def->uses_kwargs)
            jj_error(r, "macro '%s' takes no keyword argument '%s'", def->name, args->knames[k]);
        jj_dict_set(r, extra_kw, jv_cstr(args->knames[k]), args->kvals[k]);
    }
    for (size_t i = 0; i < np; i++) {
        const jj_node *param = def->params.v[i];
        jv v;
        if (jj_has_arg(args, i, param->name)) {
            v = jj_arg(args, i, param->name, jv_none());
        } else if (param->a) {
            /* defaults are evaluated at call time and may use the earlier parameters */
            v = jj_eval(r, param->a, f);
        } else {
            jj_buf b = {0};
            jj_buf_puts(&r->ctx, &b, "parameter ");
            jj_repr_to(r, &b, jv_cstr(param->name));
            jj_buf_puts(&r->ctx, &b, " was not provided");
            v = jv_undefined_msg(b.p);
        }
        jj_frame_set(r, f, param->name, v);
    }
    if (def->uses_varargs) {
        jj_list *extra = jj_list_new(&r->ctx, 0);
        for (size_t i = np; i < args->n; i++)
            jj_list_push(&r->ctx, extra, args->pos[i]);
        jj_frame_set(r, f, "varargs", jv_list_v(extra, true));
    }
    if (def->uses_kwargs) jj_frame_set(r, f, "kwargs", jv_dict_v(extra_kw));
    if (def->uses_caller || caller.type != JV_UNDEFINED) jj_frame_set(r, f, "caller", caller);
    jv result = jj_capture(r, &def->body, f);
    r->control = JJ_CONTROL_NONE;
    r->macro_depth--;
    return result;
}

/* Calls any callable value: a macro, a global or a bound method. */
jv jj_call(jj_render *r, jv callee, const jj_args *args) {
    switch (callee.type) {
    case JV_MACRO:
        return jj_call_macro(r, callee.u.macro, args, jv_undefined_msg("no caller defined"));
    case JV_FUNC: {
        const jj_func *fn = callee.u.func;
        if (fn->kind == JF_METHOD) return jj_call_method(r, fn->self, fn->name, args);
        return jj_call_global(r, fn->kind, args);
    }
    case JV_UNDEFINED:
        jj_undefined_fail(r, callee);
    default:
        jj_error(r, "'%s' object is not callable", jj_type_name(callee));
    }
}

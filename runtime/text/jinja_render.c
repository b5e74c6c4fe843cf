/* Statement execution: text and {{ }} output, if, for (loop variable, filtering, else, break
 * and continue), set (names, namespace attributes, tuples, blocks), macros and call blocks,
 * filter and with blocks. Output is bounded by JJ_OUTPUT_LIMIT (in jj_buf_put) and loops by
 * JJ_LOOP_LIMIT. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* Binds a value to an assignment target: a name in frame f, a namespace attribute, or a tuple
 * of targets unpacked from a sequence of the same length. */
static void assign(jj_render *r, const jj_node *target, jv v, jj_frame *f) {
    switch (target->kind) {
    case E_NAME:
        jj_frame_set(r, f, target->name, v);
        return;
    case E_NSREF: {
        jv ns = jj_lookup(r, f, target->name);
        r->pos = target->pos;
        if (ns.type != JV_NAMESPACE) jj_error(r, "cannot assign attribute on non-namespace object");
        jj_dict_set(r, ns.u.dict, jv_cstr(target->attr), v);
        return;
    }
    case E_TUPLE: {
        r->pos = target->pos;
        if (v.type != JV_LIST && v.type != JV_STR && v.type != JV_DICT && v.type != JV_UNDEFINED)
            jj_error(r, "cannot unpack non-iterable %s object", jj_type_name(v));
        const jj_list *items = jj_iterate(r, v);
        size_t want = target->args.n;
        if (items->n < want)
            jj_error(r, "not enough values to unpack (expected %zu, got %zu)", want, items->n);
        if (items->n > want) jj_error(r, "too many values to unpack (expected %zu)", want);
        for (size_t i = 0; i < want; i++)
            assign(r, target->args.v[i], items->items[i], f);
        return;
    }
    default:
        jj_error(r, "internal error: cannot assign to node %d", (int)target->kind);
    }
}

/* Renders body into a string instead of the output: macro calls, set blocks, filter blocks. */
jv jj_capture(jj_render *r, const jj_nodes *body, jj_frame *f) {
    jj_buf *saved = r->out;
    jj_buf b;
    jj_output_open(&r->ctx, &b);
    r->out = &b;
    jj_exec_body(r, body, f);
    r->out = saved;
    size_t n = b.n;
    return jv_str(jj_output_close(&r->ctx, &b, true), n);
}

/* A for loop: the items (filtered first when there is an `if`), a fresh scope per iteration
 * with `loop` and the target bound, break and continue, and the else branch when nothing ran. */
static void exec_for(jj_render *r, const jj_node *s, jj_frame *f) {
    jv seq = jj_eval(r, s->b, f);
    r->pos = s->b->pos;
    const jj_list *items = jj_iterate(r, seq);
    if (s->c) {
        /* `for x in xs if cond`: the loop (and loop.length) sees only the items kept */
        jj_list *kept = jj_list_new(&r->ctx, items->n);
        jj_frame *tf = jj_frame_new(r, f);
        for (size_t i = 0; i < items->n; i++) {
            jj_charge(r, 1);
            tf->n = 0;
            assign(r, s->a, items->items[i], tf);
            if (jj_truthy(jj_eval(r, s->c, tf))) kept->items[kept->n++] = items->items[i];
        }
        items = kept;
    }
    jj_loop *loop = jj_alloc(&r->ctx, sizeof(jj_loop));
    loop->items = items;
    jv loop_v = {.type = JV_LOOP};
    loop_v.u.loop = loop;
    jj_frame *lf = jj_frame_new(r, f);
    for (size_t i = 0; i < items->n; i++) {
        if (++r->loop_iters > JJ_LOOP_LIMIT) {
            r->pos = s->pos;
            jj_error(r, "too many loop iterations (more than %d)", JJ_LOOP_LIMIT);
        }
        lf->n = 0; /* each iteration starts with a fresh scope, as in Jinja */
        loop->index0 = i;
        jj_frame_set(r, lf, "loop", loop_v);
        assign(r, s->a, items->items[i], lf);
        jj_exec_body(r, &s->body, lf);
        if (r->control == JJ_CONTROL_BREAK) {
            r->control = JJ_CONTROL_NONE;
            break;
        }
        r->control = JJ_CONTROL_NONE;
    }
    if (items->n == 0 && s->alt.n) jj_exec_body(r, &s->alt, jj_frame_new(r, f));
}

/* A macro value closing over the scope it is defined in. */
static jv new_macro(jj_render *r, const jj_node *def, jj_frame *closure) {
    jj_macro *m = jj_alloc(&r->ctx, sizeof(jj_macro));
    m->def = def;
    m->closure = closure;
    jv v = {.type = JV_MACRO};
    v.u.macro = m;
    return v;
}

/* {% call(args) m(...) %}body{% endcall %}: calls m with `caller` bound to the body. */
static jv exec_call_block(jj_render *r, const jj_node *s, jj_frame *f) {
    const jj_node *call = s->a;
    jv callee = jj_eval(r, call->a, f);
    jj_args args;
    jj_eval_args(r, call, f, &args);
    r->pos = call->pos;
    if (callee.type == JV_UNDEFINED) jj_undefined_fail(r, callee);
    if (callee.type != JV_MACRO)
        jj_error(r, "a call block needs a macro, not '%s'", jj_type_name(callee));
    return jj_call_macro(r, callee.u.macro, &args, new_macro(r, s, f));
}

/* Runs one statement. */
static void exec_stmt(jj_render *r, const jj_node *s, jj_frame *f) {
    r->pos = s->pos;
    r->ctx.output_pos = s->pos;
    switch (s->kind) {
    case N_TEXT:
        jj_buf_put(&r->ctx, r->out, s->value.u.s.p, s->value.u.s.n);
        return;
    case N_OUTPUT: {
        jv v = jj_eval(r, s->a, f);
        r->pos = s->pos;
        jj_str_to(r, r->out, v);
        return;
    }
    case N_IF:
        if (jj_truthy(jj_eval(r, s->a, f)))
            jj_exec_body(r, &s->body, f);
        else
            jj_exec_body(r, &s->alt, f);
        return;
    case N_FOR:
        exec_for(r, s, f);
        return;
    case N_SET:
        assign(r, s->a, jj_eval(r, s->b, f), f);
        return;
    case N_SET_BLOCK: {
        jv v = jj_capture(r, &s->body, f);
        if (s->c) {
            jv saved = r->block_value;
            r->block_value = v;
            v = jj_eval(r, s->c, f);
            r->block_value = saved;
        }
        assign(r, s->a, v, f);
        return;
    }
    case N_FILTER_BLOCK: {
        jv saved = r->block_value;
        r->block_value = jj_capture(r, &s->body, f);
        jv v = jj_eval(r, s->c, f);
        r->block_value = saved;
        jj_str_to(r, r->out, v);
        return;
    }
    case N_MACRO:
        jj_frame_set(r, f, s->name, new_macro(r, s, f));
        return;
    case N_CALL_BLOCK:
        jj_str_to(r, r->out, exec_call_block(r, s, f));
        return;
    case N_WITH: {
        jj_frame *wf = jj_frame_new(r, f);
        for (size_t i = 0; i < s->args.n; i++)
            assign(r, s->args.v[i], jj_eval(r, s->kwargs.v[i], f), wf);
        jj_exec_body(r, &s->body, wf);
        return;
    }
    case N_GROUP:
        jj_exec_body(r, &s->body, f);
        return;
    case N_BREAK:
        r->control = JJ_CONTROL_BREAK;
        return;
    case N_CONTINUE:
        r->control = JJ_CONTROL_CONTINUE;
        return;
    default:
        jj_error(r, "internal error: node %d is not a statement", (int)s->kind);
    }
}

/* Runs statements in order until one breaks or continues a loop. */
void jj_exec_body(jj_render *r, const jj_nodes *body, jj_frame *f) {
    jj_enter(r);
    for (size_t i = 0; i < body->n && r->control == JJ_CONTROL_NONE; i++)
        exec_stmt(r, body->v[i], f);
    jj_leave(r);
}

/* The public entry points: parse a template once (into its own arena), render it any number of
 * times (each render in a fresh arena), free it. Errors raised anywhere below longjmp back here,
 * where the arena is dropped and the status returned. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/jinja.h"
#include "runtime/text/jinja_internal.h"

struct moira_jinja_template {
    jj_ctx ctx;
    jj_node *root;
    char *origin;
};

/* Jinja reads the source with universal newlines (\r\n and \r become \n) and, with
 * keep_trailing_newline off, drops one newline at the very end. */
static void normalize_source(jj_ctx *ctx, const char *source, size_t len) {
    char *s = jj_alloc(ctx, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (source[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && source[i + 1] == '\n') i++;
        } else {
            s[n++] = source[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n') n--;
    s[n] = 0;
    ctx->src = s;
    ctx->src_len = n;
}

/* Parses into a template owning its arena; on error the arena goes and the status is returned. */
moira_status_t moira_jinja_parse(const char *source, size_t len, const char *origin,
                                 moira_jinja_template_t **out) {
    if (!out || (!source && len))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "moira_jinja_parse: NULL argument");
    *out = NULL;
    moira_jinja_template_t *t = calloc(1, sizeof(*t));
    char *name = strdup(origin ? origin : "template");
    if (!t || !name) {
        free(t);
        free(name);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory parsing a template");
    }
    t->origin = name;
    t->ctx.origin = name;
    jmp_buf on_error;
    t->ctx.on_error = &on_error;
    if (setjmp(on_error)) {
        moira_status_t status = t->ctx.error;
        jj_arena_free(&t->ctx.arena);
        free(t->origin);
        free(t);
        return status;
    }
    size_t bad = len ? jj_utf8_check(source, len) : 0;
    if (bad < len) {
        /* located in the raw text, which has the same lines up to that byte */
        t->ctx.src = source;
        t->ctx.src_len = len;
        jj_fail_at(&t->ctx, bad, "template is not valid UTF-8");
    }
    normalize_source(&t->ctx, source ? source : "", len);
    jj_tokens toks = jj_lex(&t->ctx);
    t->root = jj_parse_tokens(&t->ctx, &toks);
    t->ctx.on_error = NULL;
    *out = t;
    return MOIRA_OK_STATUS;
}

/* Renders in a fresh arena: the context becomes the outermost scope, the output is handed to
 * the caller, and everything else is dropped at once. */
moira_status_t moira_jinja_render(const moira_jinja_template_t *tmpl, const json_t *context,
                                  char **out_text, size_t *out_len) {
    if (!tmpl || !out_text || !out_len)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "moira_jinja_render: NULL argument");
    *out_text = NULL;
    *out_len = 0;
    if (context && !json_is_object(context))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "moira_jinja_render: the context must be a JSON object");
    jj_render *r = calloc(1, sizeof(*r));
    if (!r)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory rendering a template");
    r->ctx.origin = tmpl->origin;
    r->ctx.src = tmpl->ctx.src;
    r->ctx.src_len = tmpl->ctx.src_len;
    r->root = tmpl->root;
    jmp_buf on_error;
    r->ctx.on_error = &on_error;
    if (setjmp(on_error)) {
        moira_status_t status = r->ctx.error;
        jj_output_free_all(&r->ctx);
        jj_arena_free(&r->ctx.arena);
        free(r);
        return status;
    }
    r->globals = jj_frame_new(r, NULL);
    if (context) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)context, key, val) {
            jj_frame_set(r, r->globals, key, jj_from_json(r, val, 0));
        }
    }
    jj_frame *top = jj_frame_new(r, r->globals);
    jj_buf out;
    jj_output_open(&r->ctx, &out);
    r->out = &out;
    jj_buf_put(&r->ctx, &out, "", 0); /* an empty result is "" rather than NULL */
    jj_exec_body(r, &r->root->body, top);
    *out_len = out.n;
    *out_text = jj_output_close(&r->ctx, &out, false);
    jj_arena_free(&r->ctx.arena);
    free(r);
    return MOIRA_OK_STATUS;
}

/* Frees a template and its tree (all in its arena). */
void moira_jinja_free(moira_jinja_template_t *tmpl) {
    if (!tmpl) return;
    jj_arena_free(&tmpl->ctx.arena);
    free(tmpl->origin);
    free(tmpl);
}

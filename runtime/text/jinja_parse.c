/* The statement parser: template data, {{ }} and the {% %} tags chat templates use (if, for,
 * set, macro, call, filter, with, print, break, continue, generation), following
 * jinja2/parser.py. Tags that load other templates (extends, include, import, block) have no
 * meaning for a lone chat template and are refused with a clear message. */
#include <stdio.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

static jj_nodes subparse(jj_parser *p, const char *const *end_tags);

/* Whether the current token is the name `name`. */
static bool is_name(const jj_parser *p, const char *name) {
    return jj_tok_is(jj_peek(p), T_NAME, name);
}

/* "'elif', 'else' or 'endif'" */
static const char *tag_list(jj_parser *p, const char *const *tags) {
    jj_buf b = {0};
    size_t n = 0;
    while (tags[n])
        n++;
    for (size_t i = 0; i < n; i++) {
        if (i) jj_buf_puts(p->ctx, &b, i + 1 == n ? " or " : ", ");
        jj_buf_printf(p->ctx, &b, "'%s'", tags[i]);
    }
    return b.p;
}

/* The body of a block tag up to one of `end_tags`: the current token is then that tag's name
 * (consumed when drop_needle). The end of the template before it is a syntax error that says
 * which tags would have closed the block. */
static jj_nodes parse_statements(jj_parser *p, const char *const *end_tags, bool drop_needle) {
    jj_skip_if(p, T_OP, ":");
    jj_expect(p, T_BLOCK_END, NULL);
    jj_nodes body = subparse(p, end_tags);
    const jj_token *t = jj_peek(p);
    if (t->type == T_EOF)
        jj_fail_at(p->ctx, t->pos, "expected %s, got end of template", tag_list(p, end_tags));
    if (drop_needle) jj_next(p);
    return body;
}

/* Names, namespace attributes (where allowed) and tuples of them can be assigned to. */
static void check_assignable(jj_parser *p, const jj_node *target, bool allow_ns) {
    if (target->kind == E_NAME || (allow_ns && target->kind == E_NSREF)) return;
    if (target->kind == E_TUPLE) {
        for (size_t i = 0; i < target->args.n; i++)
            check_assignable(p, target->args.v[i], allow_ns);
        return;
    }
    jj_fail_at(p->ctx, target->pos, "can't assign to this expression");
}

/* {% set target = value %}, or the block form {% set target | filters %}...{% endset %}. */
static jj_node *parse_set(jj_parser *p, size_t pos) {
    jj_node *target = jj_parse_tuple(p, true, true, NULL, false, true);
    check_assignable(p, target, true);
    if (jj_skip_if(p, T_OP, "=")) {
        jj_node *n = jj_node_new(p, N_SET, pos);
        n->a = target;
        n->b = jj_parse_tuple(p, false, true, NULL, false, false);
        return n;
    }
    jj_node *n = jj_node_new(p, N_SET_BLOCK, pos);
    n->a = target;
    if (jj_tok_is(jj_peek(p), T_OP, "|")) {
        jj_node *input = jj_node_new(p, E_BLOCK_VALUE, pos);
        n->c = jj_parse_filter(p, input, false);
    }
    static const char *const end[] = {"endset", NULL};
    n->body = parse_statements(p, end, true);
    return n;
}

/* {% for target in iterable [if cond] %}...[{% else %}...]{% endfor %}. */
static jj_node *parse_for(jj_parser *p, size_t pos) {
    jj_node *n = jj_node_new(p, N_FOR, pos);
    n->a = jj_parse_tuple(p, true, true, "in", false, false);
    check_assignable(p, n->a, false);
    jj_expect(p, T_NAME, "in");
    n->b = jj_parse_tuple(p, false, false, "recursive", false, false);
    if (jj_skip_if(p, T_NAME, "if")) n->c = jj_parse_expression(p, true);
    if (is_name(p, "recursive"))
        jj_fail_at(p->ctx, jj_peek(p)->pos, "recursive for loops are not supported");
    static const char *const end_body[] = {"endfor", "else", NULL};
    static const char *const end_else[] = {"endfor", NULL};
    p->loops++;
    n->body = parse_statements(p, end_body, false);
    p->loops--;
    if (jj_tok_is(jj_next(p), T_NAME, "else")) n->alt = parse_statements(p, end_else, true);
    return n;
}

/* {% if %}...{% elif %}...{% else %}...{% endif %}; each elif is an if nested in the else. */
static jj_node *parse_if(jj_parser *p, size_t pos) {
    static const char *const end_body[] = {"elif", "else", "endif", NULL};
    static const char *const end_else[] = {"endif", NULL};
    jj_node *result = jj_node_new(p, N_IF, pos), *node = result;
    for (;;) {
        node->a = jj_parse_tuple(p, false, false, NULL, false, false);
        node->body = parse_statements(p, end_body, false);
        const jj_token *t = jj_next(p);
        if (jj_tok_is(t, T_NAME, "elif")) {
            jj_node *elif = jj_node_new(p, N_IF, t->pos);
            jj_nodes_push(p, &node->alt, elif);
            node = elif;
            continue;
        }
        if (jj_tok_is(t, T_NAME, "else")) node->alt = parse_statements(p, end_else, true);
        return result;
    }
}

/* `(a, b=default, ...)` of a macro or a call block. */
static void parse_signature(jj_parser *p, jj_node *n) {
    jj_expect(p, T_OP, "(");
    bool defaults = false;
    while (!jj_tok_is(jj_peek(p), T_OP, ")")) {
        if (n->params.n) jj_expect(p, T_OP, ",");
        const jj_token *t = jj_expect(p, T_NAME, NULL);
        jj_node *param = jj_node_new(p, E_PARAM, t->pos);
        param->name = jj_strndup(p->ctx, t->p, t->n);
        if (jj_skip_if(p, T_OP, "=")) {
            param->a = jj_parse_expression(p, true);
            defaults = true;
        } else if (defaults) {
            jj_fail_at(p->ctx, t->pos, "non-default argument follows default argument");
        }
        jj_nodes_push(p, &n->params, param);
    }
    jj_expect(p, T_OP, ")");
}

/* A macro's body is parsed as its own function: loops around the definition do not count for
 * break, and names it reads tell whether it takes varargs, kwargs or caller. */
static jj_nodes parse_callable_body(jj_parser *p, jj_node *n, const char *end_tag) {
    const char *const end[] = {end_tag, NULL};
    jj_node *outer = p->macro;
    int loops = p->loops;
    p->macro = n;
    p->loops = 0;
    jj_nodes body = parse_statements(p, end, true);
    p->macro = outer;
    p->loops = loops;
    return body;
}

/* {% macro name(params) %}...{% endmacro %}. */
static jj_node *parse_macro(jj_parser *p, size_t pos) {
    jj_node *n = jj_node_new(p, N_MACRO, pos);
    const jj_token *t = jj_expect(p, T_NAME, NULL);
    n->name = jj_strndup(p->ctx, t->p, t->n);
    parse_signature(p, n);
    n->body = parse_callable_body(p, n, "endmacro");
    return n;
}

/* {% call[(params)] macro(args) %}...{% endcall %}: the body becomes the macro's `caller`. */
static jj_node *parse_call_block(jj_parser *p, size_t pos) {
    jj_node *n = jj_node_new(p, N_CALL_BLOCK, pos);
    n->name = "caller";
    if (jj_tok_is(jj_peek(p), T_OP, "(")) parse_signature(p, n);
    n->a = jj_parse_expression(p, true);
    if (n->a->kind != E_CALL) jj_fail_at(p->ctx, n->a->pos, "expected call");
    n->body = parse_callable_body(p, n, "endcall");
    return n;
}

/* {% with a = 1, b = 2 %}...{% endwith %}: names bound for the body only. */
static jj_node *parse_with(jj_parser *p, size_t pos) {
    jj_node *n = jj_node_new(p, N_WITH, pos);
    while (jj_peek(p)->type != T_BLOCK_END) {
        if (n->args.n) jj_expect(p, T_OP, ",");
        jj_node *target = jj_parse_tuple(p, true, true, NULL, false, false);
        check_assignable(p, target, false);
        jj_expect(p, T_OP, "=");
        jj_nodes_push(p, &n->args, target);
        jj_nodes_push(p, &n->kwargs, jj_parse_expression(p, true));
    }
    static const char *const end[] = {"endwith", NULL};
    n->body = parse_statements(p, end, true);
    return n;
}

/* One {% %} tag (the caller has consumed '{%'; the tag's end is left for it). */
static jj_node *parse_statement(jj_parser *p) {
    const jj_token *t = jj_peek(p);
    if (t->type != T_NAME)
        jj_fail_at(p->ctx, t->pos, "expected a tag name, got %s", jj_describe(p, t));
    jj_parse_enter(p);
    size_t pos = t->pos;
    jj_node *n = NULL;
    if (jj_skip_if(p, T_NAME, "if")) {
        n = parse_if(p, pos);
    } else if (jj_skip_if(p, T_NAME, "for")) {
        n = parse_for(p, pos);
    } else if (jj_skip_if(p, T_NAME, "set")) {
        n = parse_set(p, pos);
    } else if (jj_skip_if(p, T_NAME, "macro")) {
        n = parse_macro(p, pos);
    } else if (jj_skip_if(p, T_NAME, "call")) {
        n = parse_call_block(p, pos);
    } else if (jj_skip_if(p, T_NAME, "filter")) {
        n = jj_node_new(p, N_FILTER_BLOCK, pos);
        n->c = jj_parse_filter(p, jj_node_new(p, E_BLOCK_VALUE, pos), true);
        static const char *const end[] = {"endfilter", NULL};
        n->body = parse_statements(p, end, true);
    } else if (jj_skip_if(p, T_NAME, "with")) {
        n = parse_with(p, pos);
    } else if (jj_skip_if(p, T_NAME, "generation")) {
        /* transformers' AssistantTracker marks assistant text for masks; rendering is unchanged */
        n = jj_node_new(p, N_GROUP, pos);
        static const char *const end[] = {"endgeneration", NULL};
        n->body = parse_statements(p, end, true);
    } else if (jj_skip_if(p, T_NAME, "print")) {
        n = jj_node_new(p, N_GROUP, pos);
        while (jj_peek(p)->type != T_BLOCK_END) {
            if (n->body.n) jj_expect(p, T_OP, ",");
            jj_node *out = jj_node_new(p, N_OUTPUT, jj_peek(p)->pos);
            out->a = jj_parse_expression(p, true);
            jj_nodes_push(p, &n->body, out);
        }
    } else if (is_name(p, "break") || is_name(p, "continue")) {
        if (!p->loops) jj_fail_at(p->ctx, pos, "'%.*s' outside of a for loop", (int)t->n, t->p);
        n = jj_node_new(p, is_name(p, "break") ? N_BREAK : N_CONTINUE, pos);
        jj_next(p);
    } else {
        static const char *const unsupported[] = {"extends", "include", "import",
                                                  "from",    "block",   "autoescape"};
        for (size_t i = 0; i < sizeof(unsupported) / sizeof(*unsupported); i++)
            if (jj_tok_is(t, T_NAME, unsupported[i]))
                jj_fail_at(p->ctx, pos,
                           "the '%s' tag is not supported (a chat template is a single template)",
                           unsupported[i]);
        jj_fail_at(p->ctx, pos, "unknown tag '%.*s'", (int)t->n, t->p);
    }
    p->depth--;
    return n;
}

/* Whether the current tag is one that closes the block being parsed. */
static bool is_end_tag(const jj_parser *p, const char *const *end_tags) {
    if (!end_tags) return false;
    for (size_t i = 0; end_tags[i]; i++)
        if (is_name(p, end_tags[i])) return true;
    return false;
}

/* Template data, {{ }} and {% %} tags up to one of end_tags (NULL: the end of the template). */
static jj_nodes subparse(jj_parser *p, const char *const *end_tags) {
    jj_nodes body = {0};
    for (;;) {
        const jj_token *t = jj_peek(p);
        if (t->type == T_DATA) {
            jj_next(p);
            jj_node *n = jj_node_new(p, N_TEXT, t->pos);
            n->value = jv_str(t->p, t->n);
            jj_nodes_push(p, &body, n);
        } else if (t->type == T_VAR_BEGIN) {
            jj_next(p);
            jj_node *n = jj_node_new(p, N_OUTPUT, t->pos);
            n->a = jj_parse_tuple(p, false, true, NULL, false, false);
            jj_expect(p, T_VAR_END, NULL);
            jj_nodes_push(p, &body, n);
        } else if (t->type == T_BLOCK_BEGIN) {
            jj_next(p);
            if (is_end_tag(p, end_tags)) return body;
            const jj_token *tag = jj_peek(p);
            if (end_tags && tag->type == T_NAME && tag->n > 3 && !memcmp(tag->p, "end", 3))
                jj_fail_at(p->ctx, tag->pos, "expected %s, got '%.*s'", tag_list(p, end_tags),
                           (int)tag->n, tag->p);
            if (!end_tags && tag->type == T_NAME &&
                (jj_tok_is(tag, T_NAME, "elif") || jj_tok_is(tag, T_NAME, "else") ||
                 (tag->n > 3 && !memcmp(tag->p, "end", 3))))
                jj_fail_at(p->ctx, tag->pos, "unexpected '%.*s' (no block is open)", (int)tag->n,
                           tag->p);
            jj_nodes_push(p, &body, parse_statement(p));
            jj_expect(p, T_BLOCK_END, NULL);
        } else if (t->type == T_EOF) {
            return body;
        } else {
            jj_fail_at(p->ctx, t->pos, "unexpected %s", jj_describe(p, t));
        }
    }
}

/* The template's tree: its top-level statements in an N_GROUP. */
jj_node *jj_parse_tokens(jj_ctx *ctx, const jj_tokens *toks) {
    jj_parser p = {.ctx = ctx, .toks = toks};
    jj_node *root = jj_node_new(&p, N_GROUP, 0);
    root->body = subparse(&p, NULL);
    return root;
}

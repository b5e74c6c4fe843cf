/* The expression parser: Jinja's grammar and precedence exactly as jinja2/parser.py has them
 * (conditional, or, and, not, comparisons, + -, ~, * / // %, **, unary, then postfix, filters and
 * tests), so every template means here what it means to Jinja. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* A zeroed node of the given kind at a source offset. */
jj_node *jj_node_new(jj_parser *p, jj_kind kind, size_t pos) {
    jj_node *n = jj_alloc(p->ctx, sizeof(jj_node));
    n->kind = kind;
    n->pos = pos;
    return n;
}

/* Appends a node to a list; the capacity is the next power of two, so it is not stored. */
void jj_nodes_push(jj_parser *p, jj_nodes *list, jj_node *n) {
    /* Capacity is the next power of two, so the array grows without storing it. */
    if ((list->n & (list->n - 1)) == 0) {
        size_t cap = list->n ? list->n * 2 : 1;
        list->v = jj_grow(p->ctx, list->v, list->n * sizeof(jj_node *), cap * sizeof(jj_node *));
    }
    list->v[list->n++] = n;
}

/* The current token (the last one, EOF, repeats forever). */
const jj_token *jj_peek(const jj_parser *p) {
    return &p->toks->v[p->i];
}

/* The token after the current one. */
const jj_token *jj_peek2(const jj_parser *p) {
    return &p->toks->v[p->i + 1 < p->toks->n ? p->i + 1 : p->i];
}

/* Consumes the current token and returns it. */
const jj_token *jj_next(jj_parser *p) {
    const jj_token *t = &p->toks->v[p->i];
    if (p->i + 1 < p->toks->n) p->i++;
    return t;
}

/* Whether a token is of `type` and (when text is given) spelled `text`. */
bool jj_tok_is(const jj_token *t, jj_tok_type type, const char *text) {
    if (t->type != type) return false;
    if (!text) return true;
    return t->n == strlen(text) && memcmp(t->p, text, t->n) == 0;
}

/* Consumes the current token if it matches. */
bool jj_skip_if(jj_parser *p, jj_tok_type type, const char *text) {
    if (!jj_tok_is(jj_peek(p), type, text)) return false;
    jj_next(p);
    return true;
}

/* How a token reads in an error message ("end of template", "'foo'"). */
const char *jj_describe(jj_parser *p, const jj_token *t) {
    switch (t->type) {
    case T_EOF:
        return "end of template";
    case T_DATA:
        return "template data";
    case T_VAR_BEGIN:
        return "'{{'";
    case T_VAR_END:
        return "end of print statement";
    case T_BLOCK_BEGIN:
        return "'{%'";
    case T_BLOCK_END:
        return "end of statement block";
    case T_STRING:
        return "string literal";
    default: {
        jj_buf b = {0};
        jj_buf_printf(p->ctx, &b, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p);
        return b.p;
    }
    }
}

/* How an expected token reads in an error message. */
static const char *describe_expected(jj_tok_type type, const char *text) {
    switch (type) {
    case T_VAR_END:
        return "end of print statement";
    case T_BLOCK_END:
        return "end of statement block";
    case T_NAME:
        return text ? text : "a name";
    case T_STRING:
        return "a string";
    default:
        return text ? text : "a token";
    }
}

/* Consumes the current token, which must match, or fails saying what was expected. */
const jj_token *jj_expect(jj_parser *p, jj_tok_type type, const char *text) {
    const jj_token *t = jj_peek(p);
    if (!jj_tok_is(t, type, text)) {
        const char *want = describe_expected(type, text);
        bool quote = text != NULL;
        jj_fail_at(p->ctx, t->pos, "expected %s%s%s, got %s", quote ? "'" : "", want,
                   quote ? "'" : "", jj_describe(p, t));
    }
    return jj_next(p);
}

/* Counts one level of nesting, failing past JJ_PARSE_DEPTH (the parser is recursive). */
void jj_parse_enter(jj_parser *p) {
    if (++p->depth > JJ_PARSE_DEPTH)
        jj_fail_at(p->ctx, jj_peek(p)->pos, "template nests too deeply (more than %d levels)",
                   JJ_PARSE_DEPTH);
}

/* A token's text as a NUL-terminated name. */
static char *tok_name(jj_parser *p, const jj_token *t) {
    return jj_strndup(p->ctx, t->p, t->n);
}

/* Whether the current token is the operator `op`. */
static bool is_op(const jj_parser *p, const char *op) {
    return jj_tok_is(jj_peek(p), T_OP, op);
}

/* Whether the current token is the name `name`. */
static bool is_name(const jj_parser *p, const char *name) {
    return jj_tok_is(jj_peek(p), T_NAME, name);
}

static jj_node *parse_or(jj_parser *p);
static jj_node *parse_unary(jj_parser *p, bool with_filter);
static jj_node *parse_postfix(jj_parser *p, jj_node *node);

/* `a if cond else b`; without else the result is undefined when cond is false. */
static jj_node *parse_condexpr(jj_parser *p) {
    jj_node *expr1 = parse_or(p);
    while (is_name(p, "if")) {
        size_t pos = jj_next(p)->pos;
        jj_node *n = jj_node_new(p, E_COND, pos);
        n->a = parse_or(p);
        n->b = expr1;
        if (jj_skip_if(p, T_NAME, "else")) n->c = parse_condexpr(p);
        expr1 = n;
    }
    return expr1;
}

/* An expression, with or without the `a if b else c` form (for and if statements take it
 * without, so that `for x in y if z` filters). */
jj_node *jj_parse_expression(jj_parser *p, bool with_condexpr) {
    return with_condexpr ? parse_condexpr(p) : parse_or(p);
}

/* A binary node. */
static jj_node *binary(jj_parser *p, jj_kind kind, int op, size_t pos, jj_node *a, jj_node *b) {
    jj_node *n = jj_node_new(p, kind, pos);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static jj_node *parse_not(jj_parser *p);

/* `a and b` (binds tighter than or). */
static jj_node *parse_and(jj_parser *p) {
    jj_node *left = parse_not(p);
    while (is_name(p, "and")) {
        size_t pos = jj_next(p)->pos;
        left = binary(p, E_AND, 0, pos, left, parse_not(p));
    }
    return left;
}

/* `a or b`. */
static jj_node *parse_or(jj_parser *p) {
    jj_node *left = parse_and(p);
    while (is_name(p, "or")) {
        size_t pos = jj_next(p)->pos;
        left = binary(p, E_OR, 0, pos, left, parse_and(p));
    }
    return left;
}

static jj_node *parse_compare(jj_parser *p);

/* `not a`, which binds looser than comparisons (not a in b is not (a in b)). */
static jj_node *parse_not(jj_parser *p) {
    if (is_name(p, "not")) {
        size_t pos = jj_next(p)->pos;
        jj_parse_enter(p);
        jj_node *n = jj_node_new(p, E_NOT, pos);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}

static jj_node *parse_math1(jj_parser *p);

/* A chain of comparisons (a < b < c compares pairwise, as Python does). */
static jj_node *parse_compare(jj_parser *p) {
    size_t pos = jj_peek(p)->pos;
    jj_node *expr = parse_math1(p);
    jj_node *cmp = NULL;
    for (;;) {
        static const struct {
            const char *text;
            jj_binop op;
        } ops[] = {{"==", OP_EQ}, {"!=", OP_NE}, {"<", OP_LT},
                   {"<=", OP_LE}, {">", OP_GT},  {">=", OP_GE}};
        int op = -1;
        const jj_token *t = jj_peek(p);
        for (size_t k = 0; k < sizeof(ops) / sizeof(*ops); k++)
            if (jj_tok_is(t, T_OP, ops[k].text)) op = (int)ops[k].op;
        if (op >= 0) {
            jj_next(p);
        } else if (jj_tok_is(t, T_NAME, "in")) {
            jj_next(p);
            op = OP_IN;
        } else if (jj_tok_is(t, T_NAME, "not") && jj_tok_is(jj_peek2(p), T_NAME, "in")) {
            jj_next(p);
            jj_next(p);
            op = OP_NOTIN;
        } else {
            break;
        }
        if (!cmp) {
            cmp = jj_node_new(p, E_COMPARE, pos);
            cmp->a = expr;
        }
        jj_node *operand = jj_node_new(p, E_OPERAND, t->pos);
        operand->op = op;
        operand->a = parse_math1(p);
        jj_nodes_push(p, &cmp->args, operand);
    }
    return cmp ? cmp : expr;
}

static jj_node *parse_concat(jj_parser *p);
static jj_node *parse_math2(jj_parser *p);
static jj_node *parse_pow(jj_parser *p);

/* `+` and `-`, left to right. */
static jj_node *parse_math1(jj_parser *p) {
    jj_node *left = parse_concat(p);
    for (;;) {
        int op = is_op(p, "+") ? OP_ADD : is_op(p, "-") ? OP_SUB : -1;
        if (op < 0) return left;
        size_t pos = jj_next(p)->pos;
        left = binary(p, E_BINARY, op, pos, left, parse_concat(p));
    }
}

/* `~` binds tighter than + and -, looser than * and / (jinja2's parse_concat). */
static jj_node *parse_concat(jj_parser *p) {
    size_t pos = jj_peek(p)->pos;
    jj_node *first = parse_math2(p);
    if (!is_op(p, "~")) return first;
    jj_node *n = jj_node_new(p, E_CONCAT, pos);
    jj_nodes_push(p, &n->args, first);
    while (jj_skip_if(p, T_OP, "~"))
        jj_nodes_push(p, &n->args, parse_math2(p));
    return n;
}

/* `*`, `/`, `//` and `%`, left to right. */
static jj_node *parse_math2(jj_parser *p) {
    jj_node *left = parse_pow(p);
    for (;;) {
        int op = is_op(p, "*")    ? OP_MUL
                 : is_op(p, "/")  ? OP_DIV
                 : is_op(p, "//") ? OP_FLOORDIV
                 : is_op(p, "%")  ? OP_MOD
                                  : -1;
        if (op < 0) return left;
        size_t pos = jj_next(p)->pos;
        left = binary(p, E_BINARY, op, pos, left, parse_pow(p));
    }
}

/* `**` is left-associative in Jinja (2**3**2 is 64), unlike Python. */
static jj_node *parse_pow(jj_parser *p) {
    jj_node *left = parse_unary(p, true);
    while (is_op(p, "**")) {
        size_t pos = jj_next(p)->pos;
        left = binary(p, E_BINARY, OP_POW, pos, left, parse_unary(p, true));
    }
    return left;
}

static jj_node *parse_filter_expr(jj_parser *p, jj_node *node);

/* Unary minus applies before filters: -x|abs is abs(-x). */
static jj_node *parse_unary(jj_parser *p, bool with_filter) {
    jj_parse_enter(p);
    const jj_token *t = jj_peek(p);
    jj_node *node;
    if (jj_tok_is(t, T_OP, "-") || jj_tok_is(t, T_OP, "+")) {
        jj_next(p);
        node = jj_node_new(p, t->p[0] == '-' ? E_NEG : E_POS, t->pos);
        node->a = parse_unary(p, false);
    } else {
        node = jj_parse_primary(p, false);
    }
    node = parse_postfix(p, node);
    if (with_filter) node = parse_filter_expr(p, node);
    p->depth--;
    return node;
}

/* A list literal [a, b, ] (a trailing comma is allowed). */
static jj_node *parse_list(jj_parser *p) {
    jj_node *n = jj_node_new(p, E_LIST, jj_expect(p, T_OP, "[")->pos);
    while (!is_op(p, "]")) {
        if (n->args.n) jj_expect(p, T_OP, ",");
        if (is_op(p, "]")) break;
        jj_nodes_push(p, &n->args, jj_parse_expression(p, true));
    }
    jj_expect(p, T_OP, "]");
    return n;
}

/* A dict literal {k: v, ...}. */
static jj_node *parse_dict(jj_parser *p) {
    jj_node *n = jj_node_new(p, E_DICT, jj_expect(p, T_OP, "{")->pos);
    while (!is_op(p, "}")) {
        if (n->args.n) jj_expect(p, T_OP, ",");
        if (is_op(p, "}")) break;
        jj_nodes_push(p, &n->args, jj_parse_expression(p, true));
        jj_expect(p, T_OP, ":");
        jj_nodes_push(p, &n->kwargs, jj_parse_expression(p, true));
    }
    jj_expect(p, T_OP, "}");
    return n;
}

/* A name, a literal (string, number, true/false/none), a parenthesised expression or tuple,
 * a list or a dict; with_namespace also takes `ns.attr` as an assignment target. */
jj_node *jj_parse_primary(jj_parser *p, bool with_namespace) {
    const jj_token *t = jj_peek(p);
    jj_node *n;
    if (t->type == T_NAME) {
        jj_next(p);
        n = jj_node_new(p, E_CONST, t->pos);
        if (jj_tok_is(t, T_NAME, "true") || jj_tok_is(t, T_NAME, "True")) {
            n->value = jv_bool(true);
        } else if (jj_tok_is(t, T_NAME, "false") || jj_tok_is(t, T_NAME, "False")) {
            n->value = jv_bool(false);
        } else if (jj_tok_is(t, T_NAME, "none") || jj_tok_is(t, T_NAME, "None")) {
            n->value = jv_none();
        } else if (with_namespace && is_op(p, ".")) {
            jj_next(p);
            n->kind = E_NSREF;
            n->name = tok_name(p, t);
            n->attr = tok_name(p, jj_expect(p, T_NAME, NULL));
        } else {
            n->kind = E_NAME;
            n->name = tok_name(p, t);
            if (p->macro) {
                if (!strcmp(n->name, "varargs")) p->macro->uses_varargs = true;
                if (!strcmp(n->name, "kwargs")) p->macro->uses_kwargs = true;
                if (!strcmp(n->name, "caller")) p->macro->uses_caller = true;
            }
        }
        return n;
    }
    if (t->type == T_STRING) {
        /* Adjacent string literals join, as in Python. */
        jj_next(p);
        jj_buf b = {0};
        jj_buf_put(p->ctx, &b, t->p, t->n);
        while (jj_peek(p)->type == T_STRING) {
            const jj_token *u = jj_next(p);
            jj_buf_put(p->ctx, &b, u->p, u->n);
        }
        n = jj_node_new(p, E_CONST, t->pos);
        n->value = jv_str(b.p ? b.p : "", b.n);
        return n;
    }
    if (t->type == T_INT || t->type == T_FLOAT) {
        jj_next(p);
        n = jj_node_new(p, E_CONST, t->pos);
        n->value = t->type == T_INT ? jv_int(t->i) : jv_float(t->f);
        return n;
    }
    if (jj_tok_is(t, T_OP, "(")) {
        jj_next(p);
        n = jj_parse_tuple(p, false, true, NULL, true, false);
        jj_expect(p, T_OP, ")");
        return n;
    }
    if (jj_tok_is(t, T_OP, "[")) return parse_list(p);
    if (jj_tok_is(t, T_OP, "{")) return parse_dict(p);
    jj_fail_at(p->ctx, t->pos, "unexpected %s", jj_describe(p, t));
}

/* Tuples need no parentheses (`for a, b in ...`, `set a, b = ...`), so the end of one is marked
 * by the token that follows. */
static bool is_tuple_end(const jj_parser *p, const char *extra_end) {
    const jj_token *t = jj_peek(p);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || jj_tok_is(t, T_OP, ")")) return true;
    return extra_end && jj_tok_is(t, T_NAME, extra_end);
}

/* An expression or, with commas, a tuple (jinja2's parse_tuple). `simplified` takes only
 * names and literals (assignment targets); `extra_end` names a keyword that ends it ('in'). */
jj_node *jj_parse_tuple(jj_parser *p, bool simplified, bool with_condexpr, const char *extra_end,
                        bool explicit_parens, bool with_namespace) {
    size_t pos = jj_peek(p)->pos;
    jj_node *t = jj_node_new(p, E_TUPLE, pos);
    bool is_tuple = false;
    for (;;) {
        if (t->args.n) jj_expect(p, T_OP, ",");
        if (is_tuple_end(p, extra_end)) break;
        jj_node *e = simplified ? jj_parse_primary(p, with_namespace)
                                : jj_parse_expression(p, with_condexpr);
        jj_nodes_push(p, &t->args, e);
        if (is_op(p, ","))
            is_tuple = true;
        else
            break;
    }
    if (!is_tuple) {
        if (t->args.n) return t->args.v[0];
        if (!explicit_parens)
            jj_fail_at(p->ctx, jj_peek(p)->pos, "expected an expression, got %s",
                       jj_describe(p, jj_peek(p)));
    }
    return t;
}

/* Call arguments: positional ones, then name=value ones; `*seq` (kept in c) and `**dict` (in d)
 * spread more of each, as in Python. */
static void parse_call_args(jj_parser *p, jj_node *call) {
    size_t open = jj_expect(p, T_OP, "(")->pos;
    bool need_comma = false;
    while (!is_op(p, ")")) {
        if (need_comma) {
            jj_expect(p, T_OP, ",");
            if (is_op(p, ")")) break;
        }
        if (is_op(p, "*")) {
            if (call->c || call->d)
                jj_fail_at(p->ctx, open, "invalid syntax for function call expression");
            jj_next(p);
            call->c = jj_parse_expression(p, true);
        } else if (is_op(p, "**")) {
            if (call->d) jj_fail_at(p->ctx, open, "invalid syntax for function call expression");
            jj_next(p);
            call->d = jj_parse_expression(p, true);
        } else if (jj_peek(p)->type == T_NAME && jj_tok_is(jj_peek2(p), T_OP, "=")) {
            if (call->d) jj_fail_at(p->ctx, open, "invalid syntax for function call expression");
            const jj_token *name = jj_next(p);
            jj_next(p);
            jj_node *kw = jj_node_new(p, E_PARAM, name->pos);
            kw->name = tok_name(p, name);
            kw->a = jj_parse_expression(p, true);
            jj_nodes_push(p, &call->kwargs, kw);
        } else {
            if (call->kwargs.n || call->c || call->d)
                jj_fail_at(p->ctx, open, "invalid syntax for function call expression");
            jj_nodes_push(p, &call->args, jj_parse_expression(p, true));
        }
        need_comma = true;
    }
    jj_expect(p, T_OP, ")");
}

/* The `a:b:c` of a subscript, or a plain expression. */
static jj_node *parse_subscribed(jj_parser *p, jj_node *obj, size_t pos) {
    jj_node *start = NULL;
    if (!is_op(p, ":")) {
        start = jj_parse_expression(p, true);
        if (!is_op(p, ":")) return start;
    }
    jj_next(p);
    jj_node *n = jj_node_new(p, E_SLICE, pos);
    n->a = obj;
    n->b = start;
    if (!is_op(p, ":") && !is_op(p, "]") && !is_op(p, ",")) n->c = jj_parse_expression(p, true);
    if (jj_skip_if(p, T_OP, ":") && !is_op(p, "]") && !is_op(p, ","))
        n->d = jj_parse_expression(p, true);
    return n;
}

/* `.name`, `.0` or `[...]` after an expression. */
static jj_node *parse_subscript(jj_parser *p, jj_node *node) {
    const jj_token *t = jj_next(p);
    if (jj_tok_is(t, T_OP, ".")) {
        const jj_token *a = jj_next(p);
        if (a->type == T_NAME) {
            jj_node *n = jj_node_new(p, E_ATTR, t->pos);
            n->a = node;
            n->name = tok_name(p, a);
            return n;
        }
        if (a->type != T_INT) jj_fail_at(p->ctx, a->pos, "expected name or number");
        jj_node *n = jj_node_new(p, E_ITEM, t->pos);
        n->a = node;
        n->b = jj_node_new(p, E_CONST, a->pos);
        n->b->value = jv_int(a->i);
        return n;
    }
    /* `[`: one subscript, a slice, or several (a tuple key). */
    jj_node *tuple = jj_node_new(p, E_TUPLE, t->pos);
    while (!is_op(p, "]")) {
        if (tuple->args.n) jj_expect(p, T_OP, ",");
        jj_nodes_push(p, &tuple->args, parse_subscribed(p, node, t->pos));
    }
    jj_expect(p, T_OP, "]");
    if (tuple->args.n == 1 && tuple->args.v[0]->kind == E_SLICE) return tuple->args.v[0];
    jj_node *n = jj_node_new(p, E_ITEM, t->pos);
    n->a = node;
    if (tuple->args.n == 1) {
        n->b = tuple->args.v[0];
    } else {
        for (size_t k = 0; k < tuple->args.n; k++)
            if (tuple->args.v[k]->kind == E_SLICE)
                jj_fail_at(p->ctx, tuple->args.v[k]->pos,
                           "a slice inside a tuple subscript is not supported");
        /* x[] subscripts with the empty tuple, as in Jinja */
        n->b = tuple;
    }
    return n;
}

/* A call is located where its callee is, so an error in it points at the function's name. */
static jj_node *parse_call(jj_parser *p, jj_node *callee) {
    jj_node *n = jj_node_new(p, E_CALL, callee->pos);
    n->a = callee;
    parse_call_args(p, n);
    return n;
}

/* Subscripts and calls after a primary expression. */
static jj_node *parse_postfix(jj_parser *p, jj_node *node) {
    for (;;) {
        if (is_op(p, ".") || is_op(p, "["))
            node = parse_subscript(p, node);
        else if (is_op(p, "("))
            node = parse_call(p, node);
        else
            return node;
    }
}

/* A dotted name (filters and tests may be named a.b). */
static const char *parse_dotted_name(jj_parser *p) {
    const jj_token *t = jj_expect(p, T_NAME, NULL);
    jj_buf b = {0};
    jj_buf_put(p->ctx, &b, t->p, t->n);
    while (jj_skip_if(p, T_OP, ".")) {
        const jj_token *u = jj_expect(p, T_NAME, NULL);
        jj_buf_putc(p->ctx, &b, '.');
        jj_buf_put(p->ctx, &b, u->p, u->n);
    }
    return b.p;
}

/* `| name(args)` filters, chained; start_inline parses the first without its '|' (filter
 * blocks). */
jj_node *jj_parse_filter(jj_parser *p, jj_node *input, bool start_inline) {
    while (is_op(p, "|") || start_inline) {
        if (!start_inline) jj_next(p);
        start_inline = false;
        jj_node *n = jj_node_new(p, E_FILTER, jj_peek(p)->pos);
        n->a = input;
        n->name = parse_dotted_name(p);
        if (is_op(p, "(")) parse_call_args(p, n);
        input = n;
    }
    return input;
}

/* `x is name`, `x is not name(args)`, `x is name arg`. */
static jj_node *parse_test(jj_parser *p, jj_node *node) {
    size_t pos = jj_next(p)->pos;
    bool negated = jj_skip_if(p, T_NAME, "not");
    jj_node *n = jj_node_new(p, E_TEST, pos);
    n->a = node;
    n->name = parse_dotted_name(p);
    const jj_token *t = jj_peek(p);
    if (jj_tok_is(t, T_OP, "(")) {
        parse_call_args(p, n);
    } else if ((t->type == T_NAME || t->type == T_STRING || t->type == T_INT ||
                t->type == T_FLOAT || jj_tok_is(t, T_OP, "[") || jj_tok_is(t, T_OP, "{")) &&
               !jj_tok_is(t, T_NAME, "else") && !jj_tok_is(t, T_NAME, "or") &&
               !jj_tok_is(t, T_NAME, "and")) {
        if (jj_tok_is(t, T_NAME, "is"))
            jj_fail_at(p->ctx, t->pos, "you cannot chain multiple tests with is");
        jj_nodes_push(p, &n->args, parse_postfix(p, jj_parse_primary(p, false)));
    }
    if (!negated) return n;
    jj_node *not = jj_node_new(p, E_NOT, pos);
    not ->a = n;
    return not ;
}

/* Filters, tests and calls after a unary expression, in any order. */
static jj_node *parse_filter_expr(jj_parser *p, jj_node *node) {
    for (;;) {
        if (is_op(p, "|"))
            node = jj_parse_filter(p, node, false);
        else if (is_name(p, "is"))
            node = parse_test(p, node);
        else if (is_op(p, "("))
            node = parse_call(p, node);
        else
            return node;
    }
}

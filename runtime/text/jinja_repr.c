/* Turning values into text the way Python does: str() for {{ }}, repr() inside containers
 * (['a', 1], {'k': None}), float repr (shortest round-trip digits: 0.1, 1e+16), and json.dumps
 * as transformers' tojson filter calls it. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* Python's float repr: the fewest digits that read back as the same double, positional between
 * 1e-4 and 1e16 and scientific outside, always with a '.0' or an exponent. */
void jj_float_repr(char *out, size_t size, double f) {
    if (isnan(f)) {
        snprintf(out, size, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, size, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0) {
        snprintf(out, size, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, f);
        if (strtod(buf, NULL) == f) break;
    }
    /* buf is [-]d[.ddd]e[+-]XX */
    const char *s = buf;
    bool neg = *s == '-';
    if (neg) s++;
    char digits[20];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp = atoi(s + 1);
    char res[64];
    int k = 0;
    if (neg) res[k++] = '-';
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            res[k++] = '0';
            res[k++] = '.';
            for (int i = 0; i < -exp - 1; i++)
                res[k++] = '0';
            for (int i = 0; i < nd; i++)
                res[k++] = digits[i];
        } else {
            for (int i = 0; i <= exp; i++)
                res[k++] = i < nd ? digits[i] : '0';
            res[k++] = '.';
            if (nd > exp + 1)
                for (int i = exp + 1; i < nd; i++)
                    res[k++] = digits[i];
            else
                res[k++] = '0';
        }
        res[k] = 0;
    } else {
        res[k++] = digits[0];
        if (nd > 1) {
            res[k++] = '.';
            for (int i = 1; i < nd; i++)
                res[k++] = digits[i];
        }
        snprintf(res + k, sizeof(res) - (size_t)k, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
    }
    snprintf(out, size, "%s", res);
}

/* Characters Python's repr() escapes because str.isprintable() says no: controls, format
 * characters, separators other than the space, surrogates and private use. */
static bool printable(uint32_t cp) {
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return false;
    if ((cp >= 0x600 && cp <= 0x605) || cp == 0x61C || cp == 0x6DD || cp == 0x70F || cp == 0x180E ||
        cp == 0x1680)
        return false;
    if ((cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
        (cp >= 0x205F && cp <= 0x206F) || cp == 0x3000)
        return false;
    if ((cp >= 0xD800 && cp <= 0xF8FF) || cp == 0xFEFF || (cp >= 0xFFF9 && cp <= 0xFFFB) ||
        cp >= 0xF0000 || cp == 0xFFFE || cp == 0xFFFF)
        return false;
    return true;
}

/* repr() of a string: single quotes unless only double quotes avoid escaping, and Python's
 * escapes for backslashes, quotes and unprintable characters. */
static void repr_string(jj_render *r, jj_buf *b, const char *s, size_t n) {
    jj_ctx *ctx = &r->ctx;
    jj_charge(r, n);
    bool has_single = memchr(s, '\'', n) != NULL, has_double = memchr(s, '"', n) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    jj_buf_putc(ctx, b, quote);
    for (size_t i = 0; i < n;) {
        size_t start = i;
        uint32_t cp = jj_utf8_next(s, n, &i);
        if (cp == (uint32_t)quote || cp == '\\') {
            jj_buf_putc(ctx, b, '\\');
            jj_buf_putc(ctx, b, (char)cp);
        } else if (cp == '\n') {
            jj_buf_puts(ctx, b, "\\n");
        } else if (cp == '\r') {
            jj_buf_puts(ctx, b, "\\r");
        } else if (cp == '\t') {
            jj_buf_puts(ctx, b, "\\t");
        } else if (!printable(cp)) {
            if (cp < 0x100)
                jj_buf_printf(ctx, b, "\\x%02x", cp);
            else if (cp < 0x10000)
                jj_buf_printf(ctx, b, "\\u%04x", cp);
            else
                jj_buf_printf(ctx, b, "\\U%08x", cp);
        } else {
            jj_buf_put(ctx, b, s + start, i - start);
        }
    }
    jj_buf_putc(ctx, b, quote);
}

/* {k: v, ...} with repr of keys and values. */
static void repr_dict_items(jj_render *r, jj_buf *b, const jj_dict *d) {
    jj_buf_putc(&r->ctx, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i) jj_buf_puts(&r->ctx, b, ", ");
        jj_repr_to(r, b, d->keys[i]);
        jj_buf_puts(&r->ctx, b, ": ");
        jj_repr_to(r, b, d->vals[i]);
    }
    jj_buf_putc(&r->ctx, b, '}');
}

/* repr() of a value: strings quoted, containers with repr of their items. */
void jj_repr_to(jj_render *r, jj_buf *b, jv v) {
    jj_ctx *ctx = &r->ctx;
    switch (v.type) {
    case JV_UNDEFINED:
        jj_buf_puts(ctx, b, "Undefined");
        return;
    case JV_STR:
        repr_string(r, b, v.u.s.p, v.u.s.n);
        return;
    case JV_LIST: {
        /* a generator prints as the list of what is left in it (Python prints its address) */
        bool tuple = v.flags & JV_FLAG_TUPLE;
        size_t first = v.u.list->lazy ? v.u.list->taken : 0;
        jj_enter(r);
        jj_charge(r, v.u.list->n);
        jj_buf_putc(ctx, b, tuple ? '(' : '[');
        for (size_t i = first; i < v.u.list->n; i++) {
            if (i > first) jj_buf_puts(ctx, b, ", ");
            jj_repr_to(r, b, v.u.list->items[i]);
        }
        if (tuple && v.u.list->n == 1) jj_buf_putc(ctx, b, ',');
        jj_buf_putc(ctx, b, tuple ? ')' : ']');
        jj_leave(r);
        return;
    }
    case JV_DICT:
        jj_enter(r);
        jj_charge(r, v.u.dict->n);
        repr_dict_items(r, b, v.u.dict);
        jj_leave(r);
        return;
    default:
        jj_str_to(r, b, v);
    }
}

/* str() of a value, which {{ }} prints: None, True/False, Python's float repr, containers as
 * repr, undefined as nothing. */
void jj_str_to(jj_render *r, jj_buf *b, jv v) {
    jj_ctx *ctx = &r->ctx;
    char num[64];
    switch (v.type) {
    case JV_UNDEFINED:
        return;
    case JV_NONE:
        jj_buf_puts(ctx, b, "None");
        return;
    case JV_BOOL:
        jj_buf_puts(ctx, b, v.u.b ? "True" : "False");
        return;
    case JV_INT:
        snprintf(num, sizeof(num), "%" PRId64, v.u.i);
        jj_buf_puts(ctx, b, num);
        return;
    case JV_FLOAT:
        jj_float_repr(num, sizeof(num), v.u.f);
        jj_buf_puts(ctx, b, num);
        return;
    case JV_STR:
        jj_buf_put(ctx, b, v.u.s.p, v.u.s.n);
        return;
    case JV_LIST:
    case JV_DICT:
        jj_repr_to(r, b, v);
        return;
    case JV_NAMESPACE:
        jj_enter(r);
        jj_buf_puts(ctx, b, "<Namespace ");
        repr_dict_items(r, b, v.u.dict);
        jj_buf_putc(ctx, b, '>');
        jj_leave(r);
        return;
    case JV_MACRO:
        jj_buf_printf(ctx, b, "<Macro '%s'>", v.u.macro->def->name);
        return;
    case JV_FUNC:
        if (v.u.func->kind == JF_METHOD)
            jj_buf_printf(ctx, b, "<built-in method %s of %s object>", v.u.func->name,
                          jj_type_name(v.u.func->self));
        else
            jj_buf_printf(ctx, b, "<function %s>", v.u.func->name);
        return;
    case JV_LOOP:
        jj_buf_printf(ctx, b, "<LoopContext %zu/%zu>", v.u.loop->index0 + 1, v.u.loop->items->n);
        return;
    }
}

/* str() of a value as a string value (a string is itself). */
jv jj_to_str(jj_render *r, jv v) {
    if (v.type == JV_STR) return v;
    jj_buf b = {0};
    jj_str_to(r, &b, v);
    return jv_str(b.p ? b.p : "", b.n);
}

/* A JSON string as json.dumps(ensure_ascii=False) writes it: only quotes, backslashes and
 * control characters escaped. */
static void json_str_out(jj_render *r, jj_buf *b, const char *s, size_t n) {
    jj_ctx *ctx = &r->ctx;
    jj_charge(r, n);
    jj_buf_putc(ctx, b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        jj_buf_put(ctx, b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"':
            jj_buf_puts(ctx, b, "\\\"");
            break;
        case '\\':
            jj_buf_puts(ctx, b, "\\\\");
            break;
        case '\n':
            jj_buf_puts(ctx, b, "\\n");
            break;
        case '\r':
            jj_buf_puts(ctx, b, "\\r");
            break;
        case '\t':
            jj_buf_puts(ctx, b, "\\t");
            break;
        case '\b':
            jj_buf_puts(ctx, b, "\\b");
            break;
        case '\f':
            jj_buf_puts(ctx, b, "\\f");
            break;
        default:
            jj_buf_printf(ctx, b, "\\u%04x", c);
        }
    }
    jj_buf_put(ctx, b, s + run, n - run);
    jj_buf_putc(ctx, b, '"');
}

/* A float in JSON as Python writes it (NaN and Infinity included, as json.dumps allows). */
static void json_float(jj_render *r, jj_buf *b, double f) {
    char num[64];
    if (isnan(f))
        snprintf(num, sizeof(num), "NaN");
    else if (isinf(f))
        snprintf(num, sizeof(num), f < 0 ? "-Infinity" : "Infinity");
    else
        jj_float_repr(num, sizeof(num), f);
    jj_buf_puts(&r->ctx, b, num);
}

/* A dict key as json.dumps writes it: strings as they are, numbers, booleans and None as text. */
static void json_key(jj_render *r, jj_buf *b, jv k) {
    switch (k.type) {
    case JV_STR:
        json_str_out(r, b, k.u.s.p, k.u.s.n);
        return;
    case JV_INT: {
        char num[32];
        snprintf(num, sizeof(num), "\"%" PRId64 "\"", k.u.i);
        jj_buf_puts(&r->ctx, b, num);
        return;
    }
    case JV_FLOAT:
        jj_buf_putc(&r->ctx, b, '"');
        json_float(r, b, k.u.f);
        jj_buf_putc(&r->ctx, b, '"');
        return;
    case JV_BOOL:
        jj_buf_puts(&r->ctx, b, k.u.b ? "\"true\"" : "\"false\"");
        return;
    case JV_NONE:
        jj_buf_puts(&r->ctx, b, "\"null\"");
        return;
    default:
        jj_error(r, "keys must be str, int, float, bool or None, not %s", jj_type_name(k));
    }
}

/* The newline and indentation before an item when indenting. */
static void json_newline(jj_render *r, jj_buf *b, const char *indent, int level) {
    jj_buf_putc(&r->ctx, b, '\n');
    for (int i = 0; i < level; i++)
        jj_buf_puts(&r->ctx, b, indent);
}

static const jj_dict *sorted_dict(jj_render *r, const jj_dict *d);

/* json.dumps of a value: null/true/false, Python's float repr, strings escaped as
 * ensure_ascii=False escapes them, keys in insertion order (or sorted), and with indent one item
 * per line. */
void jj_json_to(jj_render *r, jj_buf *b, jv v, const char *indent, const char *item_sep,
                const char *key_sep, bool sort_keys, int level) {
    jj_ctx *ctx = &r->ctx;
    switch (v.type) {
    case JV_NONE:
        jj_buf_puts(ctx, b, "null");
        return;
    case JV_BOOL:
        jj_buf_puts(ctx, b, v.u.b ? "true" : "false");
        return;
    case JV_INT:
        jj_str_to(r, b, v);
        return;
    case JV_FLOAT:
        json_float(r, b, v.u.f);
        return;
    case JV_STR:
        json_str_out(r, b, v.u.s.p, v.u.s.n);
        return;
    case JV_LIST: {
        const jj_list *l = v.u.list;
        if (l->lazy) jj_error(r, "Object of type generator is not JSON serializable");
        if (!l->n) {
            jj_buf_puts(ctx, b, "[]");
            return;
        }
        jj_enter(r);
        jj_charge(r, l->n);
        jj_buf_putc(ctx, b, '[');
        for (size_t i = 0; i < l->n; i++) {
            if (i) jj_buf_puts(ctx, b, item_sep);
            if (indent) json_newline(r, b, indent, level + 1);
            jj_json_to(r, b, l->items[i], indent, item_sep, key_sep, sort_keys, level + 1);
        }
        if (indent) json_newline(r, b, indent, level);
        jj_buf_putc(ctx, b, ']');
        jj_leave(r);
        return;
    }
    case JV_DICT: {
        const jj_dict *d = sort_keys ? sorted_dict(r, v.u.dict) : v.u.dict;
        if (!d->n) {
            jj_buf_puts(ctx, b, "{}");
            return;
        }
        jj_enter(r);
        jj_charge(r, d->n);
        jj_buf_putc(ctx, b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i) jj_buf_puts(ctx, b, item_sep);
            if (indent) json_newline(r, b, indent, level + 1);
            json_key(r, b, d->keys[i]);
            jj_buf_puts(ctx, b, key_sep);
            jj_json_to(r, b, d->vals[i], indent, item_sep, key_sep, sort_keys, level + 1);
        }
        if (indent) json_newline(r, b, indent, level);
        jj_buf_putc(ctx, b, '}');
        jj_leave(r);
        return;
    }
    default:
        if (v.type == JV_UNDEFINED && (v.flags & JV_FLAG_UNSAFE)) jj_undefined_fail(r, v);
        jj_error(r, "Object of type %s is not JSON serializable", jj_type_name(v));
    }
}

/* sort_keys=True: keys in order (Python compares them, so mixed key types are an error). */
static const jj_dict *sorted_dict(jj_render *r, const jj_dict *d) {
    jj_dict *s = jj_dict_new(&r->ctx, d->n);
    size_t *order = jj_alloc(&r->ctx, (d->n + 1) * sizeof(size_t));
    for (size_t i = 0; i < d->n; i++) {
        size_t j = i;
        while (j > 0 && jj_compare(r, d->keys[order[j - 1]], d->keys[i], "<") > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
        jj_charge(r, i);
    }
    for (size_t i = 0; i < d->n; i++) {
        s->keys[i] = d->keys[order[i]];
        s->vals[i] = d->vals[order[i]];
    }
    s->n = d->n;
    return s;
}

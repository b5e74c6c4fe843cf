/* Jinja's filters on text and numbers (upper, trim, replace, indent, int, round, tojson, ...)
 * and the table that finds a filter by name. The filters on sequences are in
 * jinja_filters_seq.c. tojson is transformers' version: json.dumps with ensure_ascii=False and
 * the default ", " and ": " separators, not Jinja's HTML-safe one. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/text/jinja_filters.h"
#include "runtime/text/jinja_internal.h"

/* str(), except that an unsafe value (a refused method) fails. */
jv jj_soft_str(jj_render *r, jv v) {
    if (v.type == JV_UNDEFINED && (v.flags & JV_FLAG_UNSAFE)) jj_undefined_fail(r, v);
    return jj_to_str(r, v);
}

/* Jinja's title filter (not str.title): the first character of every run not made of
 * spaces, '-', '(', '{', '[' or '<' is upper-cased and the rest lower-cased. */
static jv f_title(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    jv s = jj_soft_str(r, v);
    jj_charge(r, s.u.s.n);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    bool word_start = true;
    for (size_t i = 0; i < s.u.s.n;) {
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        bool sep = jj_is_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        jj_utf8_put(&r->ctx, &b, sep ? cp : word_start ? jj_to_upper(cp) : jj_to_lower(cp));
        word_start = sep;
    }
    return jv_str(b.p, b.n);
}

/* upper: str(value) in capitals. */
static jv f_upper(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jj_map_case(r, jj_soft_str(r, v), jj_to_upper, jj_to_upper);
}

/* lower: str(value) in small letters. */
static jv f_lower(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jj_map_case(r, jj_soft_str(r, v), jj_to_lower, jj_to_lower);
}

/* capitalize: first character upper-cased, the rest lower-cased. */
static jv f_capitalize(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jj_map_case(r, jj_soft_str(r, v), jj_to_upper, jj_to_lower);
}

/* trim(chars=None): str.strip of str(value). */
static jv f_trim(jj_render *r, jv v, const jj_args *a) {
    jv chars = jj_arg(a, 0, "chars", jv_none());
    if (chars.type != JV_NONE && chars.type != JV_STR) jj_error(r, "strip arg must be None or str");
    return jj_strip(r, jj_soft_str(r, v), chars, true, true);
}

/* replace(old, new, count=None): str.replace of str(value). */
static jv f_replace(jj_render *r, jv v, const jj_args *a) {
    jv old = jj_soft_str(r, jj_arg(a, 0, "old", jv_str("", 0)));
    jv new_ = jj_soft_str(r, jj_arg(a, 1, "new", jv_str("", 0)));
    jv count = jj_arg(a, 2, "count", jv_none());
    int64_t n = count.type == JV_NONE ? -1 : jj_as_int(r, count, "count");
    return jj_replace(r, jj_soft_str(r, v), old, new_, n);
}

/* string: str(value). */
static jv f_string(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jj_soft_str(r, v);
}

/* Parses a Python int() or float() literal: optional spaces, sign, digits with single
 * underscores between them. */
static bool parse_number(const char *s, size_t n, bool want_int, int base, int64_t *iv,
                         double *fv) {
    char buf[128];
    size_t k = 0, i = 0;
    while (i < n && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')))
        i++;
    while (n > i && (s[n - 1] == ' ' || (s[n - 1] >= '\t' && s[n - 1] <= '\r')))
        n--;
    if (i == n || n - i >= sizeof(buf)) return false;
    for (; i < n; i++) {
        if (s[i] == '_') {
            if (k == 0 || i + 1 >= n || !((buf[k - 1] | 32) >= '0') || s[i + 1] == '_')
                return false;
            continue;
        }
        buf[k++] = s[i];
    }
    buf[k] = 0;
    char *end;
    if (want_int) {
        if (strchr(buf, '.') || (base <= 10 && (strchr(buf, 'e') || strchr(buf, 'E'))))
            return false;
        if (base == 1 || base < 0 || base > 36) return false; /* Python: a ValueError */
        const char *d = buf + (buf[0] == '-' || buf[0] == '+');
        if (base == 0 && d[0] == '0' && d[1] >= '0' && d[1] <= '9') return false; /* not octal */
        errno = 0;
        long long x = strtoll(buf, &end, base);
        if (*end || errno) return false;
        *iv = x;
        return true;
    }
    *fv = strtod(buf, &end);
    if (*end) return false;
    /* strtod takes hex floats; Python's float() does not */
    return !strchr(buf, 'x') && !strchr(buf, 'X');
}

/* int(default=0, base=10): Jinja's do_int, which tries int() then int(float()) and falls
 * back to the default. */
static jv f_int(jj_render *r, jv v, const jj_args *a) {
    jv dflt = jj_arg(a, 0, "default", jv_int(0));
    int64_t base64 = jj_as_int(r, jj_arg(a, 1, "base", jv_int(10)), "base");
    int base = base64 < 0 || base64 > 36 ? -1 : (int)base64;
    switch (v.type) {
    case JV_UNDEFINED:
        jj_undefined_fail(r, v);
    case JV_INT:
        return v;
    case JV_BOOL:
        return jv_int(v.u.b);
    case JV_FLOAT:
        if (!isfinite(v.u.f)) return dflt;
        if (fabs(v.u.f) >= 9.2e18) jj_error(r, "int(%g) is beyond 64-bit integers", v.u.f);
        return jv_int((int64_t)v.u.f);
    case JV_STR: {
        int64_t i;
        double d;
        if (parse_number(v.u.s.p, v.u.s.n, true, base, &i, &d)) return jv_int(i);
        if (parse_number(v.u.s.p, v.u.s.n, false, 10, &i, &d) && isfinite(d)) {
            if (fabs(d) >= 9.2e18) jj_error(r, "int(%g) is beyond 64-bit integers", d);
            return jv_int((int64_t)d);
        }
        return dflt;
    }
    default:
        return dflt;
    }
}

/* float(default=0.0): float(value), or the default when that fails. */
static jv f_float(jj_render *r, jv v, const jj_args *a) {
    jv dflt = jj_arg(a, 0, "default", jv_float(0.0));
    switch (v.type) {
    case JV_UNDEFINED:
        jj_undefined_fail(r, v);
    case JV_FLOAT:
        return v;
    case JV_INT:
        return jv_float((double)v.u.i);
    case JV_BOOL:
        return jv_float(v.u.b);
    case JV_STR: {
        int64_t i;
        double d;
        if (parse_number(v.u.s.p, v.u.s.n, false, 10, &i, &d)) return jv_float(d);
        return dflt;
    }
    default:
        return dflt;
    }
}

/* abs: the absolute value of a number. */
static jv f_abs(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    if (v.type == JV_FLOAT) return jv_float(fabs(v.u.f));
    if (v.type == JV_INT || v.type == JV_BOOL) {
        int64_t i = v.type == JV_BOOL ? v.u.b : v.u.i;
        if (i == INT64_MIN) jj_error(r, "integer overflow");
        return jv_int(i < 0 ? -i : i);
    }
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    jj_error(r, "bad operand type for abs(): '%s'", jj_type_name(v));
}

/* default(value='', boolean=False), also `d`: the default for undefined (or, with boolean,
 * for any false value). */
static jv f_default(jj_render *r, jv v, const jj_args *a) {
    (void)r;
    jv dflt = jj_arg(a, 0, "default_value", jv_str("", 0));
    bool boolean = jj_truthy(jj_arg(a, 1, "boolean", jv_bool(false)));
    if (v.type == JV_UNDEFINED || (boolean && !jj_truthy(v))) return dflt;
    return v;
}

/* Adds \uXXXX escapes for every non-ASCII character (ensure_ascii=True); JSON text has them
 * only inside strings, so escaping the whole text is the same. */
static jv ascii_escape(jj_render *r, jv s) {
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    for (size_t i = 0; i < s.u.s.n;) {
        size_t start = i;
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        if (cp < 0x80) {
            jj_buf_put(&r->ctx, &b, s.u.s.p + start, i - start);
        } else if (cp < 0x10000) {
            jj_buf_printf(&r->ctx, &b, "\\u%04x", cp);
        } else {
            cp -= 0x10000;
            jj_buf_printf(&r->ctx, &b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10),
                          0xDC00 + (cp & 0x3FF));
        }
    }
    return jv_str(b.p, b.n);
}

/* tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False): transformers'
 * json.dumps call. */
static jv f_tojson(jj_render *r, jv v, const jj_args *a) {
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
    jj_check_args(r, a, "tojson", 4, names);
    bool ensure_ascii = jj_truthy(jj_arg(a, 0, "ensure_ascii", jv_bool(false)));
    jv indent_v = jj_arg(a, 1, "indent", jv_none());
    jv seps = jj_arg(a, 2, "separators", jv_none());
    bool sort_keys = jj_truthy(jj_arg(a, 3, "sort_keys", jv_bool(false)));
    const char *indent = NULL;
    if (indent_v.type == JV_STR) {
        indent = jj_strndup(&r->ctx, indent_v.u.s.p, indent_v.u.s.n);
    } else if (indent_v.type != JV_NONE) {
        int64_t n = jj_as_int(r, indent_v, "indent");
        if (n > 1000) jj_error(r, "tojson indent too large");
        char *spaces = jj_alloc(&r->ctx, (size_t)(n > 0 ? n : 0) + 1);
        memset(spaces, ' ', (size_t)(n > 0 ? n : 0));
        indent = spaces;
    }
    const char *item_sep = indent ? "," : ", ", *key_sep = ": ";
    if (seps.type != JV_NONE) {
        const jj_list *l = seps.type == JV_LIST ? seps.u.list : NULL;
        if (!l || l->n != 2 || l->items[0].type != JV_STR || l->items[1].type != JV_STR)
            jj_error(r, "tojson separators must be a pair of strings");
        item_sep = jj_strndup(&r->ctx, l->items[0].u.s.p, l->items[0].u.s.n);
        key_sep = jj_strndup(&r->ctx, l->items[1].u.s.p, l->items[1].u.s.n);
    }
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    jj_json_to(r, &b, v, indent, item_sep, key_sep, sort_keys, 0);
    jv s = jv_str(b.p, b.n);
    return ensure_ascii ? ascii_escape(r, s) : s;
}

/* Jinja's indent: every line but the first (and blank lines only with blank=True) gets the
 * indentation; width may be a number of spaces or a string. */
static jv f_indent(jj_render *r, jv v, const jj_args *a) {
    jv width = jj_arg(a, 0, "width", jv_int(4));
    bool first = jj_truthy(jj_arg(a, 1, "first", jv_bool(false)));
    bool blank = jj_truthy(jj_arg(a, 2, "blank", jv_bool(false)));
    jv ind;
    if (width.type == JV_STR) {
        ind = width;
    } else {
        int64_t n = jj_as_int(r, width, "width");
        if (n > 10000) jj_error(r, "indent width too large");
        char *sp = jj_alloc(&r->ctx, (size_t)(n > 0 ? n : 0) + 1);
        memset(sp, ' ', (size_t)(n > 0 ? n : 0));
        ind = jv_str(sp, (size_t)(n > 0 ? n : 0));
    }
    /* Jinja appends "\n" to the value itself, which only a string survives */
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    if (v.type != JV_STR)
        jj_error(r, "unsupported operand type(s) for +=: '%s' and 'str'", jj_type_name(v));
    jv s = v;
    /* s + "\n", split into lines as str.splitlines() does */
    jj_buf text = {0};
    jj_buf_put(&r->ctx, &text, s.u.s.p, s.u.s.n);
    jj_buf_putc(&r->ctx, &text, '\n');
    jj_args none = {0};
    jv lines_v = jj_call_method(r, jv_str(text.p, text.n), "splitlines", &none);
    const jj_list *lines = lines_v.u.list;
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    if (first) jj_buf_put(&r->ctx, &b, ind.u.s.p, ind.u.s.n);
    for (size_t i = 0; i < lines->n; i++) {
        jv line = lines->items[i];
        if (i) {
            jj_buf_putc(&r->ctx, &b, '\n');
            if (blank || line.u.s.n) jj_buf_put(&r->ctx, &b, ind.u.s.p, ind.u.s.n);
        }
        jj_buf_put(&r->ctx, &b, line.u.s.p, line.u.s.n);
        jj_charge(r, line.u.s.n + ind.u.s.n);
    }
    return jv_str(b.p, b.n);
}

/* safe: the text unchanged (transformers renders without autoescape). */
static jv f_safe(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    return jj_soft_str(r, v);
}

/* escape, e: HTML-escaped text, with markupsafe's entities. */
static jv f_escape(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    jv s = jj_soft_str(r, v);
    jj_charge(r, s.u.s.n);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        const char *rep = c == '&'    ? "&amp;"
                          : c == '<'  ? "&lt;"
                          : c == '>'  ? "&gt;"
                          : c == '"'  ? "&#34;"
                          : c == '\'' ? "&#39;"
                                      : NULL;
        if (rep)
            jj_buf_puts(&r->ctx, &b, rep);
        else
            jj_buf_putc(&r->ctx, &b, c);
    }
    return jv_str(b.p, b.n);
}

/* round(value, precision, method): 'common' is Python's round (half to even on the exact binary
 * value, which printf's correctly rounded %.*f gives), 'ceil' and 'floor' scale by 10**p. */
static jv f_round(jj_render *r, jv v, const jj_args *a) {
    int64_t precision = jj_as_int(r, jj_arg(a, 0, "precision", jv_int(0)), "precision");
    jv method = jj_arg(a, 1, "method", jv_cstr("common"));
    if (method.type != JV_STR) jj_error(r, "method must be 'common', 'ceil' or 'floor'");
    bool common = method.u.s.n == 6 && !memcmp(method.u.s.p, "common", 6);
    bool ceil_ = method.u.s.n == 4 && !memcmp(method.u.s.p, "ceil", 4);
    bool floor_ = method.u.s.n == 5 && !memcmp(method.u.s.p, "floor", 5);
    if (!common && !ceil_ && !floor_) jj_error(r, "method must be common, ceil or floor");
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    if (!jj_is_number(v)) jj_error(r, "type %s doesn't define __round__ method", jj_type_name(v));
    if (common && v.type != JV_FLOAT) {
        if (precision >= 0) return v.type == JV_BOOL ? jv_int(v.u.b) : v;
        /* round(1234, -2) == 1200: half to even on the integer */
        int64_t x = v.type == JV_BOOL ? v.u.b : v.u.i, p = 1;
        for (int64_t k = 0; k < -precision && p <= INT64_MAX / 10; k++)
            p *= 10;
        int64_t q = x / p, rem = x % p;
        if (rem < 0) {
            rem += p;
            q--;
        }
        if (rem * 2 > p || (rem * 2 == p && (q & 1))) q++;
        return jv_int(q * p);
    }
    double x = jj_as_double(v);
    if (common) {
        if (!isfinite(x) || precision > 300) return jv_float(x);
        if (precision < -308) return jv_float(0.0 * x);
        if (precision >= 0) {
            char buf[400];
            snprintf(buf, sizeof(buf), "%.*f", (int)precision, x);
            return jv_float(strtod(buf, NULL));
        }
        double p = pow(10.0, (double)-precision);
        double y = x / p, ry = nearbyint(y);
        return jv_float(ry * p);
    }
    double scale = pow(10.0, (double)precision);
    return jv_float((ceil_ ? ceil(x * scale) : floor(x * scale)) / scale);
}

/* wordcount: the number of runs of word characters. */
static jv f_wordcount(jj_render *r, jv v, const jj_args *a) {
    (void)a;
    jv s = jj_soft_str(r, v);
    int64_t count = 0;
    bool in_word = false;
    for (size_t i = 0; i < s.u.s.n;) {
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        bool w = jj_is_alpha(cp) || jj_is_digit(cp) || cp == '_';
        if (w && !in_word) count++;
        in_word = w;
    }
    return jv_int(count);
}

/* format(*args, **kwargs): str(value) % args, or % kwargs (Jinja's do_format). */
static jv f_format(jj_render *r, jv v, const jj_args *a) {
    if (a->n && a->nk)
        jj_error(r, "can't handle positional and keyword arguments at the same time");
    jv args;
    if (a->nk) {
        jj_dict *d = jj_dict_new(&r->ctx, a->nk);
        for (size_t i = 0; i < a->nk; i++)
            jj_dict_set(r, d, jv_cstr(a->knames[i]), a->kvals[i]);
        args = jv_dict_v(d);
    } else {
        jj_list *l = jj_list_new(&r->ctx, a->n);
        jj_copy(l->items, a->pos, a->n * sizeof(jv));
        l->n = a->n;
        args = jv_list_v(l, true);
    }
    return jj_percent_format(r, jj_soft_str(r, v), args);
}

/* center(width=80): str.center. */
static jv f_center(jj_render *r, jv v, const jj_args *a) {
    jj_args b = {.n = 1, .pos = (jv[]){jj_arg(a, 0, "width", jv_int(80))}};
    return jj_call_method(r, jj_soft_str(r, v), "center", &b);
}

/* attr(obj, name): a Python attribute only (a method, a namespace's or the loop's attribute),
 * never a dict's item, as Jinja's do_attr uses getattr alone. */
static jv f_attr(jj_render *r, jv v, const jj_args *a) {
    jv name = jj_arg(a, 0, "name", jv_none());
    if (name.type != JV_STR) jj_error(r, "attr name must be a string");
    bool unsafe;
    const char *cname = jj_strndup(&r->ctx, name.u.s.p, name.u.s.n);
    if (v.type == JV_NAMESPACE || v.type == JV_LOOP || jj_has_method(v, cname, &unsafe))
        return jj_getattr(r, v, name.u.s.p, name.u.s.n);
    return jj_undefined_attr(r, v, name.u.s.p, name.u.s.n);
}

typedef jv (*filter_fn)(jj_render *r, jv v, const jj_args *a);

static const struct {
    const char *name;
    filter_fn fn;
} filters[] = {
    {"abs", f_abs},
    {"attr", f_attr},
    {"batch", jj_f_batch},
    {"capitalize", f_capitalize},
    {"center", f_center},
    {"count", jj_f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", jj_f_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"first", jj_f_first},
    {"float", f_float},
    {"forceescape", f_escape},
    {"format", f_format},
    {"indent", f_indent},
    {"int", f_int},
    {"items", jj_f_items},
    {"join", jj_f_join},
    {"last", jj_f_last},
    {"length", jj_f_length},
    {"list", jj_f_list},
    {"lower", f_lower},
    {"map", jj_f_map},
    {"max", jj_f_max},
    {"min", jj_f_min},
    {"reject", jj_f_reject},
    {"rejectattr", jj_f_rejectattr},
    {"replace", f_replace},
    {"reverse", jj_f_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", jj_f_select},
    {"selectattr", jj_f_selectattr},
    {"sort", jj_f_sort},
    {"string", f_string},
    {"sum", jj_f_sum},
    {"title", f_title},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"unique", jj_f_unique},
    {"upper", f_upper},
    {"wordcount", f_wordcount},
};

/* Whether a filter of that name exists (the `filter` test). */
bool jj_filter_exists(const char *name) {
    for (size_t i = 0; i < sizeof(filters) / sizeof(*filters); i++)
        if (!strcmp(filters[i].name, name)) return true;
    return false;
}

/* Applies the named filter; an unknown name is an error when reached, as in Jinja 3. */
jv jj_apply_filter(jj_render *r, const char *name, jv value, const jj_args *args) {
    for (size_t i = 0; i < sizeof(filters) / sizeof(*filters); i++)
        if (!strcmp(filters[i].name, name)) return filters[i].fn(r, value, args);
    jj_error(r, "No filter named '%s'.", name);
}

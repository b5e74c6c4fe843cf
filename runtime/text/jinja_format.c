/* Python's printf-style string formatting, `'%s: %d' % (name, n)`, which Jinja templates reach
 * through the % operator: %s %r %d %i %f %e %g %x %o %c and %%, with flags, width, precision and
 * %(name)s keys into a dict, and Python's errors for too few or too many arguments. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* Pads `text` (n code points wide in Python's eyes) to `width`, left-justified with '-'. */
static void put_padded(jj_render *r, jj_buf *b, const char *text, size_t len, int64_t width,
                       bool left) {
    int64_t chars = (int64_t)jj_utf8_len(text, len);
    if (width > (int64_t)JJ_OUTPUT_LIMIT) jj_error(r, "format width too large");
    if (!left)
        for (int64_t i = chars; i < width; i++)
            jj_buf_putc(&r->ctx, b, ' ');
    jj_buf_put(&r->ctx, b, text, len);
    if (left)
        for (int64_t i = chars; i < width; i++)
            jj_buf_putc(&r->ctx, b, ' ');
}

/* A number for %d, %f and friends: ints, floats and bools; anything else is Python's TypeError. */
static jv number_arg(jj_render *r, jv v, char conv) {
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    if (!jj_is_number(v))
        jj_error(r, "%%%c format: %s is required, not %s", conv,
                 strchr("xXo", conv) ? "an integer" : "a real number", jj_type_name(v));
    return v;
}

/* One numeric conversion through C's printf, which rounds as Python does. */
static void put_number(jj_render *r, jj_buf *b, jv v, char conv, const char *flags, int64_t width,
                       int64_t prec) {
    char spec[32], out[512];
    if (width > 400 || prec > 300) jj_error(r, "format width or precision too large");
    int k = snprintf(spec, sizeof(spec), "%%%s", flags);
    if (width >= 0) k += snprintf(spec + k, sizeof(spec) - (size_t)k, "%d", (int)width);
    if (prec >= 0) k += snprintf(spec + k, sizeof(spec) - (size_t)k, ".%d", (int)prec);
    if (strchr("diuxXo", conv)) {
        int64_t i = v.type == JV_FLOAT ? (int64_t)v.u.f : v.type == JV_BOOL ? v.u.b : v.u.i;
        if (v.type == JV_FLOAT && !(v.u.f > -9.2e18 && v.u.f < 9.2e18))
            jj_error(r, "cannot convert float %g to an integer", v.u.f);
        snprintf(spec + k, sizeof(spec) - (size_t)k, "%s",
                 conv == 'x'   ? PRIx64
                 : conv == 'X' ? PRIX64
                 : conv == 'o' ? PRIo64
                               : PRId64);
        snprintf(out, sizeof(out), spec, i);
    } else {
        snprintf(spec + k, sizeof(spec) - (size_t)k, "%c", conv);
        snprintf(out, sizeof(out), spec, jj_as_double(v));
    }
    jj_buf_puts(&r->ctx, b, out);
}

jv jj_percent_format(jj_render *r, jv fmt, jv args) {
    const char *p = fmt.u.s.p;
    size_t n = fmt.u.s.n, next = 0;
    bool tuple = args.type == JV_LIST && (args.flags & JV_FLAG_TUPLE);
    /* Python takes anything indexable but a tuple or string as the "mapping" form: then unused
     * arguments are no error */
    bool mapping = args.type == JV_DICT || (args.type == JV_LIST && !tuple && !args.u.list->lazy);
    size_t count = tuple ? args.u.list->n : 1;
    bool used_mapping = false;
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    jj_charge(r, n);
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            jj_buf_putc(&r->ctx, &b, p[i]);
            continue;
        }
        if (++i >= n) jj_error(r, "incomplete format");
        jv value = jv_none();
        bool have_value = false;
        if (p[i] == '(') {
            if (args.type != JV_DICT) jj_error(r, "format requires a mapping");
            size_t close = i + 1;
            while (close < n && p[close] != ')')
                close++;
            if (close >= n) jj_error(r, "incomplete format key");
            jv *v = jj_dict_get_str(args.u.dict, p + i + 1, close - i - 1);
            if (!v) jj_error(r, "KeyError: '%.*s'", (int)(close - i - 1), p + i + 1);
            value = *v;
            have_value = used_mapping = true;
            i = close + 1;
        }
        char flags[8] = {0};
        int nf = 0;
        while (i < n && strchr("-+ #0", p[i]) && nf < 6)
            flags[nf++] = p[i++];
        int64_t width = -1, prec = -1;
        while (i < n && p[i] >= '0' && p[i] <= '9' && width < 100000)
            width = (width < 0 ? 0 : width * 10) + (p[i++] - '0');
        if (i < n && p[i] == '.') {
            prec = 0;
            i++;
            while (i < n && p[i] >= '0' && p[i] <= '9' && prec < 100000)
                prec = prec * 10 + (p[i++] - '0');
        }
        while (i < n && strchr("hlL", p[i]))
            i++;
        if (i >= n) jj_error(r, "incomplete format");
        char conv = p[i];
        if (conv == '%') {
            jj_buf_putc(&r->ctx, &b, '%');
            continue;
        }
        if (!strchr("srsadiuxXofFeEgGc", conv))
            jj_error(r, "unsupported format character '%c' (0x%x) at index %zu", conv,
                     (unsigned)(unsigned char)conv, i);
        if (!have_value) {
            if (next >= count) jj_error(r, "not enough arguments for format string");
            value = tuple ? args.u.list->items[next] : args;
            next++;
        }
        bool left = strchr(flags, '-') != NULL;
        if (conv == 's' || conv == 'r' || conv == 'a') {
            jj_buf text = {0};
            jj_buf_put(&r->ctx, &text, "", 0);
            if (conv == 's')
                jj_str_to(r, &text, value);
            else
                jj_repr_to(r, &text, value);
            size_t len = text.n;
            if (prec >= 0) { /* precision cuts to that many characters */
                size_t cut = 0;
                for (int64_t c = 0; c < prec && cut < len; c++)
                    jj_utf8_next(text.p, len, &cut);
                len = cut;
            }
            put_padded(r, &b, text.p, len, width, left);
        } else if (conv == 'c') {
            jj_buf one = {0};
            if (value.type == JV_STR && jj_utf8_len(value.u.s.p, value.u.s.n) == 1)
                jj_buf_put(&r->ctx, &one, value.u.s.p, value.u.s.n);
            else if (value.type == JV_INT && value.u.i >= 0 && value.u.i <= 0x10FFFF &&
                     !(value.u.i >= 0xD800 && value.u.i <= 0xDFFF))
                jj_utf8_put(&r->ctx, &one, (uint32_t)value.u.i);
            else
                jj_error(r, "%%c requires an int or a unicode character");
            put_padded(r, &b, one.p, one.n, width, left);
        } else {
            put_number(r, &b, number_arg(r, value, conv), conv, flags, width, prec);
        }
    }
    if (!used_mapping && !mapping && next < count)
        jj_error(r, "not all arguments converted during string formatting");
    return jv_str(b.p, b.n);
}

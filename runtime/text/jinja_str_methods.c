/* Python's str methods as templates call them (strip, split, startswith, replace, find, join,
 * format, ...), on UTF-8 text with code point positions and Python's Unicode whitespace. */
#include <string.h>

#include "runtime/text/jinja_internal.h"

/* A str-or-None argument of a str method. */
static jv str_arg(jj_render *r, const jj_args *a, size_t i, const char *name, const char *method) {
    jv v = jj_arg(a, i, name, jv_none());
    if (v.type == JV_UNDEFINED) jj_undefined_fail(r, v);
    if (v.type != JV_STR && v.type != JV_NONE)
        jj_error(r, "%s arg must be None or str, not %s", method, jj_type_name(v));
    return v;
}

/* Whether code point cp is one of `chars` (strip's argument), or whitespace when chars is None. */
static bool strip_match(jv chars, uint32_t cp) {
    if (chars.type != JV_STR) return jj_is_space(cp);
    for (size_t i = 0; i < chars.u.s.n;)
        if (jj_utf8_next(chars.u.s.p, chars.u.s.n, &i) == cp) return true;
    return false;
}

/* str.strip/lstrip/rstrip: chars (a string) or, when None, Unicode whitespace off the ends. */
jv jj_strip(jj_render *r, jv s, jv chars, bool left, bool right) {
    jj_charge(r, s.u.s.n);
    const char *p = s.u.s.p;
    size_t start = 0, end = s.u.s.n;
    if (left)
        while (start < end) {
            size_t k = start;
            if (!strip_match(chars, jj_utf8_next(p, end, &k))) break;
            start = k;
        }
    if (right)
        while (end > start) {
            size_t k = end - 1;
            while (k > start && ((unsigned char)p[k] & 0xC0) == 0x80)
                k--;
            size_t t = k;
            if (!strip_match(chars, jj_utf8_next(p, end, &t))) break;
            end = k;
        }
    return jv_str(p + start, end - start);
}

/* str.split / str.rsplit. Without a separator: runs of whitespace, none at the ends. */
static jv split(jj_render *r, jv s, jv sep, int64_t maxsplit, bool from_right) {
    jj_charge(r, s.u.s.n);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    jj_list *parts = jj_list_new(&r->ctx, 0);
    if (sep.type == JV_STR) {
        if (sep.u.s.n == 0) jj_error(r, "empty separator");
        size_t m = sep.u.s.n;
        if (!from_right) {
            size_t start = 0;
            for (size_t i = 0; i + m <= n && maxsplit != 0;) {
                if (memcmp(p + i, sep.u.s.p, m) == 0) {
                    jj_list_push(&r->ctx, parts, jv_str(p + start, i - start));
                    i += m;
                    start = i;
                    maxsplit--;
                } else {
                    i++;
                }
            }
            jj_list_push(&r->ctx, parts, jv_str(p + start, n - start));
            return jv_list_v(parts, false);
        }
        size_t end = n;
        for (size_t i = n; i >= m && maxsplit != 0;) {
            if (memcmp(p + i - m, sep.u.s.p, m) == 0) {
                jj_list_push(&r->ctx, parts, jv_str(p + i, end - i));
                i -= m;
                end = i;
                maxsplit--;
            } else {
                i--;
            }
        }
        jj_list_push(&r->ctx, parts, jv_str(p, end));
    } else if (!from_right) {
        size_t i = 0;
        for (;;) {
            while (i < n) {
                size_t k = i;
                if (!jj_is_space(jj_utf8_next(p, n, &k))) break;
                i = k;
            }
            if (i >= n) break;
            if (maxsplit == 0) {
                /* the rest, less trailing whitespace */
                jv rest = jj_strip(r, jv_str(p + i, n - i), jv_none(), false, true);
                jj_list_push(&r->ctx, parts, rest);
                break;
            }
            size_t start = i;
            while (i < n) {
                size_t k = i;
                if (jj_is_space(jj_utf8_next(p, n, &k))) break;
                i = k;
            }
            jj_list_push(&r->ctx, parts, jv_str(p + start, i - start));
            maxsplit--;
        }
        return jv_list_v(parts, false);
    } else {
        size_t i = n;
        for (;;) {
            jv head = jj_strip(r, jv_str(p, i), jv_none(), false, true);
            i = head.u.s.n;
            if (i == 0) break;
            if (maxsplit == 0) {
                jj_list_push(&r->ctx, parts, head);
                break;
            }
            size_t end = i;
            while (i > 0) {
                size_t k = i - 1;
                while (k > 0 && ((unsigned char)p[k] & 0xC0) == 0x80)
                    k--;
                size_t t = k;
                if (jj_is_space(jj_utf8_next(p, n, &t))) break;
                i = k;
            }
            jj_list_push(&r->ctx, parts, jv_str(p + i, end - i));
            maxsplit--;
        }
    }
    /* rsplit collected from the end: put the parts back in order */
    for (size_t i = 0, j = parts->n ? parts->n - 1 : 0; i < j; i++, j--) {
        jv t = parts->items[i];
        parts->items[i] = parts->items[j];
        parts->items[j] = t;
    }
    return jv_list_v(parts, false);
}

/* str.splitlines: lines split at every line boundary Python knows (\r\n as one). */
static jv splitlines(jj_render *r, jv s, bool keepends) {
    jj_charge(r, s.u.s.n);
    jj_list *parts = jj_list_new(&r->ctx, 0);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, start = 0;
    for (size_t i = 0; i < n;) {
        size_t k = i;
        uint32_t cp = jj_utf8_next(p, n, &k);
        if (!jj_is_linebreak(cp)) {
            i = k;
            continue;
        }
        if (cp == '\r' && k < n && p[k] == '\n') k++;
        jj_list_push(&r->ctx, parts, jv_str(p + start, (keepends ? k : i) - start));
        start = i = k;
    }
    if (start < n) jj_list_push(&r->ctx, parts, jv_str(p + start, n - start));
    return jv_list_v(parts, false);
}

/* str.replace(old, new, count); an empty `old` inserts `new` between characters, as Python
 * does. */
jv jj_replace(jj_render *r, jv s, jv old, jv new_, int64_t count) {
    jj_charge(r, s.u.s.n);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, m = old.u.s.n;
    if (m == 0) {
        /* Python inserts `new` before every character and at the end */
        size_t i = 0;
        while (count != 0) {
            jj_buf_put(&r->ctx, &b, new_.u.s.p, new_.u.s.n);
            count--;
            if (i >= n) break;
            size_t k = i;
            jj_utf8_next(p, n, &k);
            jj_buf_put(&r->ctx, &b, p + i, k - i);
            i = k;
        }
        jj_buf_put(&r->ctx, &b, p + i, n - i);
        return jv_str(b.p, b.n);
    }
    size_t i = 0, start = 0;
    while (i + m <= n && count != 0) {
        const char *hit = memmem(p + i, n - i, old.u.s.p, m);
        if (!hit) break;
        i = (size_t)(hit - p);
        jj_buf_put(&r->ctx, &b, p + start, i - start);
        jj_buf_put(&r->ctx, &b, new_.u.s.p, new_.u.s.n);
        i += m;
        start = i;
        count--;
        jj_charge(r, new_.u.s.n);
    }
    jj_buf_put(&r->ctx, &b, p + start, n - start);
    return jv_str(b.p, b.n);
}

/* Maps every code point through `map`; Python's str.upper/lower and friends. */
jv jj_map_case(jj_render *r, jv s, uint32_t (*first)(uint32_t), uint32_t (*rest)(uint32_t)) {
    jj_charge(r, s.u.s.n);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    for (size_t i = 0; i < s.u.s.n;) {
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        jj_utf8_put(&r->ctx, &b, (b.n == 0 ? first : rest)(cp));
    }
    return jv_str(b.p, b.n);
}

/* Upper to lower and lower to upper (str.swapcase). */
static uint32_t swap_case(uint32_t cp) {
    uint32_t u = jj_to_upper(cp);
    return u != cp ? u : jj_to_lower(cp);
}

/* Python's str.title(): a cased character after an uncased one is upper-cased, the rest
 * lower-cased ("they're" becomes "They'Re"). */
static jv py_title(jj_render *r, jv s) {
    jj_charge(r, s.u.s.n);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    bool prev_cased = false;
    for (size_t i = 0; i < s.u.s.n;) {
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        jj_utf8_put(&r->ctx, &b, prev_cased ? jj_to_lower(cp) : jj_to_upper(cp));
        prev_cased = jj_is_upper(cp) || jj_is_lower(cp);
    }
    return jv_str(b.p, b.n);
}

/* The code point offsets of s and the [start, end) window the optional arguments select. */
static size_t *window(jj_render *r, jv s, const jj_args *a, size_t first, size_t *n_cp,
                      int64_t *start, int64_t *end) {
    size_t *off = jj_utf8_offsets(&r->ctx, s.u.s.p, s.u.s.n, n_cp);
    int64_t len = (int64_t)*n_cp;
    *start = 0;
    *end = len;
    jv vs = jj_arg(a, first, "start", jv_none()), ve = jj_arg(a, first + 1, "end", jv_none());
    if (vs.type != JV_NONE) *start = jj_as_int(r, vs, "slice index");
    if (ve.type != JV_NONE) *end = jj_as_int(r, ve, "slice index");
    if (*start < 0) *start = *start + len < 0 ? 0 : *start + len;
    if (*end < 0) *end = *end + len < 0 ? 0 : *end + len;
    if (*start > len) *start = len;
    if (*end > len) *end = len;
    return off;
}

/* find/rfind/index/rindex/count over code points. */
static int64_t find_sub(jj_render *r, jv s, jv sub, const jj_args *a, bool from_right,
                        bool count_all) {
    size_t n_cp;
    int64_t start, end;
    jj_charge(r, s.u.s.n);
    size_t *off = window(r, s, a, 1, &n_cp, &start, &end);
    if (sub.type != JV_STR) jj_error(r, "must be str, not %s", jj_type_name(sub));
    if (end < start) return count_all ? 0 : -1;
    const char *p = s.u.s.p + off[start];
    size_t n = off[end] - off[start], m = sub.u.s.n;
    if (count_all) {
        if (m == 0) return end - start + 1;
        int64_t c = 0;
        for (size_t i = 0; i + m <= n;) {
            const char *hit = memmem(p + i, n - i, sub.u.s.p, m);
            if (!hit) break;
            c++;
            i = (size_t)(hit - p) + m;
        }
        return c;
    }
    size_t found = SIZE_MAX;
    if (!from_right) {
        const char *hit = m == 0 ? p : memmem(p, n, sub.u.s.p, m);
        if (hit) found = (size_t)(hit - p);
    } else {
        for (size_t i = n >= m ? n - m + 1 : 0; i-- > 0;)
            if (memcmp(p + i, sub.u.s.p, m) == 0) {
                found = i;
                break;
            }
    }
    if (found == SIZE_MAX) return -1;
    return start + (int64_t)jj_utf8_len(p, found);
}

/* startswith/endswith with a string or a tuple of strings. */
static bool affix_match(jj_render *r, jv s, jv affix, bool suffix) {
    if (affix.type == JV_LIST && (affix.flags & JV_FLAG_TUPLE)) {
        for (size_t i = 0; i < affix.u.list->n; i++)
            if (affix_match(r, s, affix.u.list->items[i], suffix)) return true;
        return false;
    }
    if (affix.type == JV_UNDEFINED) jj_undefined_fail(r, affix);
    if (affix.type != JV_STR)
        jj_error(r, "%s first arg must be str or a tuple of str, not %s",
                 suffix ? "endswith" : "startswith", jj_type_name(affix));
    size_t m = affix.u.s.n;
    if (m > s.u.s.n) return false;
    return memcmp(s.u.s.p + (suffix ? s.u.s.n - m : 0), affix.u.s.p, m) == 0;
}

/* str.join: the items must be strings. */
static jv join(jj_render *r, jv sep, jv seq) {
    const jj_list *items = jj_iterate(r, seq);
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    for (size_t i = 0; i < items->n; i++) {
        jv v = items->items[i];
        if (v.type != JV_STR)
            jj_error(r, "sequence item %zu: expected str instance, %s found", i, jj_type_name(v));
        if (i) jj_buf_put(&r->ctx, &b, sep.u.s.p, sep.u.s.n);
        jj_buf_put(&r->ctx, &b, v.u.s.p, v.u.s.n);
    }
    jj_charge(r, b.n);
    return jv_str(b.p, b.n);
}

/* Whether s is non-empty and every character passes (str.isdigit and friends). */
static bool all_chars(jv s, bool (*pred)(uint32_t)) {
    if (s.u.s.n == 0) return false;
    for (size_t i = 0; i < s.u.s.n;)
        if (!pred(jj_utf8_next(s.u.s.p, s.u.s.n, &i))) return false;
    return true;
}

/* A letter or a digit. */
static bool is_alnum(uint32_t cp) {
    return jj_is_alpha(cp) || jj_is_digit(cp);
}

/* islower/isupper (and Jinja's lower/upper tests): at least one cased character, and none of
 * the other case. */
bool jj_str_is_case(jv s, bool upper) {
    bool cased = false;
    for (size_t i = 0; i < s.u.s.n;) {
        uint32_t cp = jj_utf8_next(s.u.s.p, s.u.s.n, &i);
        if (upper ? jj_is_lower(cp) : jj_is_upper(cp)) return false;
        if (upper ? jj_is_upper(cp) : jj_is_lower(cp)) cased = true;
    }
    return cased;
}

/* center/ljust/rjust(width, fillchar) (how < 0: left-justify, 0: center, > 0: right-justify). */
static jv pad(jj_render *r, jv s, const jj_args *a, int how) {
    int64_t width = jj_as_int(r, jj_arg(a, 0, "width", jv_int(0)), "width");
    jv fill = jj_arg(a, 1, "fillchar", jv_str(" ", 1));
    if (fill.type != JV_STR || jj_utf8_len(fill.u.s.p, fill.u.s.n) != 1)
        jj_error(r, "The fill character must be exactly one character long");
    int64_t len = (int64_t)jj_utf8_len(s.u.s.p, s.u.s.n);
    if (width <= len) return s;
    if (width > (int64_t)JJ_OUTPUT_LIMIT) jj_error(r, "padding width too large");
    int64_t total = width - len, left = how < 0   ? 0
                                        : how > 0 ? total
                                                  : total / 2 + (total & width & 1);
    jj_buf b = {0};
    jj_charge(r, (uint64_t)width);
    for (int64_t i = 0; i < left; i++)
        jj_buf_put(&r->ctx, &b, fill.u.s.p, fill.u.s.n);
    jj_buf_put(&r->ctx, &b, s.u.s.p, s.u.s.n);
    for (int64_t i = left; i < total; i++)
        jj_buf_put(&r->ctx, &b, fill.u.s.p, fill.u.s.n);
    return jv_str(b.p, b.n);
}

/* str.format with plain fields: {}, {0}, {name}, and {{ }} for braces. */
static jv format(jj_render *r, jv s, const jj_args *a) {
    jj_buf b = {0};
    jj_buf_put(&r->ctx, &b, "", 0);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, auto_index = 0;
    jj_charge(r, n);
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if ((c == '{' || c == '}') && i + 1 < n && p[i + 1] == c) {
            jj_buf_putc(&r->ctx, &b, c);
            i++;
            continue;
        }
        if (c == '}') jj_error(r, "Single '}' encountered in format string");
        if (c != '{') {
            jj_buf_putc(&r->ctx, &b, c);
            continue;
        }
        const char *close = memchr(p + i, '}', n - i);
        if (!close) jj_error(r, "Single '{' encountered in format string");
        size_t fn = (size_t)(close - p) - i - 1;
        const char *field = p + i + 1;
        if (memchr(field, ':', fn) || memchr(field, '!', fn) || memchr(field, '.', fn) ||
            memchr(field, '[', fn))
            jj_error(r, "format specifications in str.format are not supported");
        jv v;
        if (fn == 0) {
            if (auto_index >= a->n) jj_error(r, "Replacement index %zu out of range", auto_index);
            v = a->pos[auto_index++];
        } else if (field[0] >= '0' && field[0] <= '9') {
            size_t idx = 0;
            for (size_t k = 0; k < fn; k++)
                idx = idx * 10 + (size_t)(field[k] - '0');
            if (idx >= a->n) jj_error(r, "Replacement index %zu out of range", idx);
            v = a->pos[idx];
        } else {
            char *name = jj_strndup(&r->ctx, field, fn);
            if (!jj_has_arg(a, SIZE_MAX, name)) jj_error(r, "KeyError: '%s'", name);
            v = jj_arg(a, SIZE_MAX, name, jv_none());
        }
        jj_str_to(r, &b, v);
        i = (size_t)(close - p);
    }
    return jv_str(b.p, b.n);
}

/* Calls str method `m` (one jj_has_method lists) on s. */
jv jj_str_method(jj_render *r, jv s, const char *m, const jj_args *a) {
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        jv chars = str_arg(r, a, 0, "chars", m);
        return jj_strip(r, s, chars, m[0] != 'r', m[0] != 'l');
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        jv sep = str_arg(r, a, 0, "sep", m);
        int64_t maxsplit = jj_as_int(r, jj_arg(a, 1, "maxsplit", jv_int(-1)), "maxsplit");
        return split(r, s, sep, maxsplit, m[0] == 'r');
    }
    if (!strcmp(m, "splitlines"))
        return splitlines(r, s, jj_truthy(jj_arg(a, 0, "keepends", jv_bool(false))));
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        bool suffix = m[0] == 'e';
        if (jj_has_arg(a, 1, "start") || jj_has_arg(a, 2, "end")) {
            size_t n_cp;
            int64_t start, end;
            size_t *off = window(r, s, a, 1, &n_cp, &start, &end);
            if (end < start) return jv_bool(false);
            s = jv_str(s.u.s.p + off[start], off[end] - off[start]);
        }
        return jv_bool(affix_match(r, s, jj_arg(a, 0, "prefix", jv_none()), suffix));
    }
    if (!strcmp(m, "replace")) {
        jv old = jj_arg(a, 0, "old", jv_none()), new_ = jj_arg(a, 1, "new", jv_none());
        if (old.type != JV_STR || new_.type != JV_STR)
            jj_error(r, "replace() arguments must be str");
        int64_t count = jj_as_int(r, jj_arg(a, 2, "count", jv_int(-1)), "count");
        return jj_replace(r, s, old, new_, count);
    }
    if (!strcmp(m, "upper")) return jj_map_case(r, s, jj_to_upper, jj_to_upper);
    if (!strcmp(m, "lower") || !strcmp(m, "casefold"))
        return jj_map_case(r, s, jj_to_lower, jj_to_lower);
    if (!strcmp(m, "capitalize")) return jj_map_case(r, s, jj_to_upper, jj_to_lower);
    if (!strcmp(m, "swapcase")) return jj_map_case(r, s, swap_case, swap_case);
    if (!strcmp(m, "title")) return py_title(r, s);
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "rindex")) {
        bool right = m[0] == 'r';
        int64_t at = find_sub(r, s, jj_arg(a, 0, "sub", jv_none()), a, right, false);
        if (at < 0 && strstr(m, "index")) jj_error(r, "substring not found");
        return jv_int(at);
    }
    if (!strcmp(m, "count"))
        return jv_int(find_sub(r, s, jj_arg(a, 0, "sub", jv_none()), a, false, true));
    if (!strcmp(m, "join"))
        return join(r, s, jj_arg(a, 0, "iterable", jv_list_v(jj_list_new(&r->ctx, 0), false)));
    if (!strcmp(m, "isdigit")) return jv_bool(all_chars(s, jj_is_digit));
    if (!strcmp(m, "isalpha")) return jv_bool(all_chars(s, jj_is_alpha));
    if (!strcmp(m, "isalnum")) return jv_bool(all_chars(s, is_alnum));
    if (!strcmp(m, "isspace")) return jv_bool(all_chars(s, jj_is_space));
    if (!strcmp(m, "islower")) return jv_bool(jj_str_is_case(s, false));
    if (!strcmp(m, "isupper")) return jv_bool(jj_str_is_case(s, true));
    if (!strcmp(m, "center")) return pad(r, s, a, 0);
    if (!strcmp(m, "ljust")) return pad(r, s, a, -1);
    if (!strcmp(m, "rjust")) return pad(r, s, a, 1);
    if (!strcmp(m, "zfill")) {
        int64_t width = jj_as_int(r, jj_arg(a, 0, "width", jv_int(0)), "width");
        int64_t len = (int64_t)jj_utf8_len(s.u.s.p, s.u.s.n);
        if (width <= len) return s;
        if (width > (int64_t)JJ_OUTPUT_LIMIT) jj_error(r, "zfill width too large");
        jj_buf b = {0};
        size_t sign = s.u.s.n && (s.u.s.p[0] == '-' || s.u.s.p[0] == '+');
        jj_buf_put(&r->ctx, &b, s.u.s.p, sign);
        for (int64_t i = len; i < width; i++)
            jj_buf_putc(&r->ctx, &b, '0');
        jj_buf_put(&r->ctx, &b, s.u.s.p + sign, s.u.s.n - sign);
        return jv_str(b.p, b.n);
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        jv affix = jj_arg(a, 0, "prefix", jv_none());
        if (affix.type != JV_STR) jj_error(r, "%s() argument must be str", m);
        bool suffix = m[6] == 's';
        if (!affix_match(r, s, affix, suffix)) return s;
        return jv_str(s.u.s.p + (suffix ? 0 : affix.u.s.n), s.u.s.n - affix.u.s.n);
    }
    if (!strcmp(m, "format")) return format(r, s, a);
    jj_error(r, "'str' object has no attribute '%s'", m);
}

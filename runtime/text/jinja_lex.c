/* The lexer: splits template text into data and the tokens inside {{ }} and {% %}, dropping
 * comments, with Jinja's whitespace rules as transformers configures them (trim_blocks and
 * lstrip_blocks on). It follows jinja2/lexer.py rule by rule, so the same text comes out. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/jinja_internal.h"

typedef struct lexer {
    jj_ctx *ctx;
    const char *s;
    size_t n;
    jj_tokens out;
    size_t cap;
    bool line_starting; /* the previous match ended with a newline (lstrip_blocks needs it) */
} lexer;

/* Appends a token; the array grows in the arena. */
static jj_token *emit(lexer *lx, jj_tok_type type, size_t pos, const char *p, size_t n) {
    if (lx->out.n == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        lx->out.v = jj_grow(lx->ctx, lx->out.v, lx->cap * sizeof(jj_token), cap * sizeof(jj_token));
        lx->cap = cap;
    }
    jj_token *t = &lx->out.v[lx->out.n++];
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->pos = pos;
    t->p = p;
    t->n = n;
    return t;
}

/* The length of the run of (Unicode) whitespace at s[i], as Python's \s* matches it. */
static size_t space_run(const lexer *lx, size_t i) {
    size_t j = i;
    while (j < lx->n) {
        size_t k = j;
        if (!jj_is_space(jj_utf8_next(lx->s, lx->n, &k))) break;
        j = k;
    }
    return j - i;
}

/* Where the whitespace ending s[start..end) begins (str.rstrip()). */
static size_t rstrip_at(const lexer *lx, size_t start, size_t end) {
    size_t j = end;
    while (j > start) {
        size_t k = j - 1;
        while (k > start && ((unsigned char)lx->s[k] & 0xC0) == 0x80)
            k--;
        size_t t = k;
        if (!jj_is_space(jj_utf8_next(lx->s, lx->n, &t))) break;
        j = k;
    }
    return j;
}

/* Emits the text before a tag after the tag's whitespace control: `-` strips all whitespace
 * before it; otherwise, for block and comment tags, lstrip_blocks strips spaces between the
 * start of the line and the tag ("{%+" turns that off). */
static void emit_text(lexer *lx, size_t start, size_t end, char sign, bool lstrip) {
    if (sign == '-') {
        end = rstrip_at(lx, start, end);
    } else if (sign != '+' && lstrip) {
        size_t l_pos = start;
        for (size_t i = end; i > start; i--)
            if (lx->s[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        if ((l_pos > start || lx->line_starting) && l_pos < end &&
            space_run(lx, l_pos) == end - l_pos)
            end = l_pos;
    }
    if (end > start) emit(lx, T_DATA, start, lx->s + start, end - start);
}

/* Whether the source at i starts with `lit`. */
static bool at(const lexer *lx, size_t i, const char *lit) {
    size_t n = strlen(lit);
    return i + n <= lx->n && memcmp(lx->s + i, lit, n) == 0;
}

/* Matches `{%(-|+|)\s*NAME\s*` at i; returns the offset after it or 0. */
static size_t match_block_word(const lexer *lx, size_t i, const char *word, char *sign) {
    if (!at(lx, i, "{%")) return 0;
    i += 2;
    *sign = 0;
    if (i < lx->n && (lx->s[i] == '-' || lx->s[i] == '+')) *sign = lx->s[i++];
    i += space_run(lx, i);
    if (!at(lx, i, word)) return 0;
    i += strlen(word);
    return i + space_run(lx, i);
}

/* Matches the end of a block tag at i (`+%}`, `-%}` and following whitespace, or `%}` and with
 * trim_blocks one newline); returns the offset after it or 0. */
static size_t match_block_end(const lexer *lx, size_t i) {
    if (at(lx, i, "+%}")) return i + 3;
    if (at(lx, i, "-%}")) return i + 3 + space_run(lx, i + 3);
    if (at(lx, i, "%}")) return i + 2 + (i + 2 < lx->n && lx->s[i + 2] == '\n');
    return 0;
}

/* A comment: skipped up to its end, which takes the same whitespace control as a block's. Returns
 * the offset after it. */
static size_t lex_comment(lexer *lx, size_t tag, size_t i) {
    size_t start = i;
    for (; i < lx->n; i++) {
        size_t end = 0;
        if (at(lx, i, "+#}"))
            end = i + 3;
        else if (at(lx, i, "-#}"))
            end = i + 3 + space_run(lx, i + 3);
        else if (at(lx, i, "#}"))
            end = i + 2 + (i + 2 < lx->n && lx->s[i + 2] == '\n');
        if (end) {
            lx->line_starting = lx->s[end - 1] == '\n';
            return end;
        }
    }
    /* Jinja's lexer quietly stops at a "{#" that ends the template, and fails otherwise */
    if (start == lx->n) return lx->n;
    jj_fail_at(lx->ctx, tag, "missing end of comment tag");
}

/* {% raw %}...{% endraw %}: the text between is data, tags and all. */
static size_t lex_raw(lexer *lx, size_t tag, size_t body) {
    lx->line_starting = body > 0 && lx->s[body - 1] == '\n';
    for (size_t i = body; i < lx->n; i++) {
        if (lx->s[i] != '{') continue;
        char sign;
        size_t after = match_block_word(lx, i, "endraw", &sign);
        size_t end = after ? match_block_end(lx, after) : 0;
        if (!end) continue;
        emit_text(lx, body, i, sign, true);
        lx->line_starting = lx->s[end - 1] == '\n';
        return end;
    }
    jj_fail_at(lx->ctx, tag, "missing end of raw directive");
}

/* Identifier characters: ASCII letters, '_' and (checked by the caller) non-ASCII letters. */
static bool is_name_start(unsigned char c) {
    return c == '_' || (unsigned)((c | 32) - 'a') < 26u || c >= 0x80;
}

/* Identifier characters after the first: also digits. */
static bool is_name_char(unsigned char c) {
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/* `\d+(_\d+)*` at i; returns the end or i when there is none. */
static size_t digits(const lexer *lx, size_t i) {
    size_t j = i;
    while (j < lx->n && lx->s[j] >= '0' && lx->s[j] <= '9') {
        j++;
        if (j + 1 < lx->n && lx->s[j] == '_' && lx->s[j + 1] >= '0' && lx->s[j + 1] <= '9') j++;
    }
    return j;
}

/* Copies a number's text without its underscores. */
static char *number_text(lexer *lx, size_t i, size_t end) {
    char *t = jj_alloc(lx->ctx, end - i + 1);
    size_t k = 0;
    for (size_t j = i; j < end; j++)
        if (lx->s[j] != '_') t[k++] = lx->s[j];
    t[k] = 0;
    return t;
}

/* A float: digits then a fraction, an exponent, or both (jinja2's float_re). */
static size_t match_float(lexer *lx, size_t i) {
    if (i > 0 && lx->s[i - 1] == '.') return 0;
    size_t j = digits(lx, i);
    if (j == i) return 0;
    size_t frac = 0;
    if (j < lx->n && lx->s[j] == '.') {
        size_t k = digits(lx, j + 1);
        if (k > j + 1) frac = k;
    }
    size_t e = frac ? frac : j;
    if (e < lx->n && (lx->s[e] | 32) == 'e') {
        size_t k = e + 1;
        if (k < lx->n && (lx->s[k] == '+' || lx->s[k] == '-')) k++;
        size_t m = digits(lx, k);
        if (m > k) return m;
    }
    return frac;
}

/* A hex digit's value, or -1. */
static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = (char)(c | 32);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* An integer (jinja2's integer_re: 0b, 0o, 0x, decimal, and zero); sets *value. */
static size_t match_int(lexer *lx, size_t i, size_t pos, int64_t *value) {
    const char *s = lx->s;
    int base = 10;
    size_t j = i;
    if (s[i] == '0' && i + 2 < lx->n) {
        char b = (char)(s[i + 1] | 32);
        base = b == 'b' ? 2 : b == 'o' ? 8 : b == 'x' ? 16 : 10;
    }
    if (base != 10) {
        j = i + 2;
        size_t start = j;
        while (j < lx->n) {
            size_t k = j + (s[j] == '_');
            int d = k < lx->n ? hex_value(s[k]) : -1;
            if (d < 0 || d >= base) break;
            j = k + 1;
        }
        if (j == start) {
            base = 10;
            j = i;
        }
    }
    if (base == 10) {
        if (s[i] == '0') {
            j = i + 1;
            while (j < lx->n && (s[j] == '0' || (s[j] == '_' && j + 1 < lx->n && s[j + 1] == '0')))
                j++;
        } else if (s[i] >= '1' && s[i] <= '9') {
            j = digits(lx, i);
        } else {
            return 0;
        }
    }
    char *text = number_text(lx, base == 10 ? i : i + 2, j);
    uint64_t v = 0;
    for (const char *c = text; *c; c++) {
        uint64_t d = (uint64_t)hex_value(*c);
        if (v > (UINT64_MAX - d) / (uint64_t)base || v * (uint64_t)base + d > (uint64_t)INT64_MAX)
            jj_fail_at(lx->ctx, pos, "integer literal too large");
        v = v * (uint64_t)base + d;
    }
    *value = (int64_t)v;
    return j;
}

/* Decodes a string literal's escapes as Python's unicode-escape codec does (unknown escapes keep
 * their backslash). */
static void decode_string(lexer *lx, jj_token *t, size_t start, size_t end) {
    jj_buf b = {0};
    const char *s = lx->s;
    jj_buf_put(lx->ctx, &b, "", 0);
    for (size_t i = start; i < end;) {
        if (s[i] != '\\' || i + 1 >= end) {
            size_t j = i;
            while (j < end && s[j] != '\\')
                j++;
            if (j == i) j++;
            jj_buf_put(lx->ctx, &b, s + i, j - i);
            i = j;
            continue;
        }
        char c = s[i + 1];
        i += 2;
        const char *simple = strchr("\\'\"abfnrtv\n", c);
        if (simple && c) {
            static const char map[] = "\\'\"\a\b\f\n\r\t\v";
            if (c != '\n') jj_buf_putc(lx->ctx, &b, map[simple - "\\'\"abfnrtv\n"]);
            continue;
        }
        if (c >= '0' && c <= '7') {
            uint32_t v = (uint32_t)(c - '0');
            for (int k = 0; k < 2 && i < end && s[i] >= '0' && s[i] <= '7'; k++)
                v = v * 8 + (uint32_t)(s[i++] - '0');
            jj_utf8_put(lx->ctx, &b, v);
            continue;
        }
        int digits_needed = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
        if (!digits_needed) {
            jj_buf_putc(lx->ctx, &b, '\\');
            jj_buf_putc(lx->ctx, &b, c);
            continue;
        }
        uint32_t v = 0;
        for (int k = 0; k < digits_needed; k++) {
            int d = i < end ? hex_value(s[i]) : -1;
            if (d < 0) jj_fail_at(lx->ctx, t->pos, "truncated \\%c escape in string literal", c);
            v = v * 16 + (uint32_t)d;
            i++;
        }
        /* A UTF-16 surrogate pair written as two \u escapes is one character. */
        if (v >= 0xD800 && v <= 0xDBFF && i + 6 <= end && s[i] == '\\' && s[i + 1] == 'u') {
            uint32_t lo = 0;
            bool ok = true;
            for (int k = 0; k < 4; k++) {
                int d = hex_value(s[i + 2 + (size_t)k]);
                if (d < 0) ok = false;
                lo = lo * 16 + (uint32_t)(d < 0 ? 0 : d);
            }
            if (ok && lo >= 0xDC00 && lo <= 0xDFFF) {
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
            jj_fail_at(lx->ctx, t->pos, "invalid character \\%c escape in string literal", c);
        jj_utf8_put(lx->ctx, &b, v);
    }
    t->p = b.p;
    t->n = b.n;
}

static const char *const operators[] = {"**", "//", "==", "!=", ">=", "<=", "+", "-", "/",
                                        "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                        ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};

/* The inside of {{ }} or {% %}, up to and including its end. */
static size_t lex_tag(lexer *lx, size_t i, bool block) {
    char stack[JJ_PARSE_DEPTH];
    int depth = 0;
    while (i < lx->n) {
        const char *s = lx->s;
        if (depth == 0) {
            size_t end = 0;
            if (block)
                end = match_block_end(lx, i);
            else if (at(lx, i, "-}}"))
                end = i + 3 + space_run(lx, i + 3);
            else if (at(lx, i, "}}"))
                end = i + 2;
            if (end) {
                emit(lx, block ? T_BLOCK_END : T_VAR_END, i, s + i, end - i);
                lx->line_starting = s[end - 1] == '\n';
                return end;
            }
        }
        size_t sp = space_run(lx, i);
        if (sp) {
            i += sp;
            continue;
        }
        size_t end = match_float(lx, i);
        if (end) {
            jj_token *t = emit(lx, T_FLOAT, i, s + i, end - i);
            t->f = strtod(number_text(lx, i, end), NULL);
            i = end;
            continue;
        }
        int64_t iv;
        end = match_int(lx, i, i, &iv);
        if (end) {
            jj_token *t = emit(lx, T_INT, i, s + i, end - i);
            t->i = iv;
            i = end;
            continue;
        }
        if (is_name_start((unsigned char)s[i])) {
            end = i;
            while (end < lx->n && is_name_char((unsigned char)s[end])) {
                size_t k = end;
                uint32_t cp = jj_utf8_next(s, lx->n, &k);
                if (cp >= 0x80 && (jj_is_space(cp) || !jj_is_alpha(cp))) break;
                end = k;
            }
            if (end > i) {
                emit(lx, T_NAME, i, s + i, end - i);
                i = end;
                continue;
            }
        }
        if (s[i] == '\'' || s[i] == '"') {
            char q = s[i];
            size_t j = i + 1;
            while (j < lx->n && s[j] != q)
                j += (s[j] == '\\' && j + 1 < lx->n) ? 2 : 1;
            if (j < lx->n) {
                jj_token *t = emit(lx, T_STRING, i, NULL, 0);
                decode_string(lx, t, i + 1, j);
                i = j + 1;
                continue;
            }
            jj_fail_at(lx->ctx, i, "unterminated string literal");
        }
        const char *op = NULL;
        for (size_t k = 0; k < sizeof(operators) / sizeof(*operators); k++)
            if (at(lx, i, operators[k])) {
                op = operators[k];
                break;
            }
        if (!op) {
            size_t k = i;
            jj_utf8_next(s, lx->n, &k);
            jj_fail_at(lx->ctx, i, "unexpected character '%.*s'", (int)(k - i), s + i);
        }
        char c = op[0];
        if (!op[1] && (c == '(' || c == '[' || c == '{')) {
            if (depth == JJ_PARSE_DEPTH) jj_fail_at(lx->ctx, i, "brackets nest too deeply");
            stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
        } else if (!op[1] && (c == ')' || c == ']' || c == '}')) {
            if (depth == 0) jj_fail_at(lx->ctx, i, "unexpected '%c'", c);
            if (stack[depth - 1] != c)
                jj_fail_at(lx->ctx, i, "unexpected '%c', expected '%c'", c, stack[depth - 1]);
            depth--;
        }
        emit(lx, T_OP, i, op, strlen(op));
        i += strlen(op);
    }
    return i; /* the end of the template inside a tag: the parser reports it */
}

/* Tokenizes the whole template: data up to each tag, whitespace control applied, then the
 * tag's tokens. */
jj_tokens jj_lex(jj_ctx *ctx) {
    lexer lx = {.ctx = ctx, .s = ctx->src, .n = ctx->src_len, .line_starting = true};
    size_t pos = 0;
    while (pos < lx.n) {
        const char *hit = NULL;
        for (size_t i = pos; i + 1 < lx.n; i++) {
            if (lx.s[i] == '{' &&
                (lx.s[i + 1] == '{' || lx.s[i + 1] == '%' || lx.s[i + 1] == '#')) {
                hit = lx.s + i;
                break;
            }
            const char *next = memchr(lx.s + i + 1, '{', lx.n - i - 1);
            if (!next) break;
            i = (size_t)(next - lx.s) - 1;
        }
        if (!hit) {
            emit(&lx, T_DATA, pos, lx.s + pos, lx.n - pos);
            break;
        }
        size_t tag = (size_t)(hit - lx.s);
        char kind = hit[1];
        size_t after = tag + 2;
        char sign = 0;
        if (after < lx.n && (lx.s[after] == '-' || lx.s[after] == '+')) sign = lx.s[after++];
        if (kind == '%') {
            char raw_sign;
            size_t word_end = match_block_word(&lx, tag, "raw", &raw_sign);
            size_t raw_end = 0;
            if (word_end) {
                if (at(&lx, word_end, "-%}"))
                    raw_end = word_end + 3 + space_run(&lx, word_end + 3);
                else if (at(&lx, word_end, "%}"))
                    raw_end = word_end + 2;
            }
            if (raw_end) {
                emit_text(&lx, pos, tag, sign, true);
                pos = lex_raw(&lx, tag, raw_end);
                continue;
            }
        }
        emit_text(&lx, pos, tag, sign, kind != '{');
        lx.line_starting = false;
        if (kind == '#') {
            pos = lex_comment(&lx, tag, after);
            continue;
        }
        emit(&lx, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, tag, lx.s + tag, after - tag);
        pos = lex_tag(&lx, after, kind == '%');
    }
    emit(&lx, T_EOF, lx.n, NULL, 0);
    return lx.out;
}

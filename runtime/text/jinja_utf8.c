/* UTF-8 and the character classes Python's str methods use. Strings count, index and slice by
 * code point as Python does; case mapping covers ASCII, Latin-1, Latin Extended-A, Greek,
 * Cyrillic and fullwidth Latin, which is what chat templates meet in practice. */
#include "runtime/text/jinja_internal.h"
#include "runtime/utf8.h"

/* Decodes one code point. A malformed byte decodes as itself, so a bad string still has a length
 * and can be printed (template text is validated at parse time; JSON input is valid already). */
uint32_t jj_utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    size_t k = *i;
    unsigned char c = u[k];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len <= 1 || k + (size_t)len > n) {
        *i = k + 1;
        return c;
    }
    uint32_t cp = c & (0x7F >> len);
    for (int j = 1; j < len; j++) {
        if ((u[k + j] & 0xC0) != 0x80) {
            *i = k + 1;
            return c;
        }
        cp = (cp << 6) | (u[k + j] & 0x3F);
    }
    *i = k + (size_t)len;
    return cp;
}

/* Appends a code point as UTF-8. */
void jj_utf8_put(jj_ctx *ctx, jj_buf *b, uint32_t cp) {
    char t[4];
    jj_buf_put(ctx, b, t, moira_utf8_put(t, cp));
}

/* The number of code points (Python's len of a str). */
size_t jj_utf8_len(const char *s, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n;) {
        jj_utf8_next(s, n, &i);
        count++;
    }
    return count;
}

/* Strict validation (no overlongs, surrogates or values past U+10FFFF), as Python's decoder
 * would demand of the template text: the offset of the first bad byte, or n. */
size_t jj_utf8_check(const char *s, size_t n) {
    return moira_utf8_valid_prefix(s, n);
}

/* The byte offset of every code point, plus the end, for indexing and slicing by code point. */
size_t *jj_utf8_offsets(jj_ctx *ctx, const char *s, size_t n, size_t *n_cp) {
    size_t count = jj_utf8_len(s, n);
    size_t *off = jj_alloc(ctx, (count + 1) * sizeof(size_t));
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        off[k++] = i;
        jj_utf8_next(s, n, &i);
    }
    off[count] = n;
    *n_cp = count;
    return off;
}

/* str.isspace(): ASCII whitespace, the separators \x1c-\x1f, NEL, NBSP and the Unicode spaces. */
bool jj_is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* A line boundary for str.splitlines(). */
bool jj_is_linebreak(uint32_t cp) {
    return cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D ||
           cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

/* ASCII digits only (str.isdigit also takes other scripts' digits; templates do not use them). */
bool jj_is_digit(uint32_t cp) {
    return cp >= '0' && cp <= '9';
}

/* Lower-case letters of the covered scripts map to their capitals; everything else is itself. */
uint32_t jj_to_upper(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
    if (cp >= 0xE0 && cp <= 0xFE && cp != 0xF7) return cp - 32;
    if (cp == 0xFF) return 0x178;
    if (cp == 0xB5) return 0x39C;
    if (cp >= 0x100 && cp <= 0x17F) {
        if (cp == 0x131) return 'I';
        if (cp == 0x17F) return 'S';
        if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E))
            return (cp % 2 == 0) ? cp - 1 : cp;
        if (cp == 0x138 || cp == 0x149 || cp == 0x130) return cp;
        return (cp % 2 == 1) ? cp - 1 : cp;
    }
    if (cp >= 0x3B1 && cp <= 0x3C9 && cp != 0x3C2) return cp - 32;
    if (cp == 0x3C2) return 0x3A3;
    if (cp == 0x3AC) return 0x386;
    if (cp >= 0x3AD && cp <= 0x3AF) return cp - 37;
    if (cp == 0x3CC) return 0x38C;
    if (cp == 0x3CD || cp == 0x3CE) return cp - 63;
    if (cp >= 0x430 && cp <= 0x44F) return cp - 32;
    if (cp >= 0x450 && cp <= 0x45F) return cp - 80;
    if ((cp >= 0x460 && cp <= 0x481) || (cp >= 0x48A && cp <= 0x4BF) ||
        (cp >= 0x4D0 && cp <= 0x52F))
        return (cp % 2 == 1) ? cp - 1 : cp;
    if (cp >= 0xFF41 && cp <= 0xFF5A) return cp - 32;
    return cp;
}

/* The inverse of jj_to_upper over the same scripts. */
uint32_t jj_to_lower(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 32;
    if (cp == 0x178) return 0xFF;
    if (cp >= 0x100 && cp <= 0x17F) {
        if (cp == 0x130) return 'i';
        if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E))
            return (cp % 2 == 1) ? cp + 1 : cp;
        if (cp == 0x131 || cp == 0x138 || cp == 0x149 || cp == 0x17F) return cp;
        return (cp % 2 == 0) ? cp + 1 : cp;
    }
    if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 32;
    if (cp == 0x386) return 0x3AC;
    if (cp >= 0x388 && cp <= 0x38A) return cp + 37;
    if (cp == 0x38C) return 0x3CC;
    if (cp == 0x38E || cp == 0x38F) return cp + 63;
    if (cp >= 0x410 && cp <= 0x42F) return cp + 32;
    if (cp >= 0x400 && cp <= 0x40F) return cp + 80;
    if ((cp >= 0x460 && cp <= 0x481) || (cp >= 0x48A && cp <= 0x4BF) ||
        (cp >= 0x4D0 && cp <= 0x52F))
        return (cp % 2 == 0) ? cp + 1 : cp;
    if (cp >= 0xFF21 && cp <= 0xFF3A) return cp + 32;
    return cp;
}

/* A capital letter of the covered scripts. */
bool jj_is_upper(uint32_t cp) {
    return jj_to_lower(cp) != cp;
}

/* A small letter of the covered scripts (ß and the like have no capital here but count). */
bool jj_is_lower(uint32_t cp) {
    return jj_to_upper(cp) != cp || cp == 0xDF || cp == 0x138 || cp == 0x149;
}

/* Letters: ASCII and Latin-1 ones exactly; above that, anything that is neither space,
 * punctuation nor a symbol block counts (CJK, Cyrillic, Greek, ... are letters). */
bool jj_is_alpha(uint32_t cp) {
    if (cp < 0x80) return (cp | 32) >= 'a' && (cp | 32) <= 'z';
    if (cp < 0x100)
        return cp == 0xAA || cp == 0xB5 || cp == 0xBA || (cp >= 0xC0 && cp != 0xD7 && cp != 0xF7);
    if (jj_is_space(cp)) return false;
    if (cp >= 0x2000 && cp <= 0x2BFF) return false; /* punctuation, symbols, arrows, ... */
    if (cp >= 0x3000 && cp <= 0x303F) return false; /* CJK punctuation */
    if (cp >= 0xFF00 && cp <= 0xFF20) return false; /* fullwidth punctuation and digits */
    if (cp >= 0x1F000) return false;                /* emoji and symbols */
    return true;
}

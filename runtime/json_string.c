/* JSON string literals (see json_string.h). */
#include "runtime/json_string.h"

#include <string.h>

/* The code point a 2- or 3-byte sequence at `p` (with `avail` bytes left) that needs escaping
 * stands for, or 0: U+0085 (C2 85), U+2028 and U+2029 (E2 80 A8/A9), U+FEFF (EF BB BF). */
static unsigned line_breaker(const unsigned char *p, size_t avail, int *length) {
    if (avail >= 2 && p[0] == 0xC2 && p[1] == 0x85) {
        *length = 2;
        return 0x85;
    }
    if (avail < 3) return 0;
    if (p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
        *length = 3;
        return p[2] == 0xA8 ? 0x2028 : 0x2029;
    }
    if (p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) {
        *length = 3;
        return 0xFEFF;
    }
    return 0;
}

void moira_json_write_stringn(FILE *out, const char *text, size_t len) {
    fputc('"', out);
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    while (p < end) {
        int length = 1;
        unsigned escaped = *p >= 0x80 ? line_breaker(p, (size_t)(end - p), &length) : 0;
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20 || escaped)
            fprintf(out, "\\u%04x", escaped ? escaped : *p);
        else
            fputc(*p, out);
        p += length;
    }
    fputc('"', out);
}

void moira_json_write_string(FILE *out, const char *text) {
    moira_json_write_stringn(out, text, strlen(text));
}

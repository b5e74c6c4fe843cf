/* UTF-8 validation, iteration, encoding and the lossy streaming decoder (see utf8.h). */
#include "runtime/utf8.h"

#include <string.h>

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* The valid range of the first continuation byte after `lead` (RFC 3629's table), which rules out
 * overlong forms, surrogates and code points past U+10FFFF; 0 continuation bytes means invalid. */
static int sequence_shape(unsigned char lead, unsigned char *lower, unsigned char *upper) {
    *lower = 0x80;
    *upper = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) return 1;
    if (lead >= 0xE0 && lead <= 0xEF) {
        if (lead == 0xE0) *lower = 0xA0;
        if (lead == 0xED) *upper = 0x9F;
        return 2;
    }
    if (lead >= 0xF0 && lead <= 0xF4) {
        if (lead == 0xF0) *lower = 0x90;
        if (lead == 0xF4) *upper = 0x8F;
        return 3;
    }
    return 0;
}

size_t moira_utf8_sequence_length(const unsigned char *s, size_t avail) {
    if (avail == 0) return 0;
    if (s[0] < 0x80) return 1;
    unsigned char lower, upper;
    int needed = sequence_shape(s[0], &lower, &upper);
    if (needed == 0 || avail <= (size_t)needed) return 0;
    if (s[1] < lower || s[1] > upper) return 0;
    for (int k = 2; k <= needed; k++)
        if (s[k] < 0x80 || s[k] > 0xBF) return 0;
    return (size_t)needed + 1;
}

size_t moira_utf8_valid_prefix(const char *text, size_t len) {
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        size_t step = moira_utf8_sequence_length(p + i, len - i);
        if (step == 0) return i;
        i += step;
    }
    return len;
}

uint32_t moira_utf8_next(const char *text, size_t len, size_t *pos) {
    const unsigned char *p = (const unsigned char *)text + *pos;
    size_t left = len - *pos;
    if (p[0] < 0x80 || left < 2) {
        *pos += 1;
        return p[0];
    }
    if (p[0] < 0xE0) {
        *pos += 2;
        return ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (p[0] < 0xF0 || left < 4) {
        *pos += 3;
        return ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *pos += 4;
    return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) |
           ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

size_t moira_utf8_prev(const char *text, size_t floor, size_t end) {
    size_t start = end > floor ? end - 1 : floor;
    while (start > floor && ((unsigned char)text[start] & 0xC0) == 0x80)
        start--;
    return start;
}

size_t moira_utf8_put(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

void moira_utf8_decoder_reset(moira_utf8_decoder_t *decoder) {
    memset(decoder, 0, sizeof(*decoder));
    decoder->lower = 0x80;
    decoder->upper = 0xBF;
}

size_t moira_utf8_decode(moira_utf8_decoder_t *decoder, const unsigned char *bytes, size_t len,
                         char *out) {
    size_t written = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = bytes[i];
        if (decoder->needed == 0) {
            if (b < 0x80) {
                out[written++] = (char)b;
                continue;
            }
            decoder->needed = sequence_shape(b, &decoder->lower, &decoder->upper);
            if (decoder->needed == 0) {
                memcpy(out + written, replacement, 3);
                written += 3;
                moira_utf8_decoder_reset(decoder);
                continue;
            }
            decoder->held[0] = b;
            decoder->held_len = 1;
            continue;
        }
        if (b < decoder->lower || b > decoder->upper) {
            /* The maximal subpart so far is one error; the offending byte starts afresh. */
            memcpy(out + written, replacement, 3);
            written += 3;
            moira_utf8_decoder_reset(decoder);
            i--;
            continue;
        }
        decoder->lower = 0x80;
        decoder->upper = 0xBF;
        decoder->held[decoder->held_len++] = b;
        if (--decoder->needed == 0) {
            memcpy(out + written, decoder->held, (size_t)decoder->held_len);
            written += (size_t)decoder->held_len;
            moira_utf8_decoder_reset(decoder);
        }
    }
    return written;
}

size_t moira_utf8_decode_finish(moira_utf8_decoder_t *decoder, char *out) {
    bool held = decoder->held_len > 0;
    moira_utf8_decoder_reset(decoder);
    if (!held) return 0;
    memcpy(out, replacement, 3);
    return 3;
}

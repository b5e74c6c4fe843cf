/* GPT-2's byte-level alphabet: each of the 256 byte values stands for one printable code point, so
 * a vocabulary of strings can spell any byte sequence. Printable Latin-1 bytes stand for
 * themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen) take U+0100 upward in byte
 * order. */
#include "runtime/text/tokenizer_internal.h"

/* Whether a byte is one of the 188 that stand for themselves. */
static bool stands_for_itself(unsigned byte) {
    return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
           (byte >= 0xAE && byte <= 0xFF);
}

uint32_t moira_byte_level_char(uint8_t byte) {
    if (stands_for_itself(byte)) return byte;
    uint32_t shifted = 0;
    for (unsigned b = 0; b < byte; b++)
        if (!stands_for_itself(b)) shifted++;
    return 256 + shifted;
}

int moira_byte_level_byte(uint32_t cp) {
    if (cp < 256) return stands_for_itself(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t shifted = 0;
    for (unsigned b = 0; b < 256; b++) {
        if (stands_for_itself(b)) continue;
        if (shifted++ == cp - 256) return (int)b;
    }
    return -1;
}

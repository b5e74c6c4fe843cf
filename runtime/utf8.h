/* UTF-8, one implementation for every reader: validation (JSON headers, tokenizer input), code
 * point iteration and encoding, and a streaming decoder that replaces each maximal invalid
 * subsequence by U+FFFD exactly as the WHATWG Encoding Standard (JavaScript's TextDecoder) and
 * Rust's String::from_utf8_lossy do. */
#ifndef MOIRA_RUNTIME_UTF8_H
#define MOIRA_RUNTIME_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the valid UTF-8 sequence starting at s[0] (1 to 4 bytes), or 0 when it is malformed,
 * overlong, a surrogate, beyond U+10FFFF or cut off by the end of the `avail` bytes. */
size_t moira_utf8_sequence_length(const unsigned char *s, size_t avail);

/* Length of the longest valid UTF-8 prefix of `text`, so callers can say where input breaks. */
size_t moira_utf8_valid_prefix(const char *text, size_t len);

/* The code point at text[*pos] (valid UTF-8 assumed), advancing *pos past it. */
uint32_t moira_utf8_next(const char *text, size_t len, size_t *pos);

/* The start of the character that ends at text[end] (valid UTF-8 assumed), not before `floor`. */
size_t moira_utf8_prev(const char *text, size_t floor, size_t end);

/* Writes `cp` as UTF-8 into out (room for 4 bytes); returns the byte count. */
size_t moira_utf8_put(char *out, uint32_t cp);

/* A lossy UTF-8 decoder fed byte by byte. Output goes to a caller's buffer that has room for at
 * least 3 bytes per byte fed plus 3 (an invalid byte becomes the 3-byte U+FFFD). */
typedef struct moira_utf8_decoder {
    unsigned char held[4]; /* bytes of the character in progress */
    int held_len;
    int needed;                 /* continuation bytes the character still needs */
    unsigned char lower, upper; /* the allowed range of the next continuation byte */
} moira_utf8_decoder_t;

/* Starts (or restarts) a decoder with nothing held. */
void moira_utf8_decoder_reset(moira_utf8_decoder_t *decoder);

/* Decodes `len` bytes, appending complete characters (and U+FFFD for invalid sequences) to
 * out; returns the bytes written. A character cut at the end is held for the next call. */
size_t moira_utf8_decode(moira_utf8_decoder_t *decoder, const unsigned char *bytes, size_t len,
                         char *out);

/* Ends the stream: a held incomplete character becomes one U+FFFD. Returns the bytes written. */
size_t moira_utf8_decode_finish(moira_utf8_decoder_t *decoder, char *out);

#endif

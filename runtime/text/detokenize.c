/* Decoding ids to text, whole or streamed. Both go through the same detokenizer, so a stream's
 * pieces always add up to the whole decode. As Hugging Face's ByteLevel decoder does, the bytes of
 * consecutive vocabulary tokens are decoded as one UTF-8 run, and an added token ends the run (an
 * incomplete character before it becomes U+FFFD) and comes out as its own text. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_internal.h"
#include "runtime/utf8.h"

struct moira_detokenizer {
    const moira_tokenizer_t *tokenizer; /* borrowed */
    bool skip_special;
    moira_utf8_decoder_t utf8;
    char *out; /* the text one push can produce; owned */
    size_t out_capacity;
};

moira_status_t moira_detokenizer_create(const moira_tokenizer_t *tokenizer,
                                        bool skip_special_tokens, moira_detokenizer_t **out) {
    *out = NULL;
    moira_detokenizer_t *d = calloc(1, sizeof(*d));
    /* Worst case of one push: 3 held bytes and every byte of the token invalid (3 bytes each). */
    size_t capacity = 3 * ((size_t)tokenizer->max_token_bytes + 4) + 16;
    char *text = d ? malloc(capacity) : NULL;
    if (!text) {
        free(d);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "detokenizer");
    }
    *d = (moira_detokenizer_t){tokenizer, skip_special_tokens, {{0}, 0, 0, 0, 0}, text, capacity};
    moira_utf8_decoder_reset(&d->utf8);
    *out = d;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_detokenizer_push(moira_detokenizer_t *d, int32_t id, const char **text,
                                      size_t *len) {
    const moira_tokenizer_t *tokenizer = d->tokenizer;
    *text = d->out;
    *len = 0;
    if (id < 0 || id >= tokenizer->vocab_size || !(tokenizer->id_flags[id] & TOKEN_PRESENT))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "token id %d is not in the vocabulary (size %d)", id,
                                 tokenizer->vocab_size);
    uint8_t flags = tokenizer->id_flags[id];
    if (d->skip_special && (flags & TOKEN_SPECIAL)) return MOIRA_OK_STATUS;
    const unsigned char *bytes = (const unsigned char *)tokenizer->id_bytes[id];
    size_t count = tokenizer->id_bytes_len[id];
    if (flags & TOKEN_ADDED) {
        size_t written = moira_utf8_decode_finish(&d->utf8, d->out);
        memcpy(d->out + written, bytes, count);
        *len = written + count;
        return MOIRA_OK_STATUS;
    }
    *len = moira_utf8_decode(&d->utf8, bytes, count, d->out);
    return MOIRA_OK_STATUS;
}

void moira_detokenizer_finish(moira_detokenizer_t *d, const char **text, size_t *len) {
    *text = d->out;
    *len = moira_utf8_decode_finish(&d->utf8, d->out);
}

void moira_detokenizer_free(moira_detokenizer_t *d) {
    if (!d) return;
    free(d->out);
    free(d);
}

moira_status_t moira_tokenizer_decode(const moira_tokenizer_t *tokenizer, const int32_t *ids,
                                      size_t count, bool skip_special_tokens, char **out_text,
                                      size_t *out_len) {
    *out_text = NULL;
    *out_len = 0;
    moira_detokenizer_t *d;
    MOIRA_RETURN_IF_ERROR(moira_detokenizer_create(tokenizer, skip_special_tokens, &d));
    size_t capacity = 256, len = 0;
    char *text = malloc(capacity);
    moira_status_t status =
        text ? MOIRA_OK_STATUS : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "decoded text");
    for (size_t i = 0; !status && i <= count; i++) {
        const char *piece;
        size_t piece_len;
        if (i < count)
            status = moira_detokenizer_push(d, ids[i], &piece, &piece_len);
        else
            moira_detokenizer_finish(d, &piece, &piece_len);
        if (status) break;
        if (len + piece_len + 1 > capacity) {
            while (len + piece_len + 1 > capacity)
                capacity *= 2;
            char *grown = realloc(text, capacity);
            if (!grown) {
                status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "decoded text");
                break;
            }
            text = grown;
        }
        memcpy(text + len, piece, piece_len);
        len += piece_len;
    }
    moira_detokenizer_free(d);
    if (status) {
        free(text);
        return status;
    }
    text[len] = '\0';
    *out_text = text;
    *out_len = len;
    return MOIRA_OK_STATUS;
}

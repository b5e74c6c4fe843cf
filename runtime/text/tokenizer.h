/* The Hugging Face tokenizer of a model directory: text to token ids and back, exactly as
 * Hugging Face's tokenizers library does it for byte-level BPE models (DeepSeek V2/V3/R1, and the
 * many others that ship the same tokenizer.json shape).
 *
 * Encoding runs the tokenizer.json pipeline: added and special tokens are split out first
 * (leftmost-longest, their lstrip/rstrip/single_word flags), the rest goes through the
 * normalizer, the pre-tokenizer sequence (Split by Oniguruma regex or string, ByteLevel), and BPE
 * merges by rank; BOS/EOS come from tokenizer_config.json (add_bos_token, add_eos_token) or, where
 * it says nothing, from tokenizer.json's post-processor. Decoding maps ids back to bytes and
 * decodes UTF-8 as Hugging Face does (each invalid sequence becomes U+FFFD); the streaming
 * detokenizer holds back a character split across tokens until it is complete.
 *
 * A loaded tokenizer is immutable: any number of threads may encode and decode with it at once. */
#ifndef MOIRA_RUNTIME_TEXT_TOKENIZER_H
#define MOIRA_RUNTIME_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/status.h"

typedef struct moira_tokenizer moira_tokenizer_t;

/* A growable array of token ids. Zero-initialise it; release with moira_token_ids_free. */
typedef struct moira_token_ids {
    int32_t *ids; /* owned */
    size_t count;
    size_t capacity;
} moira_token_ids_t;

/* Appends one id, growing the array. Errors: OUT_OF_MEMORY. */
moira_status_t moira_token_ids_push(moira_token_ids_t *ids, int32_t id);

/* Releases the array and zeroes it; it may be reused afterwards. */
void moira_token_ids_free(moira_token_ids_t *ids);

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json. Malformed files (bad JSON, a merge that
 * names an unknown token, a regex Oniguruma refuses, a missing file) are INVALID_INPUT or
 * NOT_FOUND naming the file and, for JSON syntax, line:column; a component Moira does not
 * implement is UNSUPPORTED naming it. On success *out is owned by the caller. */
moira_status_t moira_tokenizer_load(const char *model_dir, moira_tokenizer_t **out);

/* The same from explicit paths. `config_path` may be NULL: no tokenizer_config.json (then BOS and
 * EOS come from tokenizer.json's post-processor and there is no chat template). */
moira_status_t moira_tokenizer_load_files(const char *tokenizer_path, const char *config_path,
                                          moira_tokenizer_t **out);

/* The same from the files' texts already in memory (`config_json` may be NULL), as a server that
 * received them or a fuzz target does; messages name the files by their usual names. */
moira_status_t moira_tokenizer_load_texts(const char *tokenizer_json, size_t tokenizer_len,
                                          const char *config_json, size_t config_len,
                                          moira_tokenizer_t **out);

/* Releases a tokenizer. Accepts NULL. */
void moira_tokenizer_free(moira_tokenizer_t *tokenizer);

/* Appends the ids of `len` bytes of `text` to `ids`. With `add_special_tokens` the ids are framed
 * as `tokenizer(text).input_ids` frames them (BOS first when add_bos_token). The text must be
 * valid UTF-8 (INVALID_ARGUMENT otherwise: a Hugging Face string cannot hold anything else). */
moira_status_t moira_tokenizer_encode(const moira_tokenizer_t *tokenizer, const char *text,
                                      size_t len, bool add_special_tokens, moira_token_ids_t *ids);

/* Decodes `count` ids to text as `tokenizer.decode(ids)` does: special tokens kept unless
 * `skip_special_tokens`, invalid UTF-8 as U+FFFD. An id outside the vocabulary is
 * INVALID_ARGUMENT. On success *out_text (malloc'd, NUL-terminated, owned by the caller) holds
 * *out_len bytes. */
moira_status_t moira_tokenizer_decode(const moira_tokenizer_t *tokenizer, const int32_t *ids,
                                      size_t count, bool skip_special_tokens, char **out_text,
                                      size_t *out_len);

/* The id of a token's exact text (an added token's content, or a vocabulary entry in its
 * byte-level spelling), or -1. */
int32_t moira_tokenizer_token_id(const moira_tokenizer_t *tokenizer, const char *token);

/* One past the largest id (vocabulary and added tokens together). */
int32_t moira_tokenizer_vocab_size(const moira_tokenizer_t *tokenizer);

/* The BOS and EOS of tokenizer_config.json (-1 and NULL where it names none). Borrowed. */
int32_t moira_tokenizer_bos_id(const moira_tokenizer_t *tokenizer);
int32_t moira_tokenizer_eos_id(const moira_tokenizer_t *tokenizer);
const char *moira_tokenizer_bos_token(const moira_tokenizer_t *tokenizer);
const char *moira_tokenizer_eos_token(const moira_tokenizer_t *tokenizer);

/* Whether an id is a special token (decode skips those on request; generation stops on EOS). */
bool moira_tokenizer_is_special(const moira_tokenizer_t *tokenizer, int32_t id);

/* tokenizer_config.json's chat_template (the default one when it lists several), or NULL.
 * Borrowed. `origin` (borrowed, may be NULL) names where it came from, for messages. */
const char *moira_tokenizer_chat_template(const moira_tokenizer_t *tokenizer, const char **origin);

/* Streaming detokenisation: push ids as they are generated and receive the text that became
 * complete. Bytes of a character split across tokens are held until the character is complete;
 * an invalid sequence comes out as U+FFFD exactly where whole-text decoding puts it, so the
 * concatenated pieces equal moira_tokenizer_decode of all the ids. No allocation after create. */
typedef struct moira_detokenizer moira_detokenizer_t;

/* Makes a detokenizer for `tokenizer` (borrowed; must outlive it). Errors: OUT_OF_MEMORY. */
moira_status_t moira_detokenizer_create(const moira_tokenizer_t *tokenizer,
                                        bool skip_special_tokens, moira_detokenizer_t **out);

/* Feeds one id; *text and *len receive the text completed by it (possibly empty). The text is owned
 * by the detokenizer and valid until the next call. An unknown id is INVALID_ARGUMENT. */
moira_status_t moira_detokenizer_push(moira_detokenizer_t *detokenizer, int32_t id,
                                      const char **text, size_t *len);

/* Ends the stream: bytes still held (an incomplete character) come out as U+FFFD. The
 * detokenizer is then empty and may start a new stream. */
void moira_detokenizer_finish(moira_detokenizer_t *detokenizer, const char **text, size_t *len);

/* Releases a detokenizer. Accepts NULL. */
void moira_detokenizer_free(moira_detokenizer_t *detokenizer);

#endif

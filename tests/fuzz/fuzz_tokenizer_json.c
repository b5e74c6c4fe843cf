/* Fuzz target: tokenizer.json. A file that loads must tokenize any text into ids of its own
 * vocabulary and decode those ids, whole and streamed, to the same text (a stream that departs
 * from the whole decode would show users other text than the API returns). A file that does not
 * load must say why, as an input error. (Decoding need not give the text back for a fuzzed file:
 * an added token may take the id of a merge's result.) */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer.h"
#include "tests/fuzz/fuzz.h"

/* Texts that reach every stage: added-token look-alikes, digits, whitespace runs, a contraction,
 * multi-byte characters and an emoji sequence. */
static const char *const texts[] = {"hello world",
                                    "<s> a</s>b <tool>  <｜User｜>",
                                    "12345 67\t\n\n  x",
                                    "don't 'S",
                                    "中文 العربية é e\xCC\x81 \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
                                    ""};

static void check_text(const moira_tokenizer_t *tokenizer, const char *text) {
    moira_token_ids_t ids = {0};
    moira_status_t status = moira_tokenizer_encode(tokenizer, text, strlen(text), true, &ids);
    FUZZ_ASSERT(!status, "encode failed: %s", moira_status_message(status));
    int32_t vocab = moira_tokenizer_vocab_size(tokenizer);
    for (size_t i = 0; i < ids.count; i++)
        FUZZ_ASSERT(ids.ids[i] >= 0 && ids.ids[i] < vocab, "id %d outside [0, %d)", ids.ids[i],
                    vocab);
    char *whole;
    size_t whole_len;
    status = moira_tokenizer_decode(tokenizer, ids.ids, ids.count, false, &whole, &whole_len);
    FUZZ_ASSERT(!status, "decode failed: %s", moira_status_message(status));

    moira_detokenizer_t *stream;
    status = moira_detokenizer_create(tokenizer, false, &stream);
    FUZZ_ASSERT(!status, "detokenizer: %s", moira_status_message(status));
    size_t streamed = 0;
    for (size_t i = 0; i <= ids.count; i++) {
        const char *piece;
        size_t len;
        if (i < ids.count) {
            status = moira_detokenizer_push(stream, ids.ids[i], &piece, &len);
            FUZZ_ASSERT(!status, "push: %s", moira_status_message(status));
        } else {
            moira_detokenizer_finish(stream, &piece, &len);
        }
        FUZZ_ASSERT(streamed + len <= whole_len && !memcmp(whole + streamed, piece, len),
                    "the stream departs from the whole decode at byte %zu", streamed);
        streamed += len;
    }
    FUZZ_ASSERT(streamed == whole_len, "the stream gave %zu bytes, the whole decode %zu", streamed,
                whole_len);
    moira_detokenizer_free(stream);

    free(whole);
    moira_token_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moira_fuzz_setup();
    moira_tokenizer_t *tokenizer;
    moira_status_t status =
        moira_tokenizer_load_texts((const char *)data, size, NULL, 0, &tokenizer);
    if (status) {
        moira_fuzz_expect_input_error(status, "tokenizer.json");
        return 0;
    }
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        check_text(tokenizer, texts[i]);
    moira_tokenizer_free(tokenizer);
    return 0;
}

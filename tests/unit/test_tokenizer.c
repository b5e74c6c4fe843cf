/* The tokenizer on tests/data/tokenizer/tiny, a byte-level BPE small enough that every id below was
 * worked out by hand from tests/data/tokenizer/make_tiny.py's table (id b = byte b; merges 256-264
 * in rank order; <s> 265, </s> 266, <tool> 267 with lstrip, <w> 268 single_word). Decoding's U+FFFD
 * placement follows the WHATWG UTF-8 decoder's "maximal subpart" rule, worked out by hand per case.
 * The DeepSeek-V3 tokenizer against Hugging Face's own is tests/cli/tokenizer_hf.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer.h"
#include "testing.h"

#define TINY MOIRA_TEST_DATA_DIR "/tokenizer/tiny"
#define FFFD "\xEF\xBF\xBD"

static moira_tokenizer_t *tiny;

/* Encodes `text` and compares with the expected ids (count first, -1 terminated list). */
static void expect_ids(const char *text, bool special, const int32_t *expected) {
    moira_token_ids_t ids = {0};
    CHECK_OK(moira_tokenizer_encode(tiny, text, strlen(text), special, &ids));
    size_t n = 0;
    while (expected[n] >= 0)
        n++;
    bool same = ids.count == n;
    for (size_t i = 0; same && i < n; i++)
        same = ids.ids[i] == expected[i];
    CHECK_MSG(same, "encode(\"%s\", special=%d): got %zu ids, first %d", text, special, ids.count,
              ids.count ? ids.ids[0] : -1);
    moira_token_ids_free(&ids);
}

static void test_encode(void) {
    /* "hello" merges h+e, l+l, he+ll, hell+o; " world" merges Ġ+w, o+r, Ġw+or, l+d, Ġwor+ld. */
    expect_ids("hello world", false, (const int32_t[]){259, 264, -1});
    expect_ids("hello world", true, (const int32_t[]){265, 259, 264, -1});
    /* Equal ranks merge leftmost first; both words end whole. */
    expect_ids("hellohello", false, (const int32_t[]){259, 259, -1});
    /* Digits split in threes before ByteLevel; no digit merges. */
    expect_ids("12345", false, (const int32_t[]){'1', '2', '3', '4', '5', -1});
    /* A whitespace run is one pre-token without merges: three byte-32 tokens. */
    expect_ids("   ", false, (const int32_t[]){32, 32, 32, -1});
    /* "he" alone merges once; " wor" merges Ġ+w, o+r, Ġw+or; "wor" without Ġ has only o+r. */
    expect_ids("he wor", false, (const int32_t[]){256, 262, -1});
    expect_ids("hewor", false, (const int32_t[]){256, 'w', 261, -1});
    /* Special tokens are matched before anything else. */
    expect_ids("<s>hello</s>", false, (const int32_t[]){265, 259, 266, -1});
    /* <tool> strips the whitespace on its left (lstrip), and is matched in the second pass. */
    expect_ids("a  <tool>b", false, (const int32_t[]){'a', 267, 'b', -1});
    /* <w> is single_word: matched only where no word character touches it (Hugging Face's \w). */
    expect_ids("a <w> b", false, (const int32_t[]){'a', ' ', 268, ' ', 'b', -1});
    expect_ids("a<w>b", false, (const int32_t[]){'a', '<', 'w', '>', 'b', -1});
    expect_ids("<w>\xC3\xA9", false, (const int32_t[]){'<', 'w', '>', 0xC3, 0xA9, -1});
    /* A partial special token is plain text. */
    expect_ids("<s", false, (const int32_t[]){'<', 's', -1});
    /* Multi-byte characters become their bytes (é = C3 A9). */
    expect_ids("\xC3\xA9", false, (const int32_t[]){0xC3, 0xA9, -1});
    expect_ids("", false, (const int32_t[]){-1});
    expect_ids("", true, (const int32_t[]){265, -1});

    moira_token_ids_t ids = {0};
    CHECK_CODE(moira_tokenizer_encode(tiny, "a\xC3(", 3, false, &ids), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(ids.count == 0);
    moira_token_ids_free(&ids);
    CHECK(moira_tokenizer_bos_id(tiny) == 265);
    CHECK(moira_tokenizer_eos_id(tiny) == 266);
    CHECK(moira_tokenizer_vocab_size(tiny) == 269);
    CHECK(moira_tokenizer_token_id(tiny, "</s>") == 266);
    CHECK(moira_tokenizer_token_id(tiny, "Ġworld") == 264);
    CHECK(moira_tokenizer_token_id(tiny, "nope") == -1);
    CHECK(moira_tokenizer_is_special(tiny, 265) && !moira_tokenizer_is_special(tiny, 267));
}

/* Decodes ids whole and streamed; both must give `expected` (NUL-free). */
static void expect_text(const int32_t *ids, size_t count, bool skip, const char *expected) {
    char *text;
    size_t len;
    CHECK_OK(moira_tokenizer_decode(tiny, ids, count, skip, &text, &len));
    CHECK_MSG(len == strlen(expected) && !memcmp(text, expected, len),
              "decode: got \"%.*s\", expected \"%s\"", (int)len, text, expected);
    free(text);

    moira_detokenizer_t *stream;
    CHECK_OK(moira_detokenizer_create(tiny, skip, &stream));
    char joined[256];
    size_t joined_len = 0;
    for (size_t i = 0; i <= count; i++) {
        const char *piece;
        size_t piece_len;
        if (i < count)
            CHECK_OK(moira_detokenizer_push(stream, ids[i], &piece, &piece_len));
        else
            moira_detokenizer_finish(stream, &piece, &piece_len);
        if (joined_len + piece_len < sizeof(joined)) memcpy(joined + joined_len, piece, piece_len);
        joined_len += piece_len;
    }
    CHECK_MSG(joined_len == strlen(expected) && !memcmp(joined, expected, joined_len),
              "streamed decode: got \"%.*s\", expected \"%s\"", (int)joined_len, joined, expected);
    moira_detokenizer_free(stream);
}

static void test_decode(void) {
    expect_text((const int32_t[]){259, 264}, 2, false, "hello world");
    expect_text((const int32_t[]){265, 259, 266}, 3, false, "<s>hello</s>");
    expect_text((const int32_t[]){265, 259, 266}, 3, true, "hello");
    expect_text((const int32_t[]){'a', 267, 'b'}, 3, false, "a<tool>b");
    /* 你 = E4 BD A0, split over three tokens. */
    expect_text((const int32_t[]){0xE4, 0xBD, 0xA0}, 3, false, "\xE4\xBD\xA0");
    /* A lead byte then ASCII: the lead alone is one U+FFFD. */
    expect_text((const int32_t[]){0xE4, 'a'}, 2, false, FFFD "a");
    /* F0 9F is a maximal subpart of a 4-byte character: one U+FFFD, ended by the added token. */
    expect_text((const int32_t[]){0xF0, 0x9F, 265}, 3, false, FFFD "<s>");
    /* An incomplete character at the very end. */
    expect_text((const int32_t[]){'x', 0xE4, 0xBD}, 3, false, "x" FFFD);
    /* C0 never starts a character; ED A0 80 would be a surrogate: ED, A0, 80 each U+FFFD. */
    expect_text((const int32_t[]){0xC0}, 1, false, FFFD);
    expect_text((const int32_t[]){0xED, 0xA0, 0x80}, 3, false, FFFD FFFD FFFD);
    /* F4 90 is past U+10FFFF: F4 alone, then 90. */
    expect_text((const int32_t[]){0xF4, 0x90}, 2, false, FFFD FFFD);
    /* A stray continuation byte between complete characters. */
    expect_text((const int32_t[]){'a', 0x80, 'b'}, 3, false, "a" FFFD "b");

    char *text;
    size_t len;
    CHECK_CODE(moira_tokenizer_decode(tiny, (const int32_t[]){269}, 1, false, &text, &len),
               MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_CODE(moira_tokenizer_decode(tiny, (const int32_t[]){-1}, 1, false, &text, &len),
               MOIRA_CODE_INVALID_ARGUMENT);
}

/* Every encode of text decodes back to it (a byte-level BPE loses nothing), and the stream gives
 * the same text however the ids arrive. */
static void test_round_trip(void) {
    static const char *texts[] = {"hello world",
                                  "hello\tworld\n\n  12345678 é中文🙂 <s> </s><tool>x",
                                  "hellohellohello", "   \r\n", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD"};
    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
        moira_token_ids_t ids = {0};
        CHECK_OK(moira_tokenizer_encode(tiny, texts[t], strlen(texts[t]), false, &ids));
        char *text;
        size_t len;
        CHECK_OK(moira_tokenizer_decode(tiny, ids.ids, ids.count, false, &text, &len));
        CHECK_MSG(len == strlen(texts[t]) && !memcmp(text, texts[t], len), "round trip of text %zu",
                  t);
        free(text);
        moira_token_ids_free(&ids);
    }
}

static void test_load_errors(void) {
    moira_tokenizer_t *t = NULL;
    CHECK_CODE(moira_tokenizer_load(MOIRA_TEST_DATA_DIR "/no-such-model", &t),
               MOIRA_CODE_NOT_FOUND);
    CHECK(t == NULL);
    /* Without a config: no BOS framing (the post-processor is ByteLevel), no chat template. */
    CHECK_OK(moira_tokenizer_load_files(TINY "/tokenizer.json", NULL, &t));
    if (t) {
        moira_token_ids_t ids = {0};
        CHECK_OK(moira_tokenizer_encode(t, "hello", 5, true, &ids));
        CHECK(ids.count == 1 && ids.ids[0] == 259);
        CHECK(moira_tokenizer_chat_template(t, NULL) == NULL);
        moira_token_ids_free(&ids);
        moira_tokenizer_free(t);
    }
}

int main(void) {
    moira_status_t status = moira_tokenizer_load(TINY, &tiny);
    if (status) {
        fprintf(stderr, "cannot load %s: %s\n", TINY, moira_status_message(status));
        moira_status_free(status);
        return 1;
    }
    test_encode();
    test_decode();
    test_round_trip();
    test_load_errors();
    moira_tokenizer_free(tiny);
    return moira_test_finish("test_tokenizer");
}

/* A sequence's completion (runtime/engine/completion.c) driven by hand-made logits over the tiny
 * tokenizer: each step's logits put all weight on one chosen id, so the ids, text, streamed text
 * and finish reason are known in advance. Stop strings cut the text (also after a NUL byte, and
 * across tokens), are never streamed, an end-of-sequence id ends it (unless ignore_eos), the token
 * limit ends it with "length", and one completion is reused for a second output. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/engine/completion.h"
#include "tests/unit/testing.h"

#define TINY MOIRA_TEST_DATA_DIR "/tokenizer/tiny"
#define MAX_IDS 64

static moira_model_files_t model;
static float *logits;

/* The ids of `text` (no BOS), which must exist. */
static int encode(const char *text, size_t len, int32_t *ids) {
    moira_token_ids_t out = {0};
    moira_status_t status = moira_tokenizer_encode(model.tokenizer, text, len, false, &out);
    CHECK_OK(status);
    int n = (int)out.count;
    memcpy(ids, out.ids, out.count * sizeof(int32_t));
    moira_token_ids_free(&out);
    return n;
}

/* What on_text received. */
typedef struct streamed {
    char text[256];
    size_t len;
} streamed_t;

static bool collect(void *context, const char *text, size_t len) {
    streamed_t *s = context;
    memcpy(s->text + s->len, text, len);
    s->len += len;
    return true;
}

/* Feeds `ids` one step each until the completion finishes; returns how many it took. */
static int run(moira_completion_t *c, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++) {
        for (int64_t v = 0; v < model.vocab; v++)
            logits[v] = v == ids[i] ? 10.0f : -10.0f;
        int32_t next = -1;
        bool finished = false;
        CHECK_OK(moira_completion_next(c, logits, &next, &finished));
        if (finished) return i + 1;
        CHECK(next == ids[i]);
    }
    return n;
}

/* Runs `ids` with the given stops and limit; checks the text, reason and streamed text. */
static void expect(moira_completion_t *c, const int32_t *ids, int n, const char *const *stops,
                   int n_stops, int64_t max_tokens, bool ignore_eos, const char *want,
                   size_t want_len, const char *reason, int want_steps) {
    streamed_t s = {.len = 0};
    moira_completion_params_t p = {.max_tokens = max_tokens,
                                   .stops = stops,
                                   .n_stops = n_stops,
                                   .sampling = {.temperature = 0, .top_p = 1},
                                   .ignore_eos = ignore_eos};
    CHECK_OK(moira_completion_start(c, &p, collect, &s));
    int steps = run(c, ids, n);
    size_t len = 0;
    const char *text = moira_completion_text(c, &len);
    CHECK_MSG(len == want_len && !memcmp(text, want, len), "text \"%.*s\" (%zu bytes), want \"%s\"",
              (int)len, text, len, want);
    CHECK_MSG(!strcmp(moira_completion_finish_reason(c), reason), "finish %s, want %s",
              moira_completion_finish_reason(c), reason);
    CHECK_MSG(steps == want_steps, "%d steps, want %d", steps, want_steps);
    CHECK_MSG(s.len == want_len && !memcmp(s.text, want, want_len),
              "streamed \"%.*s\", want \"%s\"", (int)s.len, s.text, want);
    int64_t count = 0;
    moira_completion_ids(c, &count);
    CHECK(count == steps);
}

int main(void) {
    moira_status_t status = moira_tokenizer_load(TINY, &model.tokenizer);
    if (status) {
        fprintf(stderr, "cannot load %s: %s\n", TINY, moira_status_message(status));
        moira_status_free(status);
        return 1;
    }
    model.vocab = moira_tokenizer_vocab_size(model.tokenizer);
    logits = malloc((size_t)model.vocab * sizeof(float));
    int32_t ids[MAX_IDS], eos[4];
    CHECK(encode("</s>", 4, eos) == 1);
    model.eos_ids[0] = eos[0];
    model.n_eos = 1;
    moira_completion_t *c = NULL;
    CHECK_OK(moira_completion_create(&model, &c));

    /* The limit: every token, "length". "hello world" is two tokens, "hello" and " world", so
     * the stop string "wor" is complete at the second. */
    int n = encode("hello world", 11, ids);
    CHECK(n == 2);
    expect(c, ids, n, NULL, 0, n, false, "hello world", 11, "length", n);
    /* A stop string across tokens: cut before it, never streamed, "stop". */
    const char *stop_wor[] = {"wor"};
    expect(c, ids, n, stop_wor, 1, 64, false, "hello ", 6, "stop", n);
    /* A NUL byte before the stop string does not hide it: "\0hello" is the tokens NUL and
     * "hello", and the stop "ll" arrives inside the second, searched from the text's start. */
    static const char nul_hello[] = "\0hello";
    n = encode(nul_hello, 6, ids);
    CHECK(n == 2);
    const char *stop_ll[] = {"zz", "ll"};
    expect(c, ids, n, stop_ll, 2, 64, false, "\0he", 3, "stop", 2);
    /* One byte per token (no merges for these): "cd" is complete at the fifth of
     * a, b, NUL, c, d, space, e, f. */
    static const char with_nul[] = "ab\0cd ef";
    n = encode(with_nul, 8, ids);
    CHECK(n == 8);
    const char *stop_cd[] = {"cd"};
    expect(c, ids, n, stop_cd, 1, 64, false, "ab\0", 3, "stop", 5);
    /* End of sequence: "stop" with the eos id counted, its text not added... */
    n = encode("hi", 2, ids);
    ids[n] = eos[0];
    int m = encode(" there", 6, ids + n + 1);
    expect(c, ids, n + 1 + m, NULL, 0, 64, false, "hi", 2, "stop", n + 1);
    /* ...unless ignore_eos: it runs on to the limit, the eos token's text kept as any other. */
    expect(c, ids, n + 1 + m, NULL, 0, n + 1 + m, true, "hi</s> there", 12, "length", n + 1 + m);

    moira_completion_destroy(c);
    free(logits);
    moira_tokenizer_free(model.tokenizer);
    return moira_test_finish("test_completion");
}

/* `moira bench tokenize --model DIR --text FILE`: how long loading a model directory's tokenizer
 * takes, and encoding a text with it (best of --iters rounds each). Its peer, Hugging Face's
 * tokenizers.js on the same files and text, runs beside it in bench/tokenize.sh, which prints the
 * ratio; this verb gives Moira's side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cli/bench.h"
#include "runtime/cli/cli.h"
#include "runtime/read_file.h"
#include "runtime/text/tokenizer.h"

/* Whitespace-separated words, the unit the issue sizes the text in. */
static size_t count_words(const char *text, size_t len) {
    size_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < len; i++) {
        bool space = text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r';
        if (!space && !in_word) words++;
        in_word = !space;
    }
    return words;
}

int moira_bench_tokenize(const moira_bench_args_t *args) {
    if (!args->model || !args->text)
        return moira_cli_usage_error("bench", "tokenize needs --model DIR and --text FILE");
    long long iters = args->iters ? args->iters : 5;
    char *text;
    size_t len;
    moira_status_t status = moira_read_file(args->text, "text", 1u << 30, &text, &len);
    if (status) return moira_status_report(status);

    double best_load = 1e30, best_encode = 1e30;
    size_t tokens = 0;
    for (long long round = 0; round < iters && !status; round++) {
        double start = moira_bench_seconds();
        moira_tokenizer_t *tokenizer;
        status = moira_tokenizer_load(args->model, &tokenizer);
        if (status) break;
        double loaded = moira_bench_seconds();
        moira_token_ids_t ids = {0};
        status = moira_tokenizer_encode(tokenizer, text, len, false, &ids);
        double encoded = moira_bench_seconds();
        tokens = ids.count;
        moira_token_ids_free(&ids);
        moira_tokenizer_free(tokenizer);
        if (loaded - start < best_load) best_load = loaded - start;
        if (encoded - loaded < best_encode) best_encode = encoded - loaded;
    }
    size_t words = count_words(text, len);
    free(text);
    if (status) return moira_status_report(status);
    if (args->json) {
        printf("{\"bench\": \"tokenize\", \"bytes\": %zu, \"words\": %zu, \"tokens\": %zu, "
               "\"load_ms\": %.3f, \"encode_ms\": %.3f, \"tokens_per_s\": %.0f}\n",
               len, words, tokens, best_load * 1e3, best_encode * 1e3, tokens / best_encode);
    } else {
        printf("tokenizer of %s, text %s: %zu bytes, %zu words, %zu tokens (best of %lld)\n",
               args->model, args->text, len, words, tokens, iters);
        printf("  load   %9.2f ms\n  encode %9.2f ms  (%.0f tokens/s)\n", best_load * 1e3,
               best_encode * 1e3, tokens / best_encode);
    }
    return 0;
}

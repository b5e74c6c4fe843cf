/* Fuzz target: an OpenAI request body, as `moira serve` receives it from anyone who can reach its
 * port, for /v1/completions and /v1/chat/completions. A body that is accepted must make a request
 * the engine can run (a prompt of at least one id inside the vocabulary, 1 <= max_tokens, prompt
 * and max_tokens inside the context, at most 4 stop strings, sampling parameters the sampler
 * takes), and every answer written for it (whole, chunk, usage, error) must be valid JSON. A body
 * that is refused must say why, as an input error naming the field where there is one. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/engine/sampler.h"
#include "runtime/server/openai_api.h"
#include "tests/fuzz/fuzz.h"

#define CONTEXT 64

static void check_json(char *text, const char *what) {
    FUZZ_ASSERT(text, "%s: no text", what);
    json_error_t error;
    json_t *parsed = json_loads(text, 0, &error);
    FUZZ_ASSERT(parsed, "%s is not JSON (%s): %s", what, error.text, text);
    json_decref(parsed);
    free(text);
}

static void check_accepted(const moira_model_files_t *model, const serve_api_call_t *call) {
    const serve_request_t *r = call->request;
    FUZZ_ASSERT(r->n_prompt >= 1 && r->prompt, "an accepted prompt holds no ids");
    for (int64_t i = 0; i < r->n_prompt; i++)
        FUZZ_ASSERT(r->prompt[i] >= 0 && r->prompt[i] < model->vocab,
                    "id %d outside the vocabulary", r->prompt[i]);
    FUZZ_ASSERT(r->params.max_tokens >= 1 && r->n_prompt + r->params.max_tokens <= CONTEXT,
                "max_tokens %lld with %lld prompt ids in a context of %d",
                (long long)r->params.max_tokens, (long long)r->n_prompt, CONTEXT);
    FUZZ_ASSERT(r->params.n_stops >= 0 && r->params.n_stops <= SERVE_MAX_STOPS, "%d stops",
                r->params.n_stops);
    for (int i = 0; i < r->params.n_stops; i++)
        FUZZ_ASSERT(r->params.stops[i] && *r->params.stops[i], "stop %d is empty", i);
    moira_sampler_t sampler;
    moira_status_t status = moira_sampler_init(&sampler, &r->params.sampling, 8);
    FUZZ_ASSERT(!status, "the sampler refuses accepted parameters: %s",
                moira_status_message(status));
    moira_sampler_free(&sampler);
    check_json(serve_api_response(call, "ok \xE4\xB8\xAD", 6, "stop", 2), "the answer");
    check_json(serve_api_chunk(call, "a", 1, true, NULL), "the first chunk");
    check_json(serve_api_chunk(call, "", 0, false, "length"), "the last chunk");
    check_json(serve_api_usage_chunk(call, 3), "the usage chunk");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static moira_model_files_t model;
    static moira_tokenizer_t *tokenizer;
    if (!tokenizer) {
        moira_status_t status =
            moira_tokenizer_load(MOIRA_TEST_DATA_DIR "/tokenizer/tiny", &tokenizer);
        FUZZ_ASSERT(!status, "the tiny tokenizer: %s", moira_status_message(status));
        model.tokenizer = tokenizer;
        model.vocab = moira_tokenizer_vocab_size(tokenizer);
    }
    serve_api_model_t api = {.name = "tiny",
                             .model = &model,
                             .defaults = {.temperature = 1, .top_p = 1},
                             .context = CONTEXT};
    for (int chat = 0; chat < 2; chat++) {
        serve_api_call_t call;
        const char *param = NULL;
        moira_status_t status =
            serve_api_parse(&api, chat, (const char *)data, size, &call, &param);
        if (!status) {
            check_accepted(&model, &call);
        } else {
            FUZZ_ASSERT(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT ||
                            moira_status_code(status) == MOIRA_CODE_OUT_OF_MEMORY,
                        "a refused body is not an input error: %s", moira_status_message(status));
            FUZZ_ASSERT(*moira_status_message(status), "a refusal without a message");
            check_json(
                serve_api_error(moira_status_message(status), "invalid_request_error", param, NULL),
                "the error");
        }
        moira_status_free(status);
        serve_api_call_free(&call);
    }
    return 0;
}

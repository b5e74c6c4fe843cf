/* Fuzz target: chat templates (runtime/text/jinja.h). Any text either parses or is refused as an
 * input error with a message; a parsed template renders a fixed conversation to valid UTF-8 or
 * stops with an input error (its own raise_exception, a type error, a limit), never a crash, a
 * hang or another kind of error; and rendering is repeatable (the same text twice). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/text/jinja.h"
#include "tests/fuzz/fuzz.h"

static const char context_json[] =
    "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_generation_prompt\": true,"
    " \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"h\\u00e9llo \\u65e5\\u672c <think>x</think>\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\","
    " \"function\": {\"name\": \"f\", \"arguments\": {\"x\": [1, 2.5, null, true]}}}]},"
    " {\"role\": \"tool\", \"content\": \"42\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}]}";

/* Strict UTF-8 (what the template text and the JSON strings are, and so what any rendering of
 * them must be). */
static bool valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + len > n) return false;
        uint32_t cp = len == 1 ? c : (uint32_t)(c & (0x7F >> len));
        for (size_t j = 1; j < len; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moira_jinja_template_t *tmpl = NULL;
    moira_status_t status = moira_jinja_parse((const char *)data, size, "fuzz", &tmpl);
    if (status) {
        moira_fuzz_expect_input_error(status, "parse");
        return 0;
    }
    json_t *context = json_loads(context_json, 0, NULL);
    FUZZ_ASSERT(context != NULL, "fixed context does not parse");
    char *first = NULL;
    size_t first_len = 0;
    status = moira_jinja_render(tmpl, context, &first, &first_len);
    if (status) {
        moira_fuzz_expect_input_error(status, "render");
    } else {
        FUZZ_ASSERT(first[first_len] == 0, "rendered text is not NUL-terminated");
        FUZZ_ASSERT(valid_utf8((const unsigned char *)first, first_len),
                    "rendered text is not valid UTF-8");
        /* strftime_now reads the clock, so only templates without it must repeat exactly */
        if (!memmem(data, size, "strftime", 8)) {
            char *second = NULL;
            size_t second_len = 0;
            status = moira_jinja_render(tmpl, context, &second, &second_len);
            FUZZ_ASSERT(!status, "second render failed: %s", moira_status_message(status));
            FUZZ_ASSERT(second_len == first_len && memcmp(first, second, first_len) == 0,
                        "two renders differ");
            free(second);
        }
        free(first);
    }
    json_decref(context);
    moira_jinja_free(tmpl);
    return 0;
}

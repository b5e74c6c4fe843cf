/* The pipeline sections of tokenizer.json. Moira implements what byte-level BPE tokenizers use:
 * no normalizer (or an empty sequence), Split and ByteLevel pre-tokenizers, the ByteLevel
 * decoder; anything else is refused by name rather than tokenized differently from Hugging Face. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_load.h"

/* GPT-2's pre-tokenizer regex, which ByteLevel applies itself when use_regex is true. */
static const char byte_level_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static pthread_once_t oniguruma_once = PTHREAD_ONCE_INIT;

/* Oniguruma wants its encodings initialised once per process before the first regex. */
static void initialise_oniguruma(void) {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
}

/* Compiles a pre-tokenizer regex as Hugging Face does (Oniguruma's default syntax, no options,
 * UTF-8). A pattern Oniguruma refuses is INVALID_INPUT naming the key and Oniguruma's reason. */
moira_status_t moira_tokenizer_compile_regex(const moira_tokenizer_t *tokenizer, const char *key,
                                             const char *pattern, size_t len, regex_t **out) {
    pthread_once(&oniguruma_once, initialise_oniguruma);
    OnigErrorInfo info;
    const UChar *start = (const UChar *)pattern;
    int rc = onig_new(out, start, start + len, ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                      ONIG_SYNTAX_DEFAULT, &info);
    if (rc == ONIG_NORMAL) return MOIRA_OK_STATUS;
    *out = NULL;
    UChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &info);
    return moira_tokenizer_bad(tokenizer, key, "invalid regex /%.*s/: %s",
                               (int)(len > 120 ? 120 : len), pattern, (const char *)message);
}

/* Whether a section's "type" is `type`. */
static bool is_type(const json_t *section, const char *type) {
    const char *t = json_string_value(json_object_get(section, "type"));
    return t && !strcmp(t, type);
}

static const char *type_of(const json_t *section) {
    const char *t = json_string_value(json_object_get(section, "type"));
    return t ? t : "(no type)";
}

/* The normalizer: absent, null, or a sequence of nothing. */
static moira_status_t check_normalizer(const moira_tokenizer_t *tokenizer, const json_t *section) {
    if (!section || json_is_null(section)) return MOIRA_OK_STATUS;
    if (is_type(section, "Sequence")) {
        const json_t *list = json_object_get(section, "normalizers");
        size_t i;
        const json_t *item;
        json_array_foreach((json_t *)list, i, item) {
            MOIRA_RETURN_IF_ERROR(check_normalizer(tokenizer, item));
        }
        return MOIRA_OK_STATUS;
    }
    return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                           "normalizer: \"%s\" is not implemented (Moira reads byte-level BPE "
                           "tokenizers without a normalizer)",
                           type_of(section));
}

static moira_status_t add_step(moira_tokenizer_t *tokenizer, pretokenize_step_t step) {
    pretokenize_step_t *grown =
        realloc(tokenizer->steps, (tokenizer->step_count + 1) * sizeof(*grown));
    if (!grown) {
        if (step.regex) onig_free(step.regex);
        free(step.literal);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    }
    tokenizer->steps = grown;
    tokenizer->steps[tokenizer->step_count++] = step;
    return MOIRA_OK_STATUS;
}

static bool parse_behavior(const char *name, split_behavior_t *out) {
    static const struct {
        const char *name;
        split_behavior_t behavior;
    } names[] = {{"Removed", SPLIT_REMOVED},
                 {"Isolated", SPLIT_ISOLATED},
                 {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
                 {"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
                 {"Contiguous", SPLIT_CONTIGUOUS}};
    for (size_t i = 0; name && i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(name, names[i].name)) {
            *out = names[i].behavior;
            return true;
        }
    return false;
}

/* One Split pre-tokenizer: {"pattern": {"Regex": ...} | {"String": ...}, "behavior", "invert"}. */
static moira_status_t load_split(moira_tokenizer_t *tokenizer, const json_t *section,
                                 const char *key) {
    pretokenize_step_t step = {.kind = STEP_SPLIT};
    char where[96];
    snprintf(where, sizeof(where), "%s.behavior", key);
    if (!parse_behavior(json_string_value(json_object_get(section, "behavior")), &step.behavior))
        return moira_tokenizer_bad(tokenizer, where,
                                   "expected Removed, Isolated, MergedWithPrevious, "
                                   "MergedWithNext or Contiguous");
    step.invert = moira_json_flag(section, "invert", false);
    const json_t *pattern = json_object_get(section, "pattern");
    const json_t *regex = json_object_get(pattern, "Regex");
    const json_t *literal = json_object_get(pattern, "String");
    snprintf(where, sizeof(where), "%s.pattern", key);
    if (json_is_string(regex)) {
        MOIRA_RETURN_IF_ERROR(moira_tokenizer_compile_regex(
            tokenizer, where, json_string_value(regex), json_string_length(regex), &step.regex));
    } else if (json_is_string(literal)) {
        step.literal_len = json_string_length(literal);
        step.literal = malloc(step.literal_len + 1);
        if (!step.literal) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
        memcpy(step.literal, json_string_value(literal), step.literal_len + 1);
    } else {
        return moira_tokenizer_bad(tokenizer, where,
                                   "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    return add_step(tokenizer, step);
}

/* One pre-tokenizer, or a sequence of them (flattened into the step list). */
static moira_status_t load_pretokenizer(moira_tokenizer_t *tokenizer, const json_t *section,
                                        const char *key, int depth) {
    if (depth > 8)
        return moira_tokenizer_bad(tokenizer, key, "pre-tokenizer sequences nested too deep");
    if (is_type(section, "Sequence")) {
        const json_t *list = json_object_get(section, "pretokenizers");
        if (!json_is_array(list))
            return moira_tokenizer_bad(tokenizer, key,
                                       "a Sequence needs a \"pretokenizers\" array");
        size_t i;
        const json_t *item;
        json_array_foreach((json_t *)list, i, item) {
            char where[96];
            snprintf(where, sizeof(where), "%s.pretokenizers[%zu]", key, i);
            MOIRA_RETURN_IF_ERROR(load_pretokenizer(tokenizer, item, where, depth + 1));
        }
        return MOIRA_OK_STATUS;
    }
    bool after_byte_level = tokenizer->step_count > 0 &&
                            tokenizer->steps[tokenizer->step_count - 1].kind == STEP_BYTE_LEVEL;
    if (is_type(section, "Split")) {
        if (after_byte_level)
            return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                                   "%s: a Split after ByteLevel is not implemented", key);
        return load_split(tokenizer, section, key);
    }
    if (is_type(section, "ByteLevel")) {
        pretokenize_step_t step = {.kind = STEP_BYTE_LEVEL,
                                   .add_prefix_space =
                                       moira_json_flag(section, "add_prefix_space", true)};
        if (moira_json_flag(section, "use_regex", true))
            MOIRA_RETURN_IF_ERROR(moira_tokenizer_compile_regex(
                tokenizer, key, byte_level_pattern, strlen(byte_level_pattern), &step.regex));
        return add_step(tokenizer, step);
    }
    return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                           "%s: pre-tokenizer \"%s\" is not implemented (Moira implements Split "
                           "and ByteLevel)",
                           key, type_of(section));
}

/* The decoder must be ByteLevel (alone or as the only member of a sequence). */
static moira_status_t check_decoder(const moira_tokenizer_t *tokenizer, const json_t *section) {
    if (is_type(section, "ByteLevel")) return MOIRA_OK_STATUS;
    if (is_type(section, "Sequence")) {
        const json_t *list = json_object_get(section, "decoders");
        if (json_is_array(list) && json_array_size(list) == 1)
            return check_decoder(tokenizer, json_array_get(list, 0));
    }
    return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                           "decoder: \"%s\" is not implemented (Moira decodes byte-level BPE "
                           "with the ByteLevel decoder)",
                           section ? type_of(section) : "null");
}

moira_status_t moira_tokenizer_load_pipeline(moira_tokenizer_t *tokenizer, const json_t *root) {
    MOIRA_RETURN_IF_ERROR(check_normalizer(tokenizer, json_object_get(root, "normalizer")));
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    if (!pre || json_is_null(pre))
        return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                               "pre_tokenizer: none given; Moira reads byte-level BPE, which "
                               "needs a ByteLevel pre-tokenizer");
    MOIRA_RETURN_IF_ERROR(load_pretokenizer(tokenizer, pre, "pre_tokenizer", 0));
    if (tokenizer->step_count == 0 ||
        tokenizer->steps[tokenizer->step_count - 1].kind != STEP_BYTE_LEVEL)
        return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                               "pre_tokenizer: the sequence does not end with ByteLevel; only "
                               "byte-level BPE is implemented");
    return check_decoder(tokenizer, json_object_get(root, "decoder"));
}

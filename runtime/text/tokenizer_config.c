/* tokenizer_config.json: which tokens are BOS and EOS, whether encoding adds them, and the chat
 * template. Hugging Face's Llama-style tokenizers (DeepSeek's among them) frame `tokenizer(text)`
 * by add_bos_token / add_eos_token, overriding tokenizer.json's post-processor; where the config
 * names neither, the post-processor (TemplateProcessing, Bert/Roberta) decides. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_load.h"

/* A token named by the config: "text", or {"content": "text", ...} (an AddedToken). */
static const char *token_text(const json_t *value) {
    if (json_is_string(value)) return json_string_value(value);
    return json_string_value(json_object_get(value, "content"));
}

int32_t moira_tokenizer_token_id(const moira_tokenizer_t *tokenizer, const char *token) {
    size_t len = strlen(token);
    for (size_t i = tokenizer->added_count; i-- > 0;)
        if (tokenizer->added[i].len == len && !memcmp(tokenizer->added[i].content, token, len))
            return tokenizer->added[i].id;
    return moira_text_map_find(&tokenizer->vocab, token, len);
}

/* Looks up a BOS/EOS named by the config; one that names no token is an error only when encoding
 * must add it. */
static moira_status_t config_token(moira_tokenizer_t *tokenizer, const json_t *config,
                                   const char *config_path, const char *key, char **out_text,
                                   int32_t *out_id) {
    const char *text = token_text(json_object_get(config, key));
    if (!text) return MOIRA_OK_STATUS;
    *out_text = strdup(text);
    if (!*out_text) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    *out_id = moira_tokenizer_token_id(tokenizer, text);
    if (*out_id < 0)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, config_path, 0, 0,
                               "%s \"%.80s\" is not a token of tokenizer.json", key, text);
    return MOIRA_OK_STATUS;
}

static moira_status_t frame_id(moira_tokenizer_t *tokenizer, bool before, int32_t id) {
    int32_t *ids = before ? tokenizer->prefix_ids : tokenizer->suffix_ids;
    size_t *count = before ? &tokenizer->prefix_count : &tokenizer->suffix_count;
    if (*count == 4)
        return moira_tokenizer_bad(tokenizer, "post_processor", "more than 4 framing tokens");
    if (id < 0 || id >= tokenizer->vocab_size || !(tokenizer->id_flags[id] & TOKEN_PRESENT))
        return moira_tokenizer_bad(tokenizer, "post_processor", "id %d is not a token", id);
    ids[(*count)++] = id;
    return MOIRA_OK_STATUS;
}

/* TemplateProcessing's "single" template: special tokens before $A frame the text in front,
 * those after it behind. */
static moira_status_t load_template_processing(moira_tokenizer_t *tokenizer,
                                               const json_t *section) {
    const json_t *single = json_object_get(section, "single");
    const json_t *specials = json_object_get(section, "special_tokens");
    if (!json_is_array(single))
        return moira_tokenizer_bad(tokenizer, "post_processor.single", "missing, or not an array");
    bool before = true;
    size_t i;
    const json_t *item;
    json_array_foreach((json_t *)single, i, item) {
        if (json_object_get(item, "Sequence")) {
            before = false;
            continue;
        }
        const char *name =
            json_string_value(json_object_get(json_object_get(item, "SpecialToken"), "id"));
        const json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
        if (!name || !json_is_array(ids))
            return moira_tokenizer_bad(
                tokenizer, "post_processor.single",
                "item %zu is neither {\"Sequence\"} nor a {\"SpecialToken\"} "
                "listed in special_tokens",
                i);
        size_t k;
        const json_t *id;
        json_array_foreach((json_t *)ids, k, id) {
            if (!json_is_integer(id))
                return moira_tokenizer_bad(tokenizer, "post_processor.special_tokens",
                                           "ids of \"%s\" must be integers", name);
            MOIRA_RETURN_IF_ERROR(frame_id(tokenizer, before, (int32_t)json_integer_value(id)));
        }
    }
    return MOIRA_OK_STATUS;
}

/* The post-processor of tokenizer.json, used when the config does not say add_bos_token. */
static moira_status_t load_post_processor(moira_tokenizer_t *tokenizer, const json_t *section,
                                          int depth) {
    const char *type = json_string_value(json_object_get(section, "type"));
    if (!section || json_is_null(section) || (type && !strcmp(type, "ByteLevel")))
        return MOIRA_OK_STATUS;
    if (type && !strcmp(type, "TemplateProcessing"))
        return load_template_processing(tokenizer, section);
    if (type && (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing"))) {
        const json_t *cls = json_array_get(json_object_get(section, "cls"), 1);
        const json_t *sep = json_array_get(json_object_get(section, "sep"), 1);
        if (!json_is_integer(cls) || !json_is_integer(sep))
            return moira_tokenizer_bad(tokenizer, "post_processor",
                                       "cls and sep must be [text, id] pairs");
        MOIRA_RETURN_IF_ERROR(frame_id(tokenizer, true, (int32_t)json_integer_value(cls)));
        return frame_id(tokenizer, false, (int32_t)json_integer_value(sep));
    }
    if (type && !strcmp(type, "Sequence") && depth < 4) {
        size_t i;
        const json_t *item;
        json_array_foreach(json_object_get(section, "processors"), i, item) {
            MOIRA_RETURN_IF_ERROR(load_post_processor(tokenizer, item, depth + 1));
        }
        return MOIRA_OK_STATUS;
    }
    return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                           "post_processor: \"%s\" is not implemented", type ? type : "(no type)");
}

/* chat_template: a string, or a list of {"name", "template"} of which "default" is used. */
static moira_status_t load_chat_template(moira_tokenizer_t *tokenizer, const json_t *config,
                                         const char *config_path) {
    const json_t *value = json_object_get(config, "chat_template");
    const char *text = json_string_value(value);
    const char *name = NULL;
    if (json_is_array(value)) {
        size_t i;
        const json_t *item;
        json_array_foreach((json_t *)value, i, item) {
            const char *n = json_string_value(json_object_get(item, "name"));
            if (n && !strcmp(n, "default"))
                text = json_string_value(json_object_get(item, "template")), name = n;
        }
    }
    if (!text) return MOIRA_OK_STATUS;
    size_t origin_len = strlen(config_path) + 32;
    tokenizer->chat_template = strdup(text);
    tokenizer->chat_template_origin = malloc(origin_len);
    if (!tokenizer->chat_template || !tokenizer->chat_template_origin)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    snprintf(tokenizer->chat_template_origin, origin_len, "%s chat_template%s", config_path,
             name ? "[default]" : "");
    return MOIRA_OK_STATUS;
}

moira_status_t moira_tokenizer_load_config(moira_tokenizer_t *tokenizer, const json_t *root,
                                           const json_t *config, const char *config_path) {
    if (config) {
        MOIRA_RETURN_IF_ERROR(config_token(tokenizer, config, config_path, "bos_token",
                                           &tokenizer->bos_token, &tokenizer->bos_id));
        MOIRA_RETURN_IF_ERROR(config_token(tokenizer, config, config_path, "eos_token",
                                           &tokenizer->eos_token, &tokenizer->eos_id));
        MOIRA_RETURN_IF_ERROR(load_chat_template(tokenizer, config, config_path));
    }
    const json_t *add_bos = json_object_get(config, "add_bos_token");
    const json_t *add_eos = json_object_get(config, "add_eos_token");
    if (!json_is_boolean(add_bos) && !json_is_boolean(add_eos))
        return load_post_processor(tokenizer, json_object_get(root, "post_processor"), 0);
    if (json_is_true(add_bos)) {
        if (tokenizer->bos_id < 0)
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, config_path, 0, 0,
                                   "add_bos_token is true but bos_token names no token");
        MOIRA_RETURN_IF_ERROR(frame_id(tokenizer, true, tokenizer->bos_id));
    }
    if (json_is_true(add_eos)) {
        if (tokenizer->eos_id < 0)
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, config_path, 0, 0,
                                   "add_eos_token is true but eos_token names no token");
        MOIRA_RETURN_IF_ERROR(frame_id(tokenizer, false, tokenizer->eos_id));
    }
    return MOIRA_OK_STATUS;
}

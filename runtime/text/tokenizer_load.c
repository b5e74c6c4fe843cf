/* Loading a tokenizer: tokenizer.json's vocabulary, merges and added tokens into flat tables,
 * then its pipeline (tokenizer_pipeline.c) and tokenizer_config.json (tokenizer_config.c). Every
 * problem names the file and, for JSON syntax, line:column; for a bad value, the JSON path of the
 * key (model.merges[17]), since a parsed JSON value has no position. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/read_file.h"
#include "runtime/text/tokenizer_load.h"
#include "runtime/utf8.h"

/* tokenizer.json of the largest public vocabularies is tens of MB; this bounds a hostile file. */
#define MAX_TOKENIZER_BYTES (512u << 20)
/* Ids beyond this are not a real vocabulary and would only size huge tables. */
#define MAX_TOKEN_ID (1 << 24)

moira_status_t moira_tokenizer_json_parse(const char *text, size_t len, const char *path,
                                          const char *what, json_t **out) {
    *out = NULL;
    json_error_t error;
    json_t *root = json_loadb(text, len, 0, &error);
    if (!root)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, error.line > 0 ? error.line : 0,
                               error.column > 0 ? error.column : 0, "not valid JSON (%s): %s", what,
                               error.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                               "the top level of a %s must be a JSON object", what);
    }
    *out = root;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_tokenizer_json_load(const char *path, const char *what, json_t **out) {
    *out = NULL;
    char *text;
    size_t len;
    MOIRA_RETURN_IF_ERROR(moira_read_file(path, what, MAX_TOKENIZER_BYTES, &text, &len));
    moira_status_t status = moira_tokenizer_json_parse(text, len, path, what, out);
    free(text);
    return status;
}

moira_status_t moira_tokenizer_bad(const moira_tokenizer_t *tokenizer, const char *key,
                                   const char *fmt, ...) {
    char message[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    return moira_status_at(MOIRA_CODE_INVALID_INPUT, tokenizer->path, 0, 0, "%s: %s", key, message);
}

bool moira_json_flag(const json_t *object, const char *key, bool fallback) {
    const json_t *value = json_object_get(object, key);
    return json_is_boolean(value) ? json_is_true(value) : fallback;
}

/* A token id from JSON: an integer in [0, MAX_TOKEN_ID). */
static bool token_id_of(const json_t *value, int32_t *id) {
    if (!json_is_integer(value)) return false;
    json_int_t v = json_integer_value(value);
    if (v < 0 || v >= MAX_TOKEN_ID) return false;
    *id = (int32_t)v;
    return true;
}

/* Sizes the id tables from the vocabulary and added tokens, and copies every token text into one
 * pool (each followed by room for its decoded bytes, which are never longer). */
static moira_status_t build_id_tables(moira_tokenizer_t *tokenizer, const json_t *vocab,
                                      const json_t *added) {
    int32_t largest = -1;
    size_t pool_bytes = 0;
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        int32_t id;
        if (!token_id_of(value, &id))
            return moira_tokenizer_bad(
                tokenizer, "model.vocab", "token \"%.80s\" has id %s; ids are integers in [0, %d)",
                key, json_is_integer(value) ? "out of range" : "not an integer", MAX_TOKEN_ID);
        if (id > largest) largest = id;
        pool_bytes += 2 * strlen(key) + 2;
    }
    size_t index;
    json_array_foreach((json_t *)added, index, value) {
        int32_t id;
        const char *content = json_string_value(json_object_get(value, "content"));
        if (!json_is_object(value) || !token_id_of(json_object_get(value, "id"), &id) || !content)
            return moira_tokenizer_bad(tokenizer, "added_tokens",
                                       "entry %zu needs an integer \"id\" in [0, %d) and a string "
                                       "\"content\"",
                                       index, MAX_TOKEN_ID);
        if (!*content)
            return moira_tokenizer_bad(tokenizer, "added_tokens", "entry %zu has empty content",
                                       index);
        if (id > largest) largest = id;
        pool_bytes += 2 * strlen(content) + 2;
    }
    if (largest < 0)
        return moira_tokenizer_bad(tokenizer, "model.vocab", "the vocabulary is empty");
    tokenizer->vocab_size = largest + 1;
    size_t n = (size_t)tokenizer->vocab_size;
    tokenizer->pool = malloc(pool_bytes ? pool_bytes : 1);
    tokenizer->id_text = calloc(n, sizeof(*tokenizer->id_text));
    tokenizer->id_text_len = calloc(n, sizeof(*tokenizer->id_text_len));
    tokenizer->id_bytes = calloc(n, sizeof(*tokenizer->id_bytes));
    tokenizer->id_bytes_len = calloc(n, sizeof(*tokenizer->id_bytes_len));
    tokenizer->id_flags = calloc(n, sizeof(*tokenizer->id_flags));
    tokenizer->added = calloc(json_array_size(added) + 1, sizeof(*tokenizer->added));
    if (!tokenizer->pool || !tokenizer->id_text || !tokenizer->id_text_len ||
        !tokenizer->id_bytes || !tokenizer->id_bytes_len || !tokenizer->id_flags ||
        !tokenizer->added)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer tables (%d ids)",
                                 tokenizer->vocab_size);

    MOIRA_RETURN_IF_ERROR(moira_text_map_init(&tokenizer->vocab, json_object_size(vocab)));
    char *cursor = tokenizer->pool;
    json_object_foreach((json_t *)vocab, key, value) {
        int32_t id = (int32_t)json_integer_value(value);
        size_t len = strlen(key);
        memcpy(cursor, key, len + 1);
        moira_text_map_put(&tokenizer->vocab, cursor, len, id);
        tokenizer->id_text[id] = cursor;
        tokenizer->id_text_len[id] = (uint32_t)len;
        tokenizer->id_flags[id] = TOKEN_PRESENT;
        cursor += 2 * len + 2;
    }
    json_array_foreach((json_t *)added, index, value) {
        int32_t id = (int32_t)json_integer_value(json_object_get(value, "id"));
        const char *content = json_string_value(json_object_get(value, "content"));
        size_t len = strlen(content);
        memcpy(cursor, content, len + 1);
        added_token_t *token = &tokenizer->added[tokenizer->added_count++];
        *token = (added_token_t){
            .content = cursor,
            .len = len,
            .id = id,
            .lstrip = moira_json_flag(value, "lstrip", false),
            .rstrip = moira_json_flag(value, "rstrip", false),
            .single_word = moira_json_flag(value, "single_word", false),
            .special = moira_json_flag(value, "special", false),
        };
        /* Hugging Face's default: special tokens are matched on the raw text. */
        token->normalized = moira_json_flag(value, "normalized", !token->special);
        tokenizer->id_text[id] = cursor;
        tokenizer->id_text_len[id] = (uint32_t)len;
        tokenizer->id_flags[id] =
            TOKEN_PRESENT | TOKEN_ADDED | (token->special ? TOKEN_SPECIAL : 0);
        cursor += 2 * len + 2;
    }
    return MOIRA_OK_STATUS;
}

/* What each id decodes to: an added token its content; a vocabulary entry the bytes its
 * byte-level characters stand for, or its own UTF-8 when a character is not one of them (as the
 * ByteLevel decoder falls back). Written into the pool room after each text. */
static void build_decoded_bytes(moira_tokenizer_t *tokenizer) {
    for (int32_t id = 0; id < tokenizer->vocab_size; id++) {
        if (!(tokenizer->id_flags[id] & TOKEN_PRESENT)) continue;
        const char *text = tokenizer->id_text[id];
        size_t len = tokenizer->id_text_len[id];
        char *bytes = (char *)text + len + 1;
        size_t count = 0;
        bool byte_level = !(tokenizer->id_flags[id] & TOKEN_ADDED);
        for (size_t pos = 0; byte_level && pos < len;) {
            int byte = moira_byte_level_byte(moira_utf8_next(text, len, &pos));
            if (byte < 0)
                byte_level = false;
            else
                bytes[count++] = (char)byte;
        }
        if (!byte_level) {
            memcpy(bytes, text, len);
            count = len;
        }
        tokenizer->id_bytes[id] = bytes;
        tokenizer->id_bytes_len[id] = (uint32_t)count;
        if (count > tokenizer->max_token_bytes) tokenizer->max_token_bytes = (uint32_t)count;
    }
}

/* The two halves of one merge, as "left right" or ["left", "right"]. */
static bool merge_halves(const json_t *merge, const char **left, size_t *left_len,
                         const char **right, size_t *right_len) {
    if (json_is_string(merge)) {
        const char *text = json_string_value(merge);
        const char *space = strchr(text, ' ');
        if (!space || strchr(space + 1, ' ')) return false;
        *left = text;
        *left_len = (size_t)(space - text);
        *right = space + 1;
        *right_len = strlen(space + 1);
        return *left_len > 0 && *right_len > 0;
    }
    if (json_is_array(merge) && json_array_size(merge) == 2 &&
        json_is_string(json_array_get(merge, 0)) && json_is_string(json_array_get(merge, 1))) {
        *left = json_string_value(json_array_get(merge, 0));
        *right = json_string_value(json_array_get(merge, 1));
        *left_len = strlen(*left);
        *right_len = strlen(*right);
        return true;
    }
    return false;
}

/* Fills the merge table; every half and every merged text must be in the vocabulary. */
static moira_status_t build_merges(moira_tokenizer_t *tokenizer, const json_t *merges) {
    MOIRA_RETURN_IF_ERROR(moira_merge_map_init(&tokenizer->merges, json_array_size(merges)));
    char *joined = NULL;
    size_t joined_capacity = 0;
    size_t rank;
    const json_t *merge;
    moira_status_t status = MOIRA_OK_STATUS;
    json_array_foreach((json_t *)merges, rank, merge) {
        const char *left, *right;
        size_t left_len, right_len;
        char key[48];
        snprintf(key, sizeof(key), "model.merges[%zu]", rank);
        if (rank >= INT32_MAX || !merge_halves(merge, &left, &left_len, &right, &right_len)) {
            status = moira_tokenizer_bad(tokenizer, key,
                                         "a merge is \"left right\" (one space) or [\"left\", "
                                         "\"right\"]");
            break;
        }
        if (left_len + right_len + 1 > joined_capacity) {
            joined_capacity = 2 * (left_len + right_len + 1);
            char *grown = realloc(joined, joined_capacity);
            if (!grown) {
                status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer merges");
                break;
            }
            joined = grown;
        }
        memcpy(joined, left, left_len);
        memcpy(joined + left_len, right, right_len);
        const text_map_t *vocab = &tokenizer->vocab;
        int32_t left_id = moira_text_map_find(vocab, left, left_len);
        int32_t right_id = moira_text_map_find(vocab, right, right_len);
        int32_t merged_id = moira_text_map_find(vocab, joined, left_len + right_len);
        const char *unknown = left_id < 0     ? left
                              : right_id < 0  ? right
                              : merged_id < 0 ? joined
                                              : NULL;
        size_t unknown_len = left_id < 0    ? left_len
                             : right_id < 0 ? right_len
                                            : left_len + right_len;
        if (unknown) {
            status = moira_tokenizer_bad(tokenizer, key,
                                         "the merge names token \"%.*s\", which is not in the "
                                         "vocabulary",
                                         (int)(unknown_len > 80 ? 80 : unknown_len), unknown);
            break;
        }
        moira_merge_map_add(&tokenizer->merges, left_id, right_id, (int32_t)rank, merged_id);
    }
    free(joined);
    return status;
}

/* The model section: byte-level BPE, with the options Moira implements. */
static moira_status_t load_model(moira_tokenizer_t *tokenizer, const json_t *root) {
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return moira_tokenizer_bad(tokenizer, "model", "missing, or not an object");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "BPE"))
        return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                               "model.type: \"%s\" tokenizers are not implemented (Moira reads "
                               "byte-level BPE)",
                               type);
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab))
        return moira_tokenizer_bad(tokenizer, "model.vocab", "missing, or not an object");
    if (!json_is_array(merges))
        return moira_tokenizer_bad(tokenizer, "model.merges", "missing, or not an array");
    const json_t *added = json_object_get(root, "added_tokens");
    json_t *no_added = json_array();
    if (!no_added) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        json_decref(no_added);
        return moira_tokenizer_bad(tokenizer, "added_tokens", "not an array");
    }
    moira_status_t status =
        build_id_tables(tokenizer, vocab, json_is_array(added) ? added : no_added);
    json_decref(no_added);
    MOIRA_RETURN_IF_ERROR(status);
    build_decoded_bytes(tokenizer);

    const char *prefix = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *suffix = json_string_value(json_object_get(model, "end_of_word_suffix"));
    const json_t *dropout = json_object_get(model, "dropout");
    if ((prefix && *prefix) || (suffix && *suffix))
        return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                               "model: continuing_subword_prefix / end_of_word_suffix are not "
                               "implemented");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return moira_status_at(MOIRA_CODE_UNSUPPORTED, tokenizer->path, 0, 0,
                               "model.dropout: BPE dropout is random, for training only");
    tokenizer->ignore_merges = moira_json_flag(model, "ignore_merges", false);
    MOIRA_RETURN_IF_ERROR(build_merges(tokenizer, merges));

    for (int byte = 0; byte < 256; byte++) {
        char spelled[4];
        size_t len = moira_utf8_put(spelled, moira_byte_level_char((uint8_t)byte));
        tokenizer->byte_ids[byte] = moira_text_map_find(&tokenizer->vocab, spelled, len);
    }
    /* Added tokens go into the trie of the pass that matches them. */
    for (size_t i = 0; i < tokenizer->added_count; i++) {
        const added_token_t *token = &tokenizer->added[i];
        if (token->single_word && !tokenizer->word_char)
            MOIRA_RETURN_IF_ERROR(moira_tokenizer_compile_regex(tokenizer, "added_tokens", "\\w", 2,
                                                                &tokenizer->word_char));
        added_trie_t *trie =
            token->normalized ? &tokenizer->normalized_trie : &tokenizer->unnormalized_trie;
        MOIRA_RETURN_IF_ERROR(moira_added_trie_add(trie, token->content, token->len, (int32_t)i));
    }
    return MOIRA_OK_STATUS;
}

/* Builds a tokenizer from the parsed files (`config` may be NULL). */
static moira_status_t load_parsed(const char *tokenizer_path, const json_t *root,
                                  const json_t *config, const char *config_path,
                                  moira_tokenizer_t **out) {
    moira_tokenizer_t *tokenizer = calloc(1, sizeof(*tokenizer));
    if (!tokenizer) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    tokenizer->bos_id = tokenizer->eos_id = -1;
    tokenizer->path = strdup(tokenizer_path);
    moira_status_t status = tokenizer->path
                                ? load_model(tokenizer, root)
                                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    if (!status) status = moira_tokenizer_load_pipeline(tokenizer, root);
    if (!status) status = moira_tokenizer_load_config(tokenizer, root, config, config_path);
    if (status) {
        moira_tokenizer_free(tokenizer);
        return status;
    }
    *out = tokenizer;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_tokenizer_load_files(const char *tokenizer_path, const char *config_path,
                                          moira_tokenizer_t **out) {
    *out = NULL;
    json_t *root = NULL, *config = NULL;
    moira_status_t status = moira_tokenizer_json_load(tokenizer_path, "tokenizer.json", &root);
    if (!status && config_path)
        status = moira_tokenizer_json_load(config_path, "tokenizer_config.json", &config);
    if (!status) status = load_parsed(tokenizer_path, root, config, config_path, out);
    json_decref(root);
    json_decref(config);
    return status;
}

moira_status_t moira_tokenizer_load_texts(const char *tokenizer_json, size_t tokenizer_len,
                                          const char *config_json, size_t config_len,
                                          moira_tokenizer_t **out) {
    *out = NULL;
    json_t *root = NULL, *config = NULL;
    moira_status_t status = moira_tokenizer_json_parse(tokenizer_json, tokenizer_len,
                                                       "tokenizer.json", "tokenizer.json", &root);
    if (!status && config_json)
        status = moira_tokenizer_json_parse(config_json, config_len, "tokenizer_config.json",
                                            "tokenizer_config.json", &config);
    if (!status) status = load_parsed("tokenizer.json", root, config, "tokenizer_config.json", out);
    json_decref(root);
    json_decref(config);
    return status;
}

moira_status_t moira_tokenizer_load(const char *model_dir, moira_tokenizer_t **out) {
    *out = NULL;
    size_t len = strlen(model_dir);
    char *tokenizer_path = malloc(len + 32), *config_path = malloc(len + 32);
    if (!tokenizer_path || !config_path) {
        free(tokenizer_path);
        free(config_path);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    }
    snprintf(tokenizer_path, len + 32, "%s/tokenizer.json", model_dir);
    snprintf(config_path, len + 32, "%s/tokenizer_config.json", model_dir);
    moira_status_t status = moira_tokenizer_load_files(tokenizer_path, config_path, out);
    free(tokenizer_path);
    free(config_path);
    return status;
}

void moira_tokenizer_free(moira_tokenizer_t *tokenizer) {
    if (!tokenizer) return;
    for (size_t s = 0; s < tokenizer->step_count; s++) {
        if (tokenizer->steps[s].regex) onig_free(tokenizer->steps[s].regex);
        free(tokenizer->steps[s].literal);
    }
    free(tokenizer->steps);
    if (tokenizer->word_char) onig_free(tokenizer->word_char);
    moira_added_trie_free(&tokenizer->unnormalized_trie);
    moira_added_trie_free(&tokenizer->normalized_trie);
    moira_text_map_free(&tokenizer->vocab);
    moira_merge_map_free(&tokenizer->merges);
    free(tokenizer->added);
    free(tokenizer->id_text);
    free(tokenizer->id_text_len);
    free(tokenizer->id_bytes);
    free(tokenizer->id_bytes_len);
    free(tokenizer->id_flags);
    free(tokenizer->pool);
    free(tokenizer->bos_token);
    free(tokenizer->eos_token);
    free(tokenizer->chat_template);
    free(tokenizer->chat_template_origin);
    free(tokenizer->path);
    free(tokenizer);
}

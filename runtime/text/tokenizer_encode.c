/* Encoding: text -> ids through the stages of tokenizer.json, each one turning a list of pieces
 * into a finer list (added tokens, then the pre-tokenizer steps), and BPE on each final piece. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_internal.h"
#include "runtime/utf8.h"

moira_status_t moira_token_ids_push(moira_token_ids_t *ids, int32_t id) {
    if (ids->count == ids->capacity) {
        size_t next = ids->capacity ? ids->capacity * 2 : 64;
        int32_t *grown = realloc(ids->ids, next * sizeof(*grown));
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "token ids");
        ids->ids = grown;
        ids->capacity = next;
    }
    ids->ids[ids->count++] = id;
    return MOIRA_OK_STATUS;
}

void moira_token_ids_free(moira_token_ids_t *ids) {
    free(ids->ids);
    memset(ids, 0, sizeof(*ids));
}

moira_status_t moira_work_emit(encode_work_t *work, text_piece_t piece) {
    if (work->next_count == work->next_capacity) {
        size_t next = work->next_capacity ? work->next_capacity * 2 : 256;
        text_piece_t *grown = realloc(work->next, next * sizeof(*grown));
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer pieces");
        work->next = grown;
        work->next_capacity = next;
    }
    work->next[work->next_count++] = piece;
    return MOIRA_OK_STATUS;
}

void moira_work_swap(encode_work_t *work) {
    text_piece_t *pieces = work->pieces;
    size_t capacity = work->capacity;
    work->pieces = work->next;
    work->capacity = work->next_capacity;
    work->count = work->next_count;
    work->next = pieces;
    work->next_capacity = capacity;
    work->next_count = 0;
}

const char *moira_piece_bytes(const char *text, const encode_work_t *work,
                              const text_piece_t *piece) {
    return (piece->in_scratch ? work->scratch : text) + piece->start;
}

static void work_free(encode_work_t *work) {
    free(work->pieces);
    free(work->next);
    free(work->scratch);
    free(work->spans);
    free(work->symbols);
    free(work->heap);
    free(work->spelling);
    if (work->region) onig_region_free(work->region, 1);
}

/* One added-token pass over every piece not yet claimed by an added token. */
static moira_status_t added_pass(const moira_tokenizer_t *tokenizer, const added_trie_t *trie,
                                 const char *text, encode_work_t *work) {
    work->next_count = 0;
    for (size_t i = 0; i < work->count; i++) {
        if (work->pieces[i].added_id >= 0)
            MOIRA_RETURN_IF_ERROR(moira_work_emit(work, work->pieces[i]));
        else
            MOIRA_RETURN_IF_ERROR(moira_added_split(tokenizer, trie, text, &work->pieces[i], work));
    }
    moira_work_swap(work);
    return MOIRA_OK_STATUS;
}

/* The stages in order; the normalizer is the identity (tokenizer_pipeline.c refuses others), so
 * the second added-token pass runs on the same bytes. */
static moira_status_t encode_text(const moira_tokenizer_t *tokenizer, const char *text, size_t len,
                                  encode_work_t *work, moira_token_ids_t *ids) {
    work->region = onig_region_new();
    if (!work->region) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer");
    if (len == 0) return MOIRA_OK_STATUS;
    MOIRA_RETURN_IF_ERROR(moira_work_emit(work, (text_piece_t){0, 0, len, -1}));
    moira_work_swap(work);
    MOIRA_RETURN_IF_ERROR(added_pass(tokenizer, &tokenizer->unnormalized_trie, text, work));
    MOIRA_RETURN_IF_ERROR(added_pass(tokenizer, &tokenizer->normalized_trie, text, work));
    MOIRA_RETURN_IF_ERROR(moira_pretokenize(tokenizer, text, work));
    for (size_t i = 0; i < work->count; i++) {
        const text_piece_t *piece = &work->pieces[i];
        if (piece->added_id >= 0) {
            MOIRA_RETURN_IF_ERROR(moira_token_ids_push(ids, piece->added_id));
            continue;
        }
        const unsigned char *bytes = (const unsigned char *)moira_piece_bytes(text, work, piece);
        MOIRA_RETURN_IF_ERROR(moira_bpe_encode(tokenizer, bytes, piece->len, work, ids));
    }
    return MOIRA_OK_STATUS;
}

moira_status_t moira_tokenizer_encode(const moira_tokenizer_t *tokenizer, const char *text,
                                      size_t len, bool add_special_tokens, moira_token_ids_t *ids) {
    size_t valid = moira_utf8_valid_prefix(text, len);
    if (valid != len)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "the text is not valid UTF-8 (byte %zu of %zu)", valid + 1, len);
    size_t first = ids->count;
    if (add_special_tokens)
        for (size_t i = 0; i < tokenizer->prefix_count; i++)
            MOIRA_RETURN_IF_ERROR(moira_token_ids_push(ids, tokenizer->prefix_ids[i]));
    encode_work_t work = {0};
    moira_status_t status = encode_text(tokenizer, text, len, &work, ids);
    work_free(&work);
    for (size_t i = 0; !status && add_special_tokens && i < tokenizer->suffix_count; i++)
        status = moira_token_ids_push(ids, tokenizer->suffix_ids[i]);
    if (status) ids->count = first;
    return status;
}

int32_t moira_tokenizer_vocab_size(const moira_tokenizer_t *tokenizer) {
    return tokenizer->vocab_size;
}

int32_t moira_tokenizer_bos_id(const moira_tokenizer_t *tokenizer) {
    return tokenizer->bos_id;
}

int32_t moira_tokenizer_eos_id(const moira_tokenizer_t *tokenizer) {
    return tokenizer->eos_id;
}

const char *moira_tokenizer_bos_token(const moira_tokenizer_t *tokenizer) {
    return tokenizer->bos_token;
}

const char *moira_tokenizer_eos_token(const moira_tokenizer_t *tokenizer) {
    return tokenizer->eos_token;
}

bool moira_tokenizer_is_special(const moira_tokenizer_t *tokenizer, int32_t id) {
    return id >= 0 && id < tokenizer->vocab_size && (tokenizer->id_flags[id] & TOKEN_SPECIAL);
}

const char *moira_tokenizer_chat_template(const moira_tokenizer_t *tokenizer, const char **origin) {
    if (origin) *origin = tokenizer->chat_template_origin;
    return tokenizer->chat_template;
}

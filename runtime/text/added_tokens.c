/* Added tokens (special tokens such as <｜User｜>, and any token a model added after training) are
 * found in the text before anything else and become their ids whole. Hugging Face matches them
 * leftmost-longest in two passes: tokens with normalized=false on the raw text, then the others
 * on the normalized remainder; this file does one pass over one piece with a byte trie. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_internal.h"
#include "runtime/utf8.h"

/* Grows an array to hold `need` elements, doubling. */
static bool grow(void **array, int32_t *capacity, int32_t need, size_t element) {
    if (need <= *capacity) return true;
    int32_t next = *capacity ? *capacity * 2 : 64;
    while (next < need)
        next *= 2;
    void *grown = realloc(*array, (size_t)next * element);
    if (!grown) return false;
    *array = grown;
    *capacity = next;
    return true;
}

/* The child of `node` along `byte`, or -1. */
static int32_t child_of(const added_trie_t *trie, int32_t node, uint8_t byte) {
    for (int32_t e = trie->nodes[node].first_edge; e >= 0; e = trie->edges[e].next)
        if (trie->edges[e].byte == byte) return trie->edges[e].child;
    return -1;
}

/* Adds one token's bytes, ending at a node that names `token` (its index in the added list). A
 * text added twice names the later token, as a map keyed by content would. */
moira_status_t moira_added_trie_add(added_trie_t *trie, const char *text, size_t len,
                                    int32_t token) {
    if (trie->node_count == 0) {
        if (!grow((void **)&trie->nodes, &trie->node_capacity, 1, sizeof(*trie->nodes)))
            return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "added tokens");
        trie->nodes[0] = (added_trie_node_t){-1, -1};
        trie->node_count = 1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t byte = (uint8_t)text[i];
        int32_t child = child_of(trie, node, byte);
        if (child < 0) {
            if (!grow((void **)&trie->nodes, &trie->node_capacity, trie->node_count + 1,
                      sizeof(*trie->nodes)) ||
                !grow((void **)&trie->edges, &trie->edge_capacity, trie->edge_count + 1,
                      sizeof(*trie->edges)))
                return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "added tokens");
            child = trie->node_count++;
            trie->nodes[child] = (added_trie_node_t){-1, -1};
            trie->edges[trie->edge_count] =
                (added_trie_edge_t){child, trie->nodes[node].first_edge, byte};
            trie->nodes[node].first_edge = trie->edge_count++;
        }
        node = child;
    }
    trie->nodes[node].token = token;
    return MOIRA_OK_STATUS;
}

void moira_added_trie_free(added_trie_t *trie) {
    free(trie->nodes);
    free(trie->edges);
    memset(trie, 0, sizeof(*trie));
}

/* Unicode's White_Space property (what Rust's char::is_whitespace tests), for lstrip/rstrip. */
static bool is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* Start of the whitespace run that ends at `end` (not before `floor`). */
static size_t skip_white_space_back(const char *text, size_t floor, size_t end) {
    while (end > floor) {
        size_t start = moira_utf8_prev(text, floor, end);
        size_t pos = start;
        if (!is_white_space(moira_utf8_next(text, end, &pos))) break;
        end = start;
    }
    return end;
}

/* End of the whitespace run that starts at `start` (not past `limit`). */
static size_t skip_white_space_forward(const char *text, size_t start, size_t limit) {
    while (start < limit) {
        size_t pos = start;
        if (!is_white_space(moira_utf8_next(text, limit, &pos))) break;
        start = pos;
    }
    return start;
}

/* Whether the character at text[start, end) is a word character (\w: letters, marks, digits,
 * connector punctuation), what single_word tests on either side of a match. */
static bool is_word_char(const moira_tokenizer_t *tokenizer, const char *text, size_t start,
                         size_t end) {
    const UChar *subject = (const UChar *)text;
    return onig_match(tokenizer->word_char, subject, subject + end, subject + start, NULL,
                      ONIG_OPTION_NONE) > 0;
}

static bool word_before(const moira_tokenizer_t *tokenizer, const char *text, size_t floor,
                        size_t at) {
    return at > floor && is_word_char(tokenizer, text, moira_utf8_prev(text, floor, at), at);
}

static bool word_after(const moira_tokenizer_t *tokenizer, const char *text, size_t at,
                       size_t limit) {
    return at < limit && is_word_char(tokenizer, text, at, limit);
}

/* Emits the text between added tokens as a piece still to be tokenized. */
static moira_status_t emit_text(encode_work_t *work, const text_piece_t *piece, size_t start,
                                size_t end) {
    if (end <= start) return MOIRA_OK_STATUS;
    return moira_work_emit(work, (text_piece_t){piece->in_scratch, start, end - start, -1});
}

moira_status_t moira_added_split(const moira_tokenizer_t *tokenizer, const added_trie_t *trie,
                                 const char *text, const text_piece_t *piece, encode_work_t *work) {
    const char *base = moira_piece_bytes(text, work, piece) - piece->start;
    size_t end = piece->start + piece->len;
    size_t segment = piece->start;
    size_t pos = piece->start;
    while (trie->node_count > 0 && pos < end) {
        int32_t node = 0, best = -1;
        size_t best_end = pos;
        for (size_t i = pos; i < end; i++) {
            node = child_of(trie, node, (uint8_t)base[i]);
            if (node < 0) break;
            if (trie->nodes[node].token >= 0) {
                best = trie->nodes[node].token;
                best_end = i + 1;
            }
        }
        if (best < 0) {
            pos++;
            continue;
        }
        const added_token_t *token = &tokenizer->added[best];
        size_t match_start = pos, match_end = best_end;
        /* A match single_word rejects is passed over whole, as the matcher's non-overlapping
         * iteration does. */
        if (token->single_word && (word_before(tokenizer, base, piece->start, match_start) ||
                                   word_after(tokenizer, base, match_end, end))) {
            pos = match_end;
            continue;
        }
        if (token->lstrip) match_start = skip_white_space_back(base, segment, match_start);
        if (token->rstrip) match_end = skip_white_space_forward(base, match_end, end);
        MOIRA_RETURN_IF_ERROR(emit_text(work, piece, segment, match_start));
        MOIRA_RETURN_IF_ERROR(
            moira_work_emit(work, (text_piece_t){piece->in_scratch, match_start,
                                                 match_end - match_start, token->id}));
        segment = pos = match_end;
    }
    return emit_text(work, piece, segment, end);
}

/* Byte-pair encoding of one pre-token: start from one symbol per byte (its byte-level token) and
 * repeatedly merge the adjacent pair whose merge has the lowest rank, leftmost first among equal
 * ranks, until no adjacent pair has a merge. A binary heap of candidate pairs over a linked list
 * of symbols keeps this O(n log n) for long pieces (a 10 kB whitespace run is one pre-token). */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_internal.h"

typedef struct bpe_symbol {
    int32_t id;
    int32_t prev, next; /* neighbours in the list, -1 at the ends */
    bool gone;          /* merged into its left neighbour */
} bpe_symbol_t;

/* A possible merge of the symbol at `left` with its right neighbour. */
typedef struct bpe_candidate {
    int32_t rank;
    int32_t left;
    int32_t right_id, merged; /* the pair as it was when queued, to spot stale entries */
} bpe_candidate_t;

static bool before(const bpe_candidate_t *a, const bpe_candidate_t *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bpe_candidate_t *heap, size_t *count, bpe_candidate_t item) {
    size_t i = (*count)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(&item, &heap[parent])) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
}

static bpe_candidate_t heap_pop(bpe_candidate_t *heap, size_t *count) {
    bpe_candidate_t top = heap[0];
    bpe_candidate_t last = heap[--(*count)];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *count) break;
        if (child + 1 < *count && before(&heap[child + 1], &heap[child])) child++;
        if (!before(&heap[child], &last)) break;
        heap[i] = heap[child];
        i = child;
    }
    if (*count > 0) heap[i] = last;
    return top;
}

/* Queues the merge of symbols[left] with its right neighbour, if the pair has one. */
static void queue_pair(const moira_tokenizer_t *tokenizer, encode_work_t *work, size_t *count,
                       int32_t left) {
    if (left < 0) return;
    int32_t right = work->symbols[left].next;
    if (right < 0) return;
    int32_t rank, merged;
    if (moira_merge_map_find(&tokenizer->merges, work->symbols[left].id, work->symbols[right].id,
                             &rank, &merged))
        heap_push(work->heap, count,
                  (bpe_candidate_t){rank, left, work->symbols[right].id, merged});
}

/* Makes room for a piece of `len` bytes: one symbol per byte, and at most one queued candidate
 * per merge done plus one per initial pair. */
static moira_status_t reserve(encode_work_t *work, size_t len) {
    if (len > work->symbol_capacity) {
        size_t next = work->symbol_capacity ? work->symbol_capacity : 256;
        while (next < len)
            next *= 2;
        bpe_symbol_t *symbols = realloc(work->symbols, next * sizeof(*symbols));
        if (!symbols) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer BPE");
        work->symbols = symbols;
        work->symbol_capacity = next;
    }
    if (2 * len > work->heap_capacity) {
        size_t next = work->heap_capacity ? work->heap_capacity : 512;
        while (next < 2 * len)
            next *= 2;
        bpe_candidate_t *heap = realloc(work->heap, next * sizeof(*heap));
        if (!heap) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer BPE");
        work->heap = heap;
        work->heap_capacity = next;
    }
    return MOIRA_OK_STATUS;
}

/* The id of the piece spelled whole in byte-level characters, or -1 (for ignore_merges). */
static moira_status_t whole_word_id(const moira_tokenizer_t *tokenizer, const unsigned char *bytes,
                                    size_t len, encode_work_t *work, int32_t *id) {
    size_t need = len * 2; /* a byte-level character is at most 2 bytes of UTF-8 */
    if (need > work->spelling_capacity) {
        char *grown = realloc(work->spelling, need);
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer BPE");
        work->spelling = grown;
        work->spelling_capacity = need;
    }
    size_t spelled = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t cp = moira_byte_level_char(bytes[i]);
        if (cp < 0x80) {
            work->spelling[spelled++] = (char)cp;
        } else {
            work->spelling[spelled++] = (char)(0xC0 | (cp >> 6));
            work->spelling[spelled++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    *id = moira_text_map_find(&tokenizer->vocab, work->spelling, spelled);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_bpe_encode(const moira_tokenizer_t *tokenizer, const unsigned char *bytes,
                                size_t len, encode_work_t *work, moira_token_ids_t *ids) {
    if (len == 0) return MOIRA_OK_STATUS;
    if (tokenizer->ignore_merges) {
        int32_t id = -1;
        MOIRA_RETURN_IF_ERROR(whole_word_id(tokenizer, bytes, len, work, &id));
        if (id >= 0) return moira_token_ids_push(ids, id);
    }
    MOIRA_RETURN_IF_ERROR(reserve(work, len));
    /* A byte whose character is missing from the vocabulary has no symbol (BPE without an unk
     * token drops it, as Hugging Face's does). */
    int32_t count = 0;
    for (size_t i = 0; i < len; i++) {
        int32_t id = tokenizer->byte_ids[bytes[i]];
        if (id < 0) continue;
        work->symbols[count] = (bpe_symbol_t){id, count - 1, count + 1, false};
        count++;
    }
    if (count == 0) return MOIRA_OK_STATUS;
    work->symbols[count - 1].next = -1;

    size_t queued = 0;
    for (int32_t i = 0; i + 1 < count; i++)
        queue_pair(tokenizer, work, &queued, i);
    while (queued > 0) {
        bpe_candidate_t top = heap_pop(work->heap, &queued);
        bpe_symbol_t *left = &work->symbols[top.left];
        if (left->gone || left->next < 0) continue;
        bpe_symbol_t *right = &work->symbols[left->next];
        int32_t rank, merged;
        /* The pair may have changed since it was queued (either side merged with another). */
        if (right->id != top.right_id ||
            !moira_merge_map_find(&tokenizer->merges, left->id, right->id, &rank, &merged) ||
            merged != top.merged || rank != top.rank)
            continue;
        left->id = merged;
        right->gone = true;
        left->next = right->next;
        if (right->next >= 0) work->symbols[right->next].prev = top.left;
        queue_pair(tokenizer, work, &queued, left->prev);
        queue_pair(tokenizer, work, &queued, top.left);
    }
    for (int32_t i = 0; i >= 0; i = work->symbols[i].next)
        MOIRA_RETURN_IF_ERROR(moira_token_ids_push(ids, work->symbols[i].id));
    return MOIRA_OK_STATUS;
}

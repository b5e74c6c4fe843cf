/* The tokenizer's tables, shared by its loading, encoding and decoding files. Not a public
 * header: everything outside runtime/text goes through tokenizer.h. */
#ifndef MOIRA_RUNTIME_TEXT_TOKENIZER_INTERNAL_H
#define MOIRA_RUNTIME_TEXT_TOKENIZER_INTERNAL_H

#include <oniguruma.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/text/tokenizer.h"

/* Flags of one id. */
enum {
    TOKEN_PRESENT = 1, /* the id names a token (vocabularies may have holes) */
    TOKEN_ADDED = 2,   /* an added token: matched whole in text, decoded as its content */
    TOKEN_SPECIAL = 4, /* skipped by decode on request */
};

/* A string-to-id hash table over the model's vocabulary. Keys point into the tokenizer's pool. */
typedef struct text_map_entry {
    const char *text;
    uint32_t len;
    int32_t id;
} text_map_entry_t;

typedef struct text_map {
    text_map_entry_t *entries; /* owned */
    size_t count, capacity;
    int32_t *slots; /* entry index + 1, or 0 for an empty slot; owned */
    size_t mask;    /* slot count - 1 (a power of two) */
} text_map_t;

/* The BPE merges: (left id, right id) -> (rank, merged id), open addressing. */
typedef struct merge_map {
    uint64_t *keys;  /* left << 32 | right, or UINT64_MAX for an empty slot; owned */
    int32_t *ranks;  /* owned */
    int32_t *merged; /* owned */
    size_t mask;
} merge_map_t;

/* A prefix tree over the bytes of the added tokens, for leftmost-longest matching. Children are
 * kept as lists of edges: a few hundred tokens that mostly share "<｜" make a thin tree. */
typedef struct added_trie_node {
    int32_t first_edge; /* index into edges, or -1 */
    int32_t token;      /* index into the added-token list ending here, or -1 */
} added_trie_node_t;

typedef struct added_trie_edge {
    int32_t child;
    int32_t next; /* the next edge of the same parent, or -1 */
    uint8_t byte;
} added_trie_edge_t;

typedef struct added_trie {
    added_trie_node_t *nodes; /* node 0 is the root; owned */
    added_trie_edge_t *edges; /* owned */
    int32_t node_count, node_capacity;
    int32_t edge_count, edge_capacity;
} added_trie_t;

typedef struct added_token {
    const char *content; /* into the string pool */
    size_t len;
    int32_t id;
    bool lstrip, rstrip, single_word, normalized, special;
} added_token_t;

typedef enum split_behavior {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior_t;

/* One step of the pre-tokenizer sequence. */
typedef struct pretokenize_step {
    enum { STEP_SPLIT, STEP_BYTE_LEVEL } kind;
    regex_t *regex; /* Split by regex, or ByteLevel's own regex when use_regex; owned */
    char *literal;  /* Split by string; owned */
    size_t literal_len;
    split_behavior_t behavior;
    bool invert;
    bool add_prefix_space; /* ByteLevel */
} pretokenize_step_t;

struct moira_tokenizer {
    char *path;             /* tokenizer.json, for messages; owned */
    char *pool;             /* every token text and decoded byte string; owned */
    int32_t vocab_size;     /* one past the largest id */
    const char **id_text;   /* the token's text per id (into pool); owned array */
    uint32_t *id_text_len;  /* owned */
    const char **id_bytes;  /* the bytes decoding gives per id (into pool); owned array */
    uint32_t *id_bytes_len; /* owned */
    uint8_t *id_flags;      /* TOKEN_* per id; owned */
    uint32_t max_token_bytes;
    text_map_t vocab; /* text -> id over the model's vocabulary (not the added tokens) */
    merge_map_t merges;
    bool ignore_merges;    /* a pre-token that is a whole vocabulary entry skips merging */
    int32_t byte_ids[256]; /* the id of each byte's one-character byte-level token, or -1 */

    added_token_t *added; /* owned */
    size_t added_count;
    regex_t *word_char; /* \w, for single_word tokens (NULL when no token is single_word); owned */
    added_trie_t unnormalized_trie; /* tokens matched on the raw text */
    added_trie_t normalized_trie;   /* tokens matched after the normalizer */

    pretokenize_step_t *steps; /* owned */
    size_t step_count;

    int32_t prefix_ids[4]; /* what add_special_tokens puts before and after the text */
    size_t prefix_count;
    int32_t suffix_ids[4];
    size_t suffix_count;

    int32_t bos_id, eos_id;
    char *bos_token, *eos_token; /* owned; NULL when none */
    char *chat_template;         /* owned; NULL when none */
    char *chat_template_origin;  /* owned */
};

/* text_map.c: sized once for `capacity` entries; a text put twice keeps its later id, as a JSON
 * object read into a map does. */
moira_status_t moira_text_map_init(text_map_t *map, size_t capacity);
void moira_text_map_put(text_map_t *map, const char *text, size_t len, int32_t id);
int32_t moira_text_map_find(const text_map_t *map, const char *text, size_t len);
void moira_text_map_free(text_map_t *map);

/* merge_map.c */
moira_status_t moira_merge_map_init(merge_map_t *map, size_t count);
/* Adds a merge; a pair listed twice takes its later rank, as Hugging Face's map does (returns
 * false then). */
bool moira_merge_map_add(merge_map_t *map, int32_t left, int32_t right, int32_t rank,
                         int32_t merged);
bool moira_merge_map_find(const merge_map_t *map, int32_t left, int32_t right, int32_t *rank,
                          int32_t *merged);
void moira_merge_map_free(merge_map_t *map);

/* byte_level.c: GPT-2's reversible map between bytes and printable code points. */
uint32_t moira_byte_level_char(uint8_t byte);
/* The byte a code point stands for, or -1 when it is not one of the 256. */
int moira_byte_level_byte(uint32_t cp);

/* added_tokens.c */
moira_status_t moira_added_trie_add(added_trie_t *trie, const char *text, size_t len,
                                    int32_t token);
void moira_added_trie_free(added_trie_t *trie);

/* One piece of text on its way through encoding: a byte range of the input or of the scratch. */
typedef struct text_piece {
    uint32_t in_scratch; /* 0: offsets into the text; 1: into the scratch bytes */
    size_t start, len;
    int32_t added_id; /* an added token's id (the piece is done), or -1 */
} text_piece_t;

/* Scratch state of one encode call (grown as needed, released at its end). */
typedef struct encode_work {
    text_piece_t *pieces, *next; /* the current list and the one a step builds */
    size_t count, next_count, capacity, next_capacity;
    char *scratch; /* bytes of pieces that are not slices of the text (a prefix space added) */
    size_t scratch_len, scratch_capacity;
    struct split_span *spans; /* pretokenize.c: the matches and gaps of one split */
    size_t span_capacity;
    OnigRegion *region;
    struct bpe_symbol *symbols; /* bpe.c */
    struct bpe_candidate *heap;
    size_t symbol_capacity, heap_capacity;
    char *spelling; /* a piece in its byte-level spelling, for ignore_merges */
    size_t spelling_capacity;
} encode_work_t;

/* added_tokens.c: splits `piece` on the added tokens of `trie`, appending to work->next. */
moira_status_t moira_added_split(const moira_tokenizer_t *tokenizer, const added_trie_t *trie,
                                 const char *text, const text_piece_t *piece, encode_work_t *work);

/* pretokenize.c: runs every pre-tokenizer step over work->pieces (text-only pieces). */
moira_status_t moira_pretokenize(const moira_tokenizer_t *tokenizer, const char *text,
                                 encode_work_t *work);

/* bpe.c: appends the ids of one pre-token (its raw bytes) to `ids`. */
moira_status_t moira_bpe_encode(const moira_tokenizer_t *tokenizer, const unsigned char *bytes,
                                size_t len, encode_work_t *work, moira_token_ids_t *ids);

/* Appends a piece to work->next (growing it). */
moira_status_t moira_work_emit(encode_work_t *work, text_piece_t piece);
/* Makes the list just built (work->next) the current one (work->pieces). */
void moira_work_swap(encode_work_t *work);
/* The bytes of a piece. */
const char *moira_piece_bytes(const char *text, const encode_work_t *work,
                              const text_piece_t *piece);

#endif

/* The pre-tokenizer sequence of tokenizer.json: each step cuts every piece of text into smaller
 * ones (by a regex or a string, keeping or merging the matches as its behaviour says), and
 * ByteLevel optionally adds a leading space and splits with GPT-2's own regex. BPE then works on
 * each final piece alone, so these cuts decide which merges can ever happen. */
#include <stdlib.h>
#include <string.h>

#include "runtime/text/tokenizer_internal.h"
#include "runtime/utf8.h"

/* A match or the gap between matches, in piece-relative offsets. */
typedef struct split_span {
    size_t start, end;
    bool is_match;
} split_span_t;

/* Appends a span, growing the array. */
static moira_status_t push_span(encode_work_t *work, size_t *count, split_span_t span) {
    if (*count == work->span_capacity) {
        size_t next = work->span_capacity ? work->span_capacity * 2 : 256;
        split_span_t *grown = realloc(work->spans, next * sizeof(*grown));
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer spans");
        work->spans = grown;
        work->span_capacity = next;
    }
    work->spans[(*count)++] = span;
    return MOIRA_OK_STATUS;
}

/* Lists the matches of the step's pattern in bytes[0, len) and the gaps around them, in order.
 * The piece is searched as a string of its own: lookarounds see nothing outside it. */
static moira_status_t find_matches(const pretokenize_step_t *step, const char *bytes, size_t len,
                                   encode_work_t *work, size_t *count) {
    *count = 0;
    size_t previous = 0, pos = 0;
    while (pos <= len) {
        size_t match_start, match_end;
        if (step->regex) {
            const UChar *subject = (const UChar *)bytes;
            int found = onig_search(step->regex, subject, subject + len, subject + pos,
                                    subject + len, work->region, ONIG_OPTION_NONE);
            if (found == ONIG_MISMATCH) break;
            if (found < 0) {
                UChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
                onig_error_code_to_str(message, found);
                return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                         "pre-tokenizer regex failed on the text: %s", message);
            }
            match_start = (size_t)work->region->beg[0];
            match_end = (size_t)work->region->end[0];
        } else {
            if (step->literal_len == 0 || pos >= len) break;
            const char *hit = memmem(bytes + pos, len - pos, step->literal, step->literal_len);
            if (!hit) break;
            match_start = (size_t)(hit - bytes);
            match_end = match_start + step->literal_len;
        }
        if (match_start != previous)
            MOIRA_RETURN_IF_ERROR(
                push_span(work, count, (split_span_t){previous, match_start, false}));
        MOIRA_RETURN_IF_ERROR(push_span(work, count, (split_span_t){match_start, match_end, true}));
        previous = match_end;
        /* An empty match moves the search on by one character, or it would match forever. */
        pos = match_end;
        if (match_end == match_start) {
            if (match_end < len)
                moira_utf8_next(bytes, len, &pos);
            else
                pos++;
        }
    }
    if (previous != len)
        MOIRA_RETURN_IF_ERROR(push_span(work, count, (split_span_t){previous, len, false}));
    return MOIRA_OK_STATUS;
}

/* Rewrites the spans in place per the split behaviour (Hugging Face's SplitDelimiterBehavior),
 * leaving only the pieces to keep; returns how many. */
static size_t apply_behavior(split_span_t *spans, size_t count, split_behavior_t behavior) {
    size_t kept = 0;
    bool previous_match = false;
    switch (behavior) {
    case SPLIT_REMOVED:
        for (size_t i = 0; i < count; i++)
            if (!spans[i].is_match) spans[kept++] = spans[i];
        return kept;
    case SPLIT_ISOLATED:
        return count;
    case SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < count; i++) {
            if (spans[i].is_match && !previous_match && kept > 0)
                spans[kept - 1].end = spans[i].end;
            else
                spans[kept++] = spans[i];
            previous_match = spans[i].is_match;
        }
        return kept;
    case SPLIT_MERGED_WITH_NEXT: {
        /* Walked from the end: a match joins the piece after it. */
        size_t write = count;
        for (size_t i = count; i-- > 0;) {
            split_span_t span = spans[i];
            if (span.is_match && !previous_match && write < count)
                spans[write].start = span.start;
            else
                spans[--write] = span;
            previous_match = span.is_match;
        }
        memmove(spans, spans + write, (count - write) * sizeof(*spans));
        return count - write;
    }
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < count; i++) {
            if (i > 0 && spans[i].is_match == previous_match && kept > 0)
                spans[kept - 1].end = spans[i].end;
            else
                spans[kept++] = spans[i];
            previous_match = spans[i].is_match;
        }
        return kept;
    }
    return count;
}

/* Splits one piece by the step's pattern, emitting the kept non-empty parts. */
static moira_status_t split_piece(const pretokenize_step_t *step, split_behavior_t behavior,
                                  bool invert, const char *text, const text_piece_t *piece,
                                  encode_work_t *work) {
    const char *bytes = moira_piece_bytes(text, work, piece);
    size_t count;
    MOIRA_RETURN_IF_ERROR(find_matches(step, bytes, piece->len, work, &count));
    if (invert)
        for (size_t i = 0; i < count; i++)
            work->spans[i].is_match = !work->spans[i].is_match;
    count = apply_behavior(work->spans, count, behavior);
    for (size_t i = 0; i < count; i++) {
        if (work->spans[i].end <= work->spans[i].start) continue;
        MOIRA_RETURN_IF_ERROR(moira_work_emit(
            work, (text_piece_t){piece->in_scratch, piece->start + work->spans[i].start,
                                 work->spans[i].end - work->spans[i].start, -1}));
    }
    return MOIRA_OK_STATUS;
}

/* ByteLevel's optional leading space: the piece is copied into the scratch bytes behind it. */
static moira_status_t prefix_space(const char *text, encode_work_t *work, text_piece_t *piece) {
    const char *bytes = moira_piece_bytes(text, work, piece);
    if (piece->len > 0 && bytes[0] == ' ') return MOIRA_OK_STATUS;
    size_t need = work->scratch_len + piece->len + 1;
    if (need > work->scratch_capacity) {
        size_t next = work->scratch_capacity ? work->scratch_capacity * 2 : 4096;
        while (next < need)
            next *= 2;
        char *grown = realloc(work->scratch, next);
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "tokenizer scratch");
        work->scratch = grown;
        work->scratch_capacity = next;
        bytes = moira_piece_bytes(text, work, piece); /* the scratch may have moved */
    }
    work->scratch[work->scratch_len] = ' ';
    memcpy(work->scratch + work->scratch_len + 1, bytes, piece->len);
    *piece = (text_piece_t){1, work->scratch_len, piece->len + 1, -1};
    work->scratch_len += piece->len;
    return MOIRA_OK_STATUS;
}

/* Runs one step over every piece still to be tokenized (added tokens pass through). */
static moira_status_t run_step(const pretokenize_step_t *step, const char *text,
                               encode_work_t *work) {
    work->next_count = 0;
    for (size_t i = 0; i < work->count; i++) {
        text_piece_t piece = work->pieces[i];
        if (piece.added_id >= 0) {
            MOIRA_RETURN_IF_ERROR(moira_work_emit(work, piece));
            continue;
        }
        if (step->kind == STEP_BYTE_LEVEL) {
            if (step->add_prefix_space) MOIRA_RETURN_IF_ERROR(prefix_space(text, work, &piece));
            if (!step->regex) {
                MOIRA_RETURN_IF_ERROR(moira_work_emit(work, piece));
                continue;
            }
            MOIRA_RETURN_IF_ERROR(split_piece(step, SPLIT_ISOLATED, false, text, &piece, work));
            continue;
        }
        MOIRA_RETURN_IF_ERROR(split_piece(step, step->behavior, step->invert, text, &piece, work));
    }
    moira_work_swap(work);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_pretokenize(const moira_tokenizer_t *tokenizer, const char *text,
                                 encode_work_t *work) {
    for (size_t s = 0; s < tokenizer->step_count; s++)
        MOIRA_RETURN_IF_ERROR(run_step(&tokenizer->steps[s], text, work));
    return MOIRA_OK_STATUS;
}

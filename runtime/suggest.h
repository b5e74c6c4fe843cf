/* "Did you mean": the nearest of a set of known words to a misspelt one, so that an unknown key
 * in a topology, plan, profile or model config names the key the user meant
 * (`topology.yaml:3:5: unknown key "bandwidht_gbs" (did you mean "bandwidth_gbs"?)`). */
#ifndef MOIRA_RUNTIME_SUGGEST_H
#define MOIRA_RUNTIME_SUGGEST_H

#include <stddef.h>

/* The candidate closest to `word` by edit distance (insertions, deletions, substitutions and
 * swaps of neighbours, ignoring case), or NULL when none is close enough to be a likely typo: at
 * most 1 edit for words of up to 4 letters, 2 up to 8, 3 beyond. `candidates` is
 * NULL-terminated; the result is one of its pointers (borrowed). Ties go to the earlier one. */
const char *moira_suggest(const char *word, const char *const *candidates);

/* Writes ` (did you mean "X"?)` into `buf` when moira_suggest finds X, else an empty string;
 * returns `buf`. For appending to an error message. */
const char *moira_suggest_clause(const char *word, const char *const *candidates, char *buf,
                                 size_t size);

#endif

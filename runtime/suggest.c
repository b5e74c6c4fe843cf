#include "runtime/suggest.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* Keys are short; longer words are not typos of them and are not compared. */
#define MAX_WORD 64

/* Optimal string alignment distance (Levenshtein plus adjacent swaps, which are the commonest
 * typo: "bandwidht"), case-insensitive. Words longer than MAX_WORD count as far from anything. */
static size_t edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    if (n > MAX_WORD || m > MAX_WORD) return (size_t)-1;
    size_t d[MAX_WORD + 1][MAX_WORD + 1];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            size_t best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == cb && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[n][m];
}

/* How many edits still look like a typo of `candidate` rather than another word. */
static size_t typo_budget(const char *candidate) {
    size_t len = strlen(candidate);
    return len <= 4 ? 1 : len <= 8 ? 2 : 3;
}

const char *moira_suggest(const char *word, const char *const *candidates) {
    if (!word || !*word || !candidates) return NULL;
    const char *best = NULL;
    size_t best_distance = (size_t)-1;
    for (const char *const *c = candidates; *c; c++) {
        size_t distance = edit_distance(word, *c);
        if (distance <= typo_budget(*c) && distance < strlen(word) && distance < best_distance) {
            best = *c;
            best_distance = distance;
        }
    }
    return best;
}

const char *moira_suggest_clause(const char *word, const char *const *candidates, char *buf,
                                 size_t size) {
    const char *match = moira_suggest(word, candidates);
    if (size == 0) return buf;
    if (match)
        snprintf(buf, size, " (did you mean \"%s\"?)", match);
    else
        buf[0] = '\0';
    return buf;
}

/* The planner's local search (planner_internal.h): each step takes the target with the largest
 * cost key and moves, swaps or sheds tokens of one of its replicas to lower the larger key of the
 * pair it changes. Keys only rise with tokens and active replicas, so for a pair of targets the
 * pair's key after handing over x tokens falls while the busiest target's key decides it and rises
 * once the other's does: the best replica to hand over is the one whose load is next to where the
 * two keys cross. The search finds the replicas around that crossing in each target's load order
 * (replica_order.h), by descending it or by bisecting for the crossing, instead of trying every
 * replica against every other: a move or shift step costs O(targets x log replicas), a swap step
 * O(replicas of the busiest target x targets x log replicas) (it used to be x all replicas).
 * Among changes of equal keys it takes the one a scan in rank order would, so plans are the same
 * as that scan's. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "placement/planner_internal.h"

/* Bisection steps for a crossing: they narrow the range of loads to 2^-64 of itself. */
#define CROSSING_STEPS 64

/* Replicas of the busiest target tried for swaps, heaviest first, when reads are partial. */
#define MAX_SWAPPERS 256

/* Kinds of change, in the order they are preferred when their keys tie. */
enum { MOVE, SHIFT, SWAP };

typedef planner_change_t change_t;

/* Where a change stands among changes of equal keys: by kind, then the rank of the replica that
 * leaves the busiest target, then `second` (the rank of its swap partner, the partner of a
 * shift, or the position of a move's destination in the domain). The same choice a scan of
 * every replica in rank order keeping the first strictly better change makes. */
static uint64_t tie_order(int kind, int rank, int second) {
    return (uint64_t)kind << 62 | (uint64_t)rank << 31 | (uint64_t)second;
}

/* Keeps change c when it lowers its pair's key and beats the best one so far. Candidates are
 * weighed in tie order, the first of equal keys staying: as a scan of every replica in rank
 * order would (ties within key_compare's tolerance are not transitive, so the order matters). */
static void consider(change_t *best, const change_t *c) {
    if (key_compare(c->key, c->before) >= 0) return;
    if (best->r >= 0 && key_compare(c->key, best->key) >= 0) return;
    *best = *c;
}

/* A candidate change. */
static change_t change_of(int r, int other, int t, double shift, cost_key_t key, cost_key_t before,
                          uint64_t order) {
    change_t c = {r, other, t, shift, key, before, order};
    return c;
}

/* Ascending tie order, for qsort. */
static int by_tie_order(const void *pa, const void *pb) {
    const change_t *a = pa, *b = pb;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Ascending rank, for qsort_r. */
static int by_rank(const void *pa, const void *pb, void *context) {
    const int *rank = context;
    return rank[*(const int *)pa] - rank[*(const int *)pb];
}

/* Weighs candidates out[0 .. n - 1] in tie order. */
static void consider_all(change_t *best, change_t *out, int n) {
    qsort(out, (size_t)n, sizeof(change_t), by_tie_order);
    for (int i = 0; i < n; i++)
        consider(best, &out[i]);
}

/* The replica of lowest rank among target `at`'s replicas with r's load whose expert target
 * `to` does not hold: r itself when none ranks lower. */
static int lowest_rank_of_load(const layer_state_t *s, int at, int r, int to) {
    int below, g;
    moira_replica_order_split(&s->order, at, s->load[r], false, &below, &g);
    while (g != r && *holds_at(s, s->expert[g], to))
        g = moira_replica_order_next(&s->order, at, g);
    return g;
}

/* The larger of the two targets' keys after replica r of target w swaps places with replica q of
 * target t (q = -1: r moves to t alone). */
static cost_key_t keys_after_exchange(const layer_state_t *s, int w, int t, int r, int q) {
    double lr = s->load[r], lq = q >= 0 ? s->load[q] : 0;
    double ar = s->reads[r], aq = q >= 0 ? s->reads[q] : 0;
    return key_max(key_of(s, w, s->tokens[w] - lr + lq, s->active[w] - ar + aq),
                   key_of(s, t, s->tokens[t] + lr - lq, s->active[t] + ar - aq));
}

/* Whether target t's key reaches target w's once x tokens go from w to t, their expected reads
 * changing by dw and dt. */
static bool reaches(const layer_state_t *s, int w, int t, double x, double dw, double dt) {
    return key_compare(key_of(s, t, s->tokens[t] + x, s->active[t] + dt),
                       key_of(s, w, s->tokens[w] - x, s->active[w] + dw)) >= 0;
}

/* The least amount x in (0, hi] of tokens going from w to t at which t's key reaches w's; below
 * it the pair's key is w's and falls with x, from it on it is t's and rises with x. INFINITY
 * when t's key stays below w's all the way to hi. Bisection, as one key falls while the other
 * rises. */
static double crossing(const layer_state_t *s, int w, int t, double dw, double dt, double hi) {
    if (!(hi > 0) || !reaches(s, w, t, hi, dw, dt)) return INFINITY;
    double lo = 0;
    for (int i = 0; i < CROSSING_STEPS; i++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        if (reaches(s, w, t, mid, dw, dt))
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* Target w handing a whole replica to target t: what the search down w's order looks at. */
typedef struct handover {
    const layer_state_t *s;
    int w, t;
} handover_t;

/* Whether t's key reaches w's once replica r goes from w to t. */
static bool handover_reaches(int r, const void *context) {
    const handover_t *h = context;
    double reads = h->s->reads[r];
    return reaches(h->s, h->w, h->t, h->s->load[r], -reads, reads);
}

/* Candidates for handing a replica of w to t whole, written to out (room for 2); returns how
 * many. A move (idle = -1, second = t's place in the domain) or a swap with t's replica `idle`,
 * which has no load. They are the heaviest replica below the crossing and the lightest from it
 * on, skipping replicas without load and those of experts t already holds. */
static int leavers(const layer_state_t *s, int w, int t, cost_key_t before, int idle, int second,
                   change_t *out) {
    handover_t h = {s, w, t};
    int high = moira_replica_order_first_where(&s->order, w, handover_reaches, &h);
    int low = high >= 0 ? moira_replica_order_prev(&s->order, w, high)
                        : moira_replica_order_last(&s->order, w);
    if (high >= 0 && s->load[high] <= 0) { /* crossed from the start: the lightest with load */
        moira_replica_order_split(&s->order, w, 0, true, &low, &high);
        low = -1;
    }
    while (high >= 0 && *holds_at(s, s->expert[high], t))
        high = moira_replica_order_next(&s->order, w, high);
    while (low >= 0 && s->load[low] > 0 && *holds_at(s, s->expert[low], t))
        low = moira_replica_order_prev(&s->order, w, low);
    if (low >= 0 && s->load[low] > 0) low = lowest_rank_of_load(s, w, low, t);
    int kind = idle >= 0 ? SWAP : MOVE, n = 0;
    const int found[2] = {high, low};
    for (int i = 0; i < 2; i++) {
        int r = found[i];
        if (r < 0 || s->load[r] <= 0) continue;
        out[n++] = change_of(r, idle, t, 0, keys_after_exchange(s, w, t, r, idle), before,
                             tie_order(kind, s->rank[r], second));
    }
    return n;
}

/* The larger of the two targets' keys after moving `shift` tokens from replica r to replica q. */
static cost_key_t keys_after_shift(const layer_state_t *s, int r, int q, double shift) {
    int a = s->target[r], b = s->target[q];
    double lr = s->load[r], lq = s->load[q];
    double active_a = s->active[a] - s->reads[r] + reads_of(s, lr - shift);
    double active_b = s->active[b] - s->reads[q] + reads_of(s, lq + shift);
    return key_max(key_of(s, a, s->tokens[a] - shift, active_a),
                   key_of(s, b, s->tokens[b] + shift, active_b));
}

/* Whether w's time still exceeds b's once x tokens go from w to b, b's count of replicas with
 * load raised by `wake` (w's unchanged: the replica that gives keeps some). */
static bool still_exceeds(const layer_state_t *s, int w, int b, int wake, double x) {
    const moira_target_t *targets = s->topology->targets;
    return moira_cost_target_us(s->cost, &targets[w], s->tokens[w] - x, s->active[w]) >
           moira_cost_target_us(s->cost, &targets[b], s->tokens[b] + x, s->active[b] + wake);
}

/* The bits of a non-negative double, which order as the doubles do. */
static uint64_t bits_of(double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof(u));
    return u;
}

static double double_of(uint64_t u) {
    double x;
    memcpy(&x, &u, sizeof(x));
    return x;
}

/* The least double x >= 0 for which still_exceeds is false, for amounts up to `most`; INFINITY
 * when it is true up to `most`. The times are computed with monotone roundings, so
 * still_exceeds(x) holds exactly for x below this threshold: a bisection for the amount that
 * evens w and b then takes the same path with `mid < threshold` as with the times themselves,
 * for every replica pair of w and b, while the times are computed once per pair of targets (by
 * bisecting the doubles' bits, at most 64 steps) instead of 40 times per pair of replicas. */
static double even_threshold(const layer_state_t *s, int w, int b, int wake, double most) {
    if (!still_exceeds(s, w, b, wake, 0)) return 0;
    if (still_exceeds(s, w, b, wake, most)) return INFINITY;
    uint64_t lo = bits_of(0), hi = bits_of(most);
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (still_exceeds(s, w, b, wake, double_of(mid)))
            lo = mid;
        else
            hi = mid;
    }
    return double_of(hi);
}

/* Marks a pair of targets whose threshold one replica pair has needed so far: the threshold
 * (about 128 time evaluations) is worked out when a second pair needs it, since a bisection of
 * its own costs one pair 80. */
#define THRESHOLD_WANTED_ONCE (-1.0)

/* The amount of r's tokens that evens r's and q's targets' times: a 40-step bisection of [0, lr],
 * which `threshold` (even_threshold for the two targets, NAN before any pair of them asked,
 * THRESHOLD_WANTED_ONCE after one did) decides without the times when it is known. */
static double even_shift(const layer_state_t *s, int r, int q, double *threshold, double most) {
    int w = s->target[r], b = s->target[q], wake = s->load[q] > 0 ? 0 : 1;
    if (*threshold == THRESHOLD_WANTED_ONCE) *threshold = even_threshold(s, w, b, wake, most);
    bool known = !isnan(*threshold);
    if (!known) *threshold = THRESHOLD_WANTED_ONCE;
    double lo = 0, hi = s->load[r];
    for (int i = 0; i < 40; i++) {
        double mid = 0.5 * (lo + hi);
        if (known ? mid < *threshold : still_exceeds(s, w, b, wake, mid))
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* The best amount of r's tokens to hand to q: all of them (r then reads no weights), or the
 * amount that evens the two targets' times (even_shift). */
static cost_key_t best_load_shift(const layer_state_t *s, int r, int q, double even,
                                  double *out_shift) {
    double lr = s->load[r];
    double best = lr;
    cost_key_t best_key = keys_after_shift(s, r, q, lr);
    if (even > 0 && even < lr) {
        cost_key_t k = keys_after_shift(s, r, q, even);
        if (key_compare(k, best_key) < 0) {
            best = even;
            best_key = k;
        }
    }
    *out_shift = best;
    return best_key;
}

/* Moves: each other target with a free slot takes the replica of w that lowers the pair's key
 * most. */
static void search_moves(const layer_state_t *s, int w, cost_key_t worst_key, const int *domain,
                         int n_domain, change_t *best) {
    int heaviest = moira_replica_order_last(&s->order, w);
    if (heaviest < 0 || s->load[heaviest] <= 0) return;
    int n = 0;
    for (int j = 0; j < n_domain; j++) {
        int t = domain[j];
        if (t == w || s->count[t] >= s->capacity[t]) continue;
        n += leavers(s, w, t, key_max(worst_key, s->now[t]), -1, j, s->candidates + n);
    }
    consider_all(best, s->candidates, n);
}

/* Shifts: tokens from a replica on w to another replica of the same expert, since the runtime
 * may route an expert's tokens to its replicas in any proportion. Only replicas of experts with
 * copies can shift, and w's shared list holds exactly those. */
static void search_shifts(const layer_state_t *s, int w, cost_key_t worst_key, const int *domain,
                          int n_domain, change_t *best) {
    int n = 0;
    for (int j = 0; j < n_domain; j++)
        s->threshold[2 * domain[j]] = s->threshold[2 * domain[j] + 1] = NAN;
    double most = s->tokens[w];
    int heaviest = moira_replica_order_last(&s->order, w);
    if (heaviest >= 0 && s->load[heaviest] > most) most = s->load[heaviest];
    for (int r = s->shared_head[w]; r >= 0; r = s->shared_next[r])
        if (s->load[r] > 0) s->on_worst[n++] = r;
    qsort_r(s->on_worst, (size_t)n, sizeof(int), by_rank, s->rank);
    for (int i = 0; i < n; i++) {
        int r = s->on_worst[i];
        int32_t e = s->expert[r];
        for (int q = s->first_copy[e]; q < s->first_copy[e + 1]; q++) {
            int t = s->target[q];
            if (t == w) continue;
            double *threshold = &s->threshold[2 * t + (s->load[q] > 0 ? 0 : 1)];
            double shift = 0;
            cost_key_t after =
                best_load_shift(s, r, q, even_shift(s, r, q, threshold, most), &shift);
            change_t c = change_of(r, q, -1, shift, after, key_max(worst_key, s->now[t]),
                                   tie_order(SHIFT, s->rank[r], q));
            if (shift > 0) consider(best, &c);
        }
    }
}

/* Replica r of target w swapping with a replica of target t: what the search down t's order
 * looks at. */
typedef struct exchange {
    const layer_state_t *s;
    int w, t;
    double lr, reads; /* r's load and read probability */
} exchange_t;

/* Whether t's key stays below w's once r swaps with q (true from some load of q on). */
static bool exchange_falls_short(int q, const void *context) {
    const exchange_t *x = context;
    double reads = x->reads - x->s->reads[q];
    return !reaches(x->s, x->w, x->t, x->lr - x->s->load[q], -reads, reads);
}

/* The replicas of t nearest the crossing for swapping with r of w: the heaviest at or past it
 * (lr - lq at least the crossing) and the lightest short of it, both with load in (0, lr) and of
 * experts w does not hold; -1 where none. `cross` is the crossing found by bisection, or NAN to
 * find the split by descending t's order, which costs fewer key evaluations when w holds few
 * replicas. */
static void swap_partners(const layer_state_t *s, int w, int t, int r, double cross, int *out_below,
                          int *out_above) {
    double lr = s->load[r];
    int low, high;
    if (isnan(cross)) {
        exchange_t x = {s, w, t, lr, s->reads[r]};
        high = moira_replica_order_first_where(&s->order, t, exchange_falls_short, &x);
        low = high >= 0 ? moira_replica_order_prev(&s->order, t, high)
                        : moira_replica_order_last(&s->order, t);
        if (high >= 0 && s->load[high] <= 0)
            moira_replica_order_split(&s->order, t, 0, true, &low, &high);
    } else {
        moira_replica_order_split(&s->order, t, lr - cross > 0 ? lr - cross : 0, true, &low, &high);
    }
    while (low >= 0 && s->load[low] > 0 && *holds_at(s, s->expert[low], w))
        low = moira_replica_order_prev(&s->order, t, low);
    while (high >= 0 && s->load[high] < lr && *holds_at(s, s->expert[high], w))
        high = moira_replica_order_next(&s->order, t, high);
    if (low >= 0 && s->load[low] > 0) low = lowest_rank_of_load(s, t, low, w);
    *out_below = low >= 0 && s->load[low] > 0 && s->load[low] < lr ? low : -1;
    *out_above = high >= 0 && s->load[high] < lr ? high : -1;
}

/* Whether finding r's swap partners on t by descending t's order (about 2 log2 n key checks per
 * replica of w) is cheaper than one bisection for the crossing. */
static bool descend_for_partners(const layer_state_t *s, int n_worst, int t) {
    /* The crossing is one for every replica only while reads do not depend on loads (every
     * replica with load read for certain); otherwise each replica descends for its own. */
    if (s->partial_reads) return true;
    return 2.0 * n_worst * log2(s->count[t] + 2.0) < CROSSING_STEPS;
}

/* Swaps of a replica r on w with a lighter replica q on another target t. With q without load
 * the swap is a move that needs no free slot (found per target, first). With load, the pair's
 * key depends only on the difference lr - lq, which should be nearest the crossing: for each r,
 * the two replicas of t around lr - crossing are the only ones worth trying. Replicas of w are
 * taken in rank order and each one's candidates weighed in tie order. */
static void search_swaps(const layer_state_t *s, int w, cost_key_t worst_key, const int *domain,
                         int n_domain, change_t *best) {
    int heaviest = moira_replica_order_last(&s->order, w);
    if (heaviest < 0 || s->load[heaviest] <= 0) return;
    change_t *idle_swaps = s->candidates, *each = s->candidates + 2 * n_domain;
    double *cross = s->cross;
    int n_idle = 0;
    for (int j = 0; j < n_domain; j++) {
        int t = domain[j];
        if (t == w) continue;
        cost_key_t before = key_max(worst_key, s->now[t]);
        int idle = moira_replica_order_first(&s->order, t);
        while (idle >= 0 && s->load[idle] <= 0 && *holds_at(s, s->expert[idle], w))
            idle = moira_replica_order_next(&s->order, t, idle);
        if (idle >= 0 && s->load[idle] <= 0)
            n_idle += leavers(s, w, t, before, idle, s->rank[idle], idle_swaps + n_idle);
    }
    /* With partial reads every replica of w descends on its own: only the heaviest are tried
     * (taken from the top of w's order, not listed whole), which keeps a step near O(targets x
     * log replicas) when w holds tens of thousands. */
    int n_worst = 0;
    if (s->partial_reads)
        for (int r = heaviest; r >= 0 && n_worst < MAX_SWAPPERS;
             r = moira_replica_order_prev(&s->order, w, r))
            s->on_worst[n_worst++] = r;
    else
        n_worst = moira_replica_order_list(&s->order, w, s->on_worst);
    for (int j = 0; j < n_domain; j++) {
        int t = domain[j];
        if (t == w) continue;
        cross[j] =
            descend_for_partners(s, n_worst, t) ? NAN : crossing(s, w, t, 0, 0, s->load[heaviest]);
    }
    qsort_r(s->on_worst, (size_t)n_worst, sizeof(int), by_rank, s->rank);
    for (int i = 0; i < n_worst; i++) {
        int r = s->on_worst[i], n = 0;
        double lr = s->load[r];
        if (lr <= 0) continue;
        for (int k = 0; k < n_idle; k++)
            if (idle_swaps[k].r == r) each[n++] = idle_swaps[k];
        for (int j = 0; j < n_domain; j++) {
            int t = domain[j];
            if (t == w || *holds_at(s, s->expert[r], t)) continue;
            cost_key_t before = key_max(worst_key, s->now[t]);
            int partners[2];
            swap_partners(s, w, t, r, cross[j], &partners[0], &partners[1]);
            for (int k = 0; k < 2; k++) {
                int q = partners[k];
                if (q < 0) continue;
                each[n++] = change_of(r, q, t, 0, keys_after_exchange(s, w, t, r, q), before,
                                      tie_order(SWAP, s->rank[r], s->rank[q]));
            }
        }
        consider_all(best, each, n);
    }
}

/* Carries out the chosen change. */
static void apply(layer_state_t *s, int w, const change_t *c) {
    if (c->t < 0) {
        int q = c->other, to = s->target[q];
        moira_planner_unplace(s, c->r);
        moira_planner_unplace(s, q);
        s->load[c->r] -= c->shift;
        s->load[q] += c->shift;
        if (s->load[c->r] < 1e-9 * c->shift) s->load[c->r] = 0;
        s->reads[c->r] = reads_of(s, s->load[c->r]);
        s->reads[q] = reads_of(s, s->load[q]);
        moira_planner_place(s, c->r, w);
        moira_planner_place(s, q, to);
        return;
    }
    moira_planner_unplace(s, c->r);
    if (c->other >= 0) {
        moira_planner_unplace(s, c->other);
        moira_planner_place(s, c->other, w);
    }
    moira_planner_place(s, c->r, c->t);
}

bool moira_planner_improve_once(layer_state_t *s, const int *domain, int n_domain) {
    int worst = -1;
    cost_key_t worst_key = {0, 0};
    for (int j = 0; j < n_domain; j++) {
        cost_key_t k = key_now(s, domain[j]);
        s->now[domain[j]] = k;
        if (worst < 0 || key_compare(k, worst_key) > 0) {
            worst = domain[j];
            worst_key = k;
        }
    }
    if (worst < 0) return false;
    change_t best = {-1, -1, -1, 0, {0, 0}, {0, 0}, 0};
    search_moves(s, worst, worst_key, domain, n_domain, &best);
    search_shifts(s, worst, worst_key, domain, n_domain, &best);
    /* Swaps cost the most to search; only when no move or shift helps. */
    if (best.r < 0) search_swaps(s, worst, worst_key, domain, n_domain, &best);
    if (best.r < 0) return false;
    apply(s, worst, &best);
    return true;
}

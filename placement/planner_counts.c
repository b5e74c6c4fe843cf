/* Replica counts per expert (planner_internal.h): each extra replica goes to the expert with the
 * most tokens per replica, as a rescan of every expert per replica would choose, but taken from a
 * heap of those ratios so that the budget costs O(log experts) per replica. */
#include "placement/planner_internal.h"

/* Whether expert a comes before expert b: more tokens per replica, then the lower index, the
 * order in which a scan for the strictly largest ratio finds them. */
static bool ahead(const double *load, const int *count, int a, int b) {
    double ra = load[a] / count[a], rb = load[b] / count[b];
    if (ra != rb) return ra > rb;
    return a < b;
}

/* Restores the heap below position i (a max-heap by ahead()). */
static void sift_down(const double *load, const int *count, int *heap, int n, int i) {
    for (;;) {
        int top = i, l = 2 * i + 1, r = 2 * i + 2;
        if (l < n && ahead(load, count, heap[l], heap[top])) top = l;
        if (r < n && ahead(load, count, heap[r], heap[top])) top = r;
        if (top == i) return;
        int tmp = heap[i];
        heap[i] = heap[top];
        heap[top] = tmp;
        i = top;
    }
}

/* An expert leaves the heap for good when its domain has no spare slot or it already has a copy
 * per target of its domain: neither ever frees up while counts are chosen. */
void moira_planner_choose_counts(const double *load, int64_t experts, const int *domain_of_expert,
                                 int64_t *spare, const int64_t *max_copies, int64_t budget,
                                 int *count, int *heap) {
    int n = 0;
    for (int64_t e = 0; e < experts; e++) {
        count[e] = 1;
        if (load[e] > 0) heap[n++] = (int)e;
    }
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(load, count, heap, n, i);
    for (int64_t r = 0; r < budget && n > 0;) {
        int e = heap[0], d = domain_of_expert[e];
        if (spare[d] <= 0 || count[e] >= max_copies[d]) {
            heap[0] = heap[--n];
            sift_down(load, count, heap, n, 0);
            continue;
        }
        count[e]++;
        spare[d]--;
        sift_down(load, count, heap, n, 0);
        r++;
    }
}

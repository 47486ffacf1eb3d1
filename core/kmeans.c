/*
 * kmeans.c — exact, globally optimal weighted 1-D k-means (SPEC §4.2).
 *
 * Sorted distinct values; a cluster is a run of consecutive values. The DP
 * D[c][i] = min_{j} D[c-1][j-1] + cost(j..i) is solved layer by layer with the
 * divide-and-conquer optimisation: for a fixed layer the leftmost optimal j
 * is non-decreasing in i (the cost is Monge), so computing the middle i first
 * bounds the search of each half: O(n log n) cost evaluations per layer.
 * The last layer needs only i = n-1 and is scanned in full, so the tie rule
 * "leftmost start of the last cluster" holds exactly there.
 * Invariants: every cluster is non-empty (j >= c in layer c); all sums are
 * float64. Memory: two DP rows, three prefix arrays and a k x n table of
 * back-pointers (uint32), allocated per call and freed before returning.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "palette.h"

typedef struct kctx {
    const double *p0, *p1, *p2; /* prefix sums, length n+1 */
} kctx;

/* Sum of squared deviations of values j..i (inclusive) from their mean. */
static inline double run_cost(const kctx *c, size_t j, size_t i)
{
    double s0 = c->p0[i + 1] - c->p0[j];
    double s1 = c->p1[i + 1] - c->p1[j];
    double s2 = c->p2[i + 1] - c->p2[j];
    return s2 - s1 * s1 / s0;
}

/* Fill cur[i] for i in [lo, hi] of layer `layer` (0-based: layer+1 clusters),
 * knowing the optimal j of every i in the range lies in [optlo, opthi]. */
static void dc(const kctx *c, const double *prev, double *cur, uint32_t *opt, size_t layer,
               size_t lo, size_t hi, size_t optlo, size_t opthi)
{
    while (lo <= hi) {
        size_t mid = lo + (hi - lo) / 2;
        size_t jlo = optlo > layer ? optlo : layer, jhi = mid < opthi ? mid : opthi;
        double best = INFINITY;
        size_t bj = jlo;
        for (size_t j = jlo; j <= jhi; j++) {
            double v = prev[j - 1] + run_cost(c, j, mid);
            if (v < best) {
                best = v;
                bj = j;
            }
        }
        cur[mid] = best;
        opt[mid] = (uint32_t)bj;
        /* Recurse on the smaller-index half, loop on the other (bounded stack). */
        if (mid > lo) dc(c, prev, cur, opt, layer, lo, mid - 1, optlo, bj);
        lo = mid + 1;
        optlo = bj;
    }
}

kiln_status kiln_kmeans1d(const double *x, const double *w, size_t n, int k, double *centroids,
                          size_t *cluster_start, double *cost)
{
    if (!x || !w) return kiln_fail(KILN_ERR_INVALID, "kmeans1d: x or w is NULL");
    if (n == 0 || k < 1 || (size_t)k > n)
        return kiln_fail(KILN_ERR_INVALID, "kmeans1d: k = %d for n = %zu values (need 1 <= k <= n)", k, n);
    if (n >= UINT32_MAX) return kiln_fail(KILN_ERR_LIMIT, "kmeans1d: n = %zu values", n);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(w[i]) || !(w[i] > 0))
            return kiln_fail(KILN_ERR_INVALID, "kmeans1d: value %zu (x=%g, w=%g) must be finite with w > 0",
                             i, x[i], w[i]);
        if (i && !(x[i] > x[i - 1]))
            return kiln_fail(KILN_ERR_INVALID, "kmeans1d: x[%zu] = %.17g is not above x[%zu] = %.17g", i,
                             x[i], i - 1, x[i - 1]);
    }
    kiln_status st = KILN_OK;
    double *p = malloc(3 * (n + 1) * sizeof *p);
    double *rows = malloc(2 * n * sizeof *rows);
    uint32_t *opt = malloc((size_t)k * n * sizeof *opt);
    if (!p || !rows || !opt) {
        st = kiln_fail(KILN_ERR_NOMEM, "kmeans1d: out of memory for n = %zu, k = %d", n, k);
        goto out;
    }
    double *p0 = p, *p1 = p + (n + 1), *p2 = p + 2 * (n + 1);
    p0[0] = p1[0] = p2[0] = 0.0;
    for (size_t i = 0; i < n; i++) {
        double wx = w[i] * x[i];
        p0[i + 1] = p0[i] + w[i];
        p1[i + 1] = p1[i] + wx;
        p2[i + 1] = p2[i] + wx * x[i];
    }
    kctx c = {p0, p1, p2};
    double *prev = rows, *cur = rows + n;
    for (size_t i = 0; i < n; i++) {
        prev[i] = run_cost(&c, 0, i);
        opt[i] = 0;
    }
    for (size_t layer = 1; layer < (size_t)k; layer++) {
        uint32_t *o = opt + layer * n;
        if (layer + 1 == (size_t)k) {
            /* Last layer: only i = n-1, full scan, leftmost minimum. */
            double best = INFINITY;
            size_t bj = layer;
            for (size_t j = layer; j <= n - 1; j++) {
                double v = prev[j - 1] + run_cost(&c, j, n - 1);
                if (v < best) {
                    best = v;
                    bj = j;
                }
            }
            cur[n - 1] = best;
            o[n - 1] = (uint32_t)bj;
        } else {
            dc(&c, prev, cur, o, layer, layer, n - 1, layer, n - 1);
        }
        double *t = prev;
        prev = cur;
        cur = t;
    }
    if (cost) *cost = prev[n - 1];
    /* Back-track the starts, then the centroids as direct weighted means. */
    size_t end = n; /* exclusive end of the current cluster */
    for (int cl = k - 1; cl >= 0; cl--) {
        size_t start = cl == 0 ? 0 : opt[(size_t)cl * n + (end - 1)];
        if (cluster_start) cluster_start[cl] = start;
        if (centroids) {
            double sw = 0, swx = 0;
            for (size_t i = start; i < end; i++) {
                sw += w[i];
                swx += w[i] * x[i];
            }
            centroids[cl] = swx / sw;
        }
        end = start;
    }
out:
    free(p);
    free(rows);
    free(opt);
    return st;
}

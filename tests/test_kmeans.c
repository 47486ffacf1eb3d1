/* test_kmeans.c — kiln_kmeans1d (exact weighted 1-D k-means, D&C DP) against
 * an O(k n^2) DP and, for tiny n, exhaustive search over every partition. */
#include <stdint.h>

#include "palette.h"
#include "util/check.h"

/* Cost of run j..i computed directly (two passes), independent of the
 * prefix-sum formula under test. */
static double direct_cost(const double *x, const double *w, size_t j, size_t i)
{
    double sw = 0, swx = 0;
    for (size_t t = j; t <= i; t++) { sw += w[t]; swx += w[t] * x[t]; }
    double mu = swx / sw, e = 0;
    for (size_t t = j; t <= i; t++) e += w[t] * (x[t] - mu) * (x[t] - mu);
    return e;
}

/* Plain O(k n^2) DP with the same tie rule (leftmost j) and the same
 * prefix-sum cost as the library (so equal optima give equal bits). */
static double brute_dp(const double *x, const double *w, size_t n, int k, size_t *start)
{
    double *p0 = calloc(n + 1, sizeof *p0), *p1 = calloc(n + 1, sizeof *p1), *p2 = calloc(n + 1, sizeof *p2);
    for (size_t i = 0; i < n; i++) {
        double wx = w[i] * x[i];
        p0[i + 1] = p0[i] + w[i]; p1[i + 1] = p1[i] + wx; p2[i + 1] = p2[i] + wx * x[i];
    }
#define COST(j, i) ((p2[(i) + 1] - p2[j]) - (p1[(i) + 1] - p1[j]) * (p1[(i) + 1] - p1[j]) / (p0[(i) + 1] - p0[j]))
    double *D = malloc((size_t)k * n * sizeof *D);
    size_t *B = malloc((size_t)k * n * sizeof *B);
    for (size_t i = 0; i < n; i++) { D[i] = COST(0, i); B[i] = 0; }
    for (int c = 1; c < k; c++)
        for (size_t i = (size_t)c; i < n; i++) {
            double best = INFINITY; size_t bj = (size_t)c;
            for (size_t j = (size_t)c; j <= i; j++) {
                double v = D[(size_t)(c - 1) * n + j - 1] + COST(j, i);
                if (v < best) { best = v; bj = j; }
            }
            D[(size_t)c * n + i] = best; B[(size_t)c * n + i] = bj;
        }
#undef COST
    double cost = D[(size_t)(k - 1) * n + n - 1];
    size_t end = n;
    for (int c = k - 1; c >= 0; c--) {
        start[c] = c == 0 ? 0 : B[(size_t)c * n + end - 1];
        end = start[c];
    }
    free(p0); free(p1); free(p2); free(D); free(B);
    return cost;
}

/* Every way to cut n values into k runs; exact cost by direct sums. */
static double exhaustive(const double *x, const double *w, size_t n, int k, size_t *best_start)
{
    size_t s[16];
    double best = INFINITY;
    s[0] = 0;
    for (int c = 1; c < k; c++) s[c] = (size_t)c;
    for (;;) {
        double e = 0;
        for (int c = 0; c < k; c++) e += direct_cost(x, w, s[c], (c + 1 < k ? s[c + 1] : n) - 1);
        if (e < best - 1e-12 * (best < INFINITY ? best : 0)) {
            best = e;
            memcpy(best_start, s, (size_t)k * sizeof *s);
        }
        int c = k - 1;
        while (c >= 1 && s[c] == n - (size_t)(k - c)) c--;
        if (c < 1) break;
        s[c]++;
        for (int d = c + 1; d < k; d++) s[d] = s[d - 1] + 1;
    }
    return best;
}

/* Sorted unique integers in [0, range) with integer weights 1..4: plenty of
 * exact ties in the costs. */
static size_t random_input(unsigned *rs, size_t want, unsigned range, double *x, double *w, int int_w)
{
    uint8_t *used = calloc(range, 1);
    size_t n = 0;
    while (n < want) {
        unsigned v = kiln_test_rand(rs) % range;
        if (!used[v]) { used[v] = 1; n++; }
    }
    n = 0;
    for (unsigned v = 0; v < range; v++)
        if (used[v]) {
            x[n] = int_w ? (double)v : (double)v * 0.001 - 0.3;
            w[n] = int_w ? (double)(1 + kiln_test_rand(rs) % 4) : 0.5 + (kiln_test_rand(rs) % 1000) * 0.01;
            n++;
        }
    free(used);
    return n;
}

TEST(tie_rule_hand_made)
{
    double x[5] = {0, 1, 2, 3, 4}, w[5] = {1, 1, 1, 1, 1}, c[5], cost;
    size_t st[5];
    /* {0},{1,2} and {0,1},{2} both cost 0.5: the last cluster starts leftmost */
    CHECK_OK(kiln_kmeans1d(x, w, 3, 2, c, st, &cost));
    CHECK_EQ_INT(st[0], 0); CHECK_EQ_INT(st[1], 1);
    CHECK(cost == 0.5);
    CHECK(c[0] == 0.0 && c[1] == 1.5);
    /* 5 points, 3 clusters: three partitions cost 1 */
    CHECK_OK(kiln_kmeans1d(x, w, 5, 3, c, st, &cost));
    CHECK_EQ_INT(st[0], 0); CHECK_EQ_INT(st[1], 1); CHECK_EQ_INT(st[2], 3);
    CHECK(cost == 1.0);
    /* weights move the split */
    double w2[3] = {1, 1, 10};
    CHECK_OK(kiln_kmeans1d(x, w2, 3, 2, c, st, &cost));
    CHECK_EQ_INT(st[1], 2);
    /* k = n: every value its own centroid, cost 0 */
    CHECK_OK(kiln_kmeans1d(x, w, 5, 5, c, st, &cost));
    CHECK(cost == 0.0);
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(st[i], i);
    /* k = 1: the weighted mean */
    double w3[5] = {1, 2, 3, 4, 10};
    CHECK_OK(kiln_kmeans1d(x, w3, 5, 1, c, st, &cost));
    CHECK_NEAR(c[0], (0 * 1 + 1 * 2 + 2 * 3 + 3 * 4 + 4 * 10) / 20.0, 1e-15);
    /* single value */
    CHECK_OK(kiln_kmeans1d(x + 2, w, 1, 1, c, st, &cost));
    CHECK(c[0] == 2.0 && cost == 0.0);
}

TEST(invalid_inputs)
{
    double x[3] = {0, 1, 1}, w[3] = {1, 1, 1}, c[4];
    size_t st[4];
    CHECK_EQ_INT(kiln_kmeans1d(x, w, 2, 3, c, st, NULL), KILN_ERR_INVALID); /* k > n */
    CHECK_EQ_INT(kiln_kmeans1d(x, w, 2, 0, c, st, NULL), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_kmeans1d(x, w, 3, 2, c, st, NULL), KILN_ERR_INVALID); /* not increasing */
    CHECK(strstr(kiln_errmsg(), "x[2]") != NULL);
    double y[2] = {0, 1}, z[2] = {1, 0};
    CHECK_EQ_INT(kiln_kmeans1d(y, z, 2, 1, c, st, NULL), KILN_ERR_INVALID); /* w = 0 */
    double q[2] = {0, NAN};
    CHECK_EQ_INT(kiln_kmeans1d(q, w, 2, 1, c, st, NULL), KILN_ERR_INVALID);
}

TEST(vs_exhaustive_tiny)
{
    unsigned rs = 31337;
    double x[12], w[12], c[6];
    size_t st[6], ex[6];
    int bad = 0, cases = 0;
    for (int it = 0; it < 400; it++) {
        size_t n = 1 + kiln_test_rand(&rs) % 10;
        int k = 1 + (int)(kiln_test_rand(&rs) % (n < 5 ? n : 5));
        n = random_input(&rs, n, 14, x, w, it % 2);
        double cost, ecost = exhaustive(x, w, n, k, ex);
        CHECK_OK(kiln_kmeans1d(x, w, n, k, c, st, &cost));
        cases++;
        if (fabs(cost - ecost) > 1e-9 * (1 + ecost)) {
            if (bad++ < 3) fprintf(stderr, "\n    n=%zu k=%d cost %.17g vs exhaustive %.17g", n, k, cost, ecost);
        }
        /* the partition found really costs what it says */
        double e = 0;
        for (int cl = 0; cl < k; cl++) e += direct_cost(x, w, st[cl], (cl + 1 < k ? st[cl + 1] : n) - 1);
        if (fabs(e - cost) > 1e-9 * (1 + cost)) bad++;
        for (int cl = 1; cl < k; cl++) if (st[cl] <= st[cl - 1]) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(cases, 400);
}

TEST(vs_quadratic_dp_random)
{
    unsigned rs = 2024;
    size_t N = 1500;
    double *x = malloc(N * sizeof *x), *w = malloc(N * sizeof *w);
    double c[64];
    size_t st[64], bs[64];
    int same_part = 0, equal_cost = 0, cases = 0, bad = 0;
    int iters = kiln_test_full() ? 30 : 8;
    for (int it = 0; it < iters; it++) {
        size_t n = 20 + kiln_test_rand(&rs) % (N - 20);
        int k = 2 + (int)(kiln_test_rand(&rs) % 30);
        /* integer data (many exact ties) on even iterations */
        n = random_input(&rs, n, it % 2 ? 4000 : (unsigned)n + n / 3 + 1, x, w, it % 2 == 0);
        if ((size_t)k > n) k = (int)n;
        double cost, bcost = brute_dp(x, w, n, k, bs);
        CHECK_OK(kiln_kmeans1d(x, w, n, k, c, st, &cost));
        cases++;
        if (memcmp(st, bs, (size_t)k * sizeof *st) == 0) same_part++;
        if (cost == bcost) equal_cost++;
        if (fabs(cost - bcost) > 1e-12 * (1 + bcost)) {
            bad++;
            fprintf(stderr, "\n    n=%zu k=%d cost %.17g vs dp %.17g", n, k, cost, bcost);
        }
        for (int cl = 0; cl < k; cl++) {
            size_t end = cl + 1 < k ? st[cl + 1] : n;
            double sw = 0, swx = 0;
            for (size_t i = st[cl]; i < end; i++) { sw += w[i]; swx += w[i] * x[i]; }
            if (c[cl] != swx / sw) bad++;
        }
    }
    fprintf(stderr, "[%d cases: %d same partition, %d bit-equal cost] ", cases, same_part, equal_cost);
    CHECK_EQ_INT(bad, 0);
    /* the tie rule makes the D&C pick the DP's partition on integer data */
    CHECK(same_part >= cases - 1);
    free(x); free(w);
}

int main(void)
{
    RUN(tie_rule_hand_made);
    RUN(invalid_inputs);
    RUN(vs_exhaustive_tiny);
    RUN(vs_quadratic_dp_random);
    return check_summary();
}

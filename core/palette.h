/*
 * palette.h — weight palettization of SPEC §4: exact weighted 1-D k-means,
 * look-up tables (LUTs) of 2^n_bits entries per tensor or per group of output
 * channels, optional int8 quantization of each LUT, optional per-channel
 * scales.
 *
 * (Types below were fixed by the lead so the recipe and artifact modules can
 * use them; the palette module owns the functions.)
 */
#ifndef KILN_PALETTE_H
#define KILN_PALETTE_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"
#include "status.h"

typedef enum kiln_pgranularity {
    KILN_PG_PER_TENSOR = 0,
    KILN_PG_PER_GROUPED_CHANNEL, /* group_size output channels share a LUT */
} kiln_pgranularity;

typedef enum kiln_kmeans_weighting {
    KILN_KW_COUNTS = 0,     /* reference: unique values weighted by their counts    */
    KILN_KW_ACTIVATION,     /* kiln §7: diag(X X^T) per input column (needs data)    */
} kiln_kmeans_weighting;

typedef struct kiln_pspec {
    int n_bits;                  /* 1,2,3,4,6,8                                 */
    kiln_pgranularity granularity;
    int group_size;              /* per_grouped_channel                          */
    int lut_quantize;            /* quantize LUT entries                          */
    kiln_qspec lut_qspec;        /* int8 symmetric by default                     */
    int per_channel_scale;       /* divide each output channel by its max|w| first */
    kiln_kmeans_weighting weighting;
} kiln_pspec;

/* The EDSR recipe of SPEC §4: 4 bits, per tensor, int8 symmetric LUT, count
 * weighting, no per-channel scale. */
void kiln_pspec_init(kiln_pspec *spec);

/* ---- exact weighted 1-D k-means ------------------------------------------
 *
 * x: n strictly increasing values; w: their weights (> 0, finite); 1 <= k <= n.
 * Finds the partition of x into k non-empty runs of consecutive values that
 * minimises sum over runs of sum_i w_i (x_i - mean)^2, exactly (up to float64
 * rounding), by the DP of SPEC §4.2
 *     D[c][i] = min_j D[c-1][j-1] + cost(j..i)
 * with prefix sums of w, w*x, w*x*x (cost(j..i) = S2 - S1*S1/S0) and the
 * divide-and-conquer optimisation (the leftmost optimal j is monotone in i):
 * O(k n log n) time, O(k n) memory for the back-pointers.
 * Ties: the leftmost j wins at every step, so among equal-cost partitions
 * the last cluster starts leftmost (the golden vectors' convention).
 * Outputs: centroids[c] = weighted mean of run c, in float64 (sum w*x / sum w
 * over the run); cluster_start[c] = index of the first value of run c
 * (cluster_start[0] = 0, run c ends where run c+1 starts, or at n); *cost =
 * D[k][n-1]. Any output pointer may be NULL. */
kiln_status kiln_kmeans1d(const double *x, const double *w, size_t n, int k, double *centroids,
                          size_t *cluster_start, double *cost);

/* ---- palettization -------------------------------------------------------
 *
 * A weight tensor is viewed as [cout][inner] (OIHW, inner = cin*kh*kw). Its
 * blocks are the whole tensor (per_tensor) or runs of group_size output
 * channels (per_grouped_channel; the last group is smaller when group_size
 * does not divide cout): n_luts = kiln_palette_n_luts(). Per block (SPEC §4):
 *   0. per_channel_scale: each row is divided (float32) by its max|w| (1 for
 *      an all-zero row), and multiplied back at dequantization;
 *   1. v = round_half_even(float32(fp16(w)) * 1e4) / 1e4, in float32;
 *   2. the unique v with their weights (counts, or the summed per-column
 *      importance for KILN_KW_ACTIVATION) -> kiln_kmeans1d with
 *      k = min(2^n_bits, #unique); LUT = float32(centroids), padded with the
 *      last centroid up to 2^n_bits entries;
 *   3. indices: the cluster of each weight's v;
 *   4. lut_quantize: qparams of lut_qspec over the LUT (int8 symmetric:
 *      s = max|lut| / 127.5), q = clamp(rint(lut / s) + zp), lut' = (q - zp) * s;
 *      indices are not re-assigned;
 *   5. dequant = lut'[index] (times the row scale).
 * importance (KILN_KW_ACTIVATION only, else ignored): `inner` values, e.g.
 * diag(X X^T) per input column; element (o, i) weighs importance[i] after
 * the normalisation of SPEC §4 (s = v / max v; zeros -> the smallest
 * non-zero value; floor 1e-12). Must be finite and >= 0.
 * Weights must be finite (KILN_ERR_INVALID names the element otherwise).
 */
typedef struct kiln_palette_out {
    float *lut;            /* [n_luts << n_bits] float32 centroids (required)      */
    int8_t *lut_q;         /* [n_luts << n_bits] int8 LUT codes, or NULL           */
    float *lut_scales;     /* [n_luts] LUT scale (1 when not quantized), or NULL    */
    int32_t *lut_zps;      /* [n_luts] LUT zero point, or NULL                      */
    uint8_t *indices;      /* [cout * inner] (required)                              */
    float *channel_scales; /* [cout], written when per_channel_scale, or NULL       */
    float *dequant;        /* [cout * inner] palettized weights, or NULL             */
    double *costs;         /* [n_luts] k-means cost (float64 DP optimum), or NULL    */
    size_t *n_unique;      /* [n_luts] distinct values clustered, or NULL            */
    int *k;                /* [n_luts] clusters used (<= 2^n_bits), or NULL          */
} kiln_palette_out;

/* LUT count for a tensor with cout output channels (0 if the spec is invalid). */
int kiln_palette_n_luts(const kiln_pspec *spec, int cout);
kiln_status kiln_pspec_validate(const kiln_pspec *spec);
kiln_status kiln_palettize(const kiln_pspec *spec, const float *w, int cout, int inner,
                           const float *importance, kiln_palette_out *out);

/* float32 -> nearest float16 (round half to even, overflow to Inf) -> float32. */
float kiln_fp16_round(float f);

#endif

/*
 * palette.c — weight palettization (SPEC §4): per-tensor or grouped-channel
 * look-up tables from exact weighted k-means (kmeans.c), optional int8 LUT
 * quantization and per-channel scales.
 *
 * Invariants: the k-means inputs are float32 values rounded through fp16 and
 * then to 4 decimals (float32 arithmetic, round half to even) exactly as the
 * reference does; a LUT always has 2^n_bits entries (padded with its last
 * centroid), so every index is < 2^n_bits and fits a uint8 for n_bits <= 8.
 * Memory: the caller owns every input and output array (sizes in palette.h);
 * scratch buffers live for one block and are freed before returning.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "palette.h"

void kiln_pspec_init(kiln_pspec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->n_bits = 4;
    spec->granularity = KILN_PG_PER_TENSOR;
    spec->group_size = 16;
    spec->lut_quantize = 1;
    spec->lut_qspec.dtype = KILN_Q_INT8;
    spec->lut_qspec.qscheme = KILN_QS_SYMMETRIC;
    spec->lut_qspec.granularity = KILN_QG_PER_TENSOR;
    spec->weighting = KILN_KW_COUNTS;
}

kiln_status kiln_pspec_validate(const kiln_pspec *spec)
{
    if (!spec) return kiln_fail(KILN_ERR_INVALID, "palettize: spec is NULL");
    switch (spec->n_bits) {
    case 1: case 2: case 3: case 4: case 6: case 8: break;
    default:
        return kiln_fail(KILN_ERR_INVALID, "palettize: n_bits %d (one of 1, 2, 3, 4, 6, 8)",
                         spec->n_bits);
    }
    if (spec->granularity == KILN_PG_PER_GROUPED_CHANNEL) {
        if (spec->group_size <= 0)
            return kiln_fail(KILN_ERR_INVALID, "palettize: group_size %d must be > 0",
                             spec->group_size);
    } else if (spec->granularity != KILN_PG_PER_TENSOR) {
        return kiln_fail(KILN_ERR_INVALID, "palettize: granularity %d is not a kiln_pgranularity",
                         (int)spec->granularity);
    }
    if ((unsigned)spec->weighting > KILN_KW_ACTIVATION)
        return kiln_fail(KILN_ERR_INVALID, "palettize: weighting %d is not a kiln_kmeans_weighting",
                         (int)spec->weighting);
    if (spec->lut_quantize) {
        float s;
        int32_t z;
        kiln_status st = kiln_qparams(&spec->lut_qspec, -1.0f, 1.0f, &s, &z);
        if (st) {
            kiln_errmsg_prefix("palettize: lut_qspec: ");
            return st;
        }
        if (spec->lut_qspec.dtype != KILN_Q_INT8)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "palettize: lut_qspec dtype must be int8 (LUT codes are int8)");
    }
    return KILN_OK;
}

int kiln_palette_n_luts(const kiln_pspec *spec, int cout)
{
    if (!spec || cout <= 0) return 0;
    if (spec->granularity == KILN_PG_PER_GROUPED_CHANNEL)
        return spec->group_size > 0 ? (cout + spec->group_size - 1) / spec->group_size : 0;
    return 1;
}

float kiln_fp16_round(float f)
{
    if (f != f) return f;
    float a = fabsf(f);
    float r;
    if (a >= 65520.0f) {
        /* 65520 is half-way between 65504 (max half) and 65536: ties to even
         * go up, i.e. to infinity. */
        r = INFINITY;
    } else if (a < 6.103515625e-05f) {
        /* fp16 subnormals: multiples of 2^-24; scaling by 2^24 is exact. */
        r = nearbyintf(a * 16777216.0f) / 16777216.0f;
    } else {
        /* Keep 11 significant bits: drop 13 mantissa bits, ties to even. */
        uint32_t b;
        memcpy(&b, &a, sizeof b);
        b = (b + 0x0fffu + ((b >> 13) & 1u)) & ~0x1fffu;
        memcpy(&r, &b, sizeof r);
    }
    return f < 0 ? -r : r;
}

/* SPEC §4.1 step 1, float32. */
static inline float kmeans_value(float w)
{
    return nearbyintf(kiln_fp16_round(w) * 1e4f) / 1e4f;
}

typedef struct vw {
    float v;
    uint32_t pos; /* element index within the block */
} vw;

static int cmp_vw(const void *a, const void *b)
{
    float x = ((const vw *)a)->v, y = ((const vw *)b)->v;
    return (x > y) - (x < y);
}

/* One block: rows [r0, r1) of the [cout][inner] view. */
static kiln_status palettize_block(const kiln_pspec *spec, const float *w, int inner, int r0,
                                   int r1, const double *imp, const float *row_scale, int blk,
                                   kiln_palette_out *out)
{
    const size_t m = (size_t)(r1 - r0) * (size_t)inner, base = (size_t)r0 * (size_t)inner;
    const int L = 1 << spec->n_bits;
    kiln_status st = KILN_OK;
    vw *e = malloc(m * sizeof *e);
    double *ux = malloc(m * sizeof *ux), *uw = malloc(m * sizeof *uw);
    double *cent = malloc((size_t)L * sizeof *cent);
    size_t *start = malloc((size_t)L * sizeof *start);
    uint8_t *ucl = malloc(m);
    if (!e || !ux || !uw || !cent || !start || !ucl) {
        st = kiln_fail(KILN_ERR_NOMEM, "palettize: out of memory for %zu weights", m);
        goto out;
    }
    for (size_t i = 0; i < m; i++) {
        float x = w[base + i];
        if (row_scale) x = x / row_scale[r0 + (int)(i / (size_t)inner)];
        e[i].v = kmeans_value(x);
        e[i].pos = (uint32_t)i;
    }
    qsort(e, m, sizeof *e, cmp_vw);
    /* Unique values and their k-means weights. */
    size_t nu = 0;
    for (size_t i = 0; i < m; i++) {
        double wt = imp ? imp[e[i].pos % (size_t)inner] : 1.0;
        if (nu && (double)e[i].v == ux[nu - 1]) {
            uw[nu - 1] += wt;
        } else {
            ux[nu] = (double)e[i].v;
            uw[nu] = wt;
            nu++;
        }
    }
    int k = nu < (size_t)L ? (int)nu : L;
    double cost;
    st = kiln_kmeans1d(ux, uw, nu, k, cent, start, &cost);
    if (st) goto out;
    float *lut = out->lut + (size_t)blk * L;
    for (int c = 0; c < L; c++) lut[c] = (float)cent[c < k ? c : k - 1];
    /* Cluster of each unique value, then of each element. */
    for (int c = 0; c < k; c++) {
        size_t end = c + 1 < k ? start[c + 1] : nu;
        for (size_t u = start[c]; u < end; u++) ucl[u] = (uint8_t)c;
    }
    {
        size_t u = 0;
        for (size_t i = 0; i < m; i++) {
            while ((double)e[i].v != ux[u]) u++;
            out->indices[base + e[i].pos] = ucl[u];
        }
    }
    /* LUT quantization (indices are not re-assigned, SPEC §4). */
    float lq[256];
    float s = 1.0f;
    int32_t zp = 0;
    if (spec->lut_quantize) {
        float mn = 0.0f, mx = 0.0f;
        for (int c = 0; c < L; c++) {
            mn = lut[c] < mn ? lut[c] : mn;
            mx = lut[c] > mx ? lut[c] : mx;
        }
        st = kiln_qparams(&spec->lut_qspec, mn, mx, &s, &zp);
        if (st) goto out;
        int qmin, qmax;
        kiln_qrange(spec->lut_qspec.dtype, spec->lut_qspec.qscheme, &qmin, &qmax);
        for (int c = 0; c < L; c++) {
            int32_t q = kiln_quant_code(lut[c], s, zp, qmin, qmax);
            if (out->lut_q) out->lut_q[(size_t)blk * L + c] = (int8_t)q;
            lq[c] = (float)(q - zp) * s;
        }
    } else {
        memcpy(lq, lut, (size_t)L * sizeof *lq);
    }
    if (out->lut_scales) out->lut_scales[blk] = s;
    if (out->lut_zps) out->lut_zps[blk] = zp;
    if (out->costs) out->costs[blk] = cost;
    if (out->n_unique) out->n_unique[blk] = nu;
    if (out->k) out->k[blk] = k;
    if (out->dequant)
        for (size_t i = 0; i < m; i++) {
            float v = lq[out->indices[base + i]];
            if (row_scale) v = v * row_scale[r0 + (int)(i / (size_t)inner)];
            out->dequant[base + i] = v;
        }
out:
    free(e);
    free(ux);
    free(uw);
    free(cent);
    free(start);
    free(ucl);
    return st;
}

kiln_status kiln_palettize(const kiln_pspec *spec, const float *w, int cout, int inner,
                           const float *importance, kiln_palette_out *out)
{
    kiln_status st = kiln_pspec_validate(spec);
    if (st) return st;
    if (!w || !out || !out->lut || !out->indices)
        return kiln_fail(KILN_ERR_INVALID, "palettize: weights, out, out->lut or out->indices is NULL");
    if (cout <= 0 || inner <= 0)
        return kiln_fail(KILN_ERR_INVALID, "palettize: shape [%d][%d] is empty or negative", cout, inner);
    const size_t numel = (size_t)cout * (size_t)inner;
    if (numel >= UINT32_MAX) return kiln_fail(KILN_ERR_LIMIT, "palettize: %zu weights", numel);
    for (size_t i = 0; i < numel; i++)
        if (!isfinite(w[i]))
            return kiln_fail(KILN_ERR_INVALID, "palettize: weight element %zu (channel %zu) is %s", i,
                             i / (size_t)inner, isnan(w[i]) ? "NaN" : "infinite");
    double *imp = NULL;
    float *rs = NULL;
    if (spec->weighting == KILN_KW_ACTIVATION) {
        if (!importance)
            return kiln_fail(KILN_ERR_INVALID, "palettize: activation weighting needs an importance array");
        imp = malloc((size_t)inner * sizeof *imp);
        if (!imp) return kiln_fail(KILN_ERR_NOMEM, "palettize: out of memory");
        /* SPEC §4 sensitivity normalisation: v / max v, zeros -> smallest
         * non-zero, floor 1e-12 (so every unique value has weight > 0). */
        double mx = 0, mnz = INFINITY;
        for (int i = 0; i < inner; i++) {
            double v = importance[i];
            if (!isfinite(v) || v < 0) {
                free(imp);
                return kiln_fail(KILN_ERR_INVALID, "palettize: importance[%d] = %g (must be finite, >= 0)",
                                 i, v);
            }
            mx = v > mx ? v : mx;
            if (v > 0 && v < mnz) mnz = v;
        }
        for (int i = 0; i < inner; i++) {
            double v = mx > 0 ? importance[i] / mx : 1.0;
            if (v == 0) v = mx > 0 ? mnz / mx : 1.0;
            imp[i] = v > 1e-12 ? v : 1e-12;
        }
    }
    if (spec->per_channel_scale) {
        rs = malloc((size_t)cout * sizeof *rs);
        if (!rs) {
            free(imp);
            return kiln_fail(KILN_ERR_NOMEM, "palettize: out of memory");
        }
        for (int o = 0; o < cout; o++) {
            float a = 0.0f;
            for (int i = 0; i < inner; i++) {
                float v = fabsf(w[(size_t)o * inner + i]);
                a = v > a ? v : a;
            }
            rs[o] = a > 0.0f ? a : 1.0f; /* all-zero row: nothing to scale */
            if (out->channel_scales) out->channel_scales[o] = rs[o];
        }
    }
    int nl = kiln_palette_n_luts(spec, cout);
    int g = spec->granularity == KILN_PG_PER_GROUPED_CHANNEL ? spec->group_size : cout;
    for (int b = 0; b < nl && !st; b++) {
        int r0 = b * g, r1 = r0 + g < cout ? r0 + g : cout;
        st = palettize_block(spec, w, inner, r0, r1, imp, rs, b, out);
        if (st) kiln_errmsg_prefix("palettize: LUT %d (channels %d..%d): ", b, r0, r1 - 1);
    }
    free(imp);
    free(rs);
    return st;
}

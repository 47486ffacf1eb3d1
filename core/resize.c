/*
 * resize.c — MATLAB-compatible bicubic downscaling (SPEC §2):
 * imresize(I, 1/s, 'bicubic') on a uint8 RGB image.
 *
 * This mirrors MATLAB's contributions()/resizeAlongDim() step by step so the
 * result is bit-exact with the LR files of the standard benchmarks:
 *   - per output index x (1-based): u = x/scale + 0.5*(1 - 1/scale);
 *     left = floor(u - kw/2); taps left .. left+P-1 with P = ceil(kw) + 2;
 *   - antialiasing: h(t) = scale * cubic(scale * t), kw = 4/scale;
 *   - weights divided by their (left-to-right) sum;
 *   - out-of-range taps mirror symmetrically (index sequence 1..n, n..1);
 *   - height is resized first (MATLAB sorts dimensions by scale, a stable
 *     sort, so dim 1 wins the tie), then width;
 *   - after each pass: round half away from zero, saturate to uint8 (MATLAB
 *     keeps a uint8 intermediate for a uint8 input).
 * All arithmetic is double, in the same order MATLAB sums (tap by tap).
 *
 * Memory: weight tables and the intermediate image are private and freed
 * before returning; the output image is allocated here and owned by the caller.
 */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct kiln__contrib {
    int taps;     /* P */
    int *index;   /* out_len * P, 0-based, already mirrored */
    double *w;    /* out_len * P, normalised */
} kiln__contrib;

/* Keys cubic, a = -0.5, written as MATLAB's cubic(). */
static double cubic(double x)
{
    double ax = fabs(x), ax2 = ax * ax, ax3 = ax2 * ax;
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0) +
           (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((1.0 < ax) && (ax <= 2.0));
}

/* Symmetric padding as MATLAB's aux = [1:n, n:-1:1] lookup (0-based here). */
static int mirror(long i, int n)
{
    long period = 2L * n;
    long m = i % period;
    if (m < 0) m += period;
    return (int)(m < n ? m : period - 1 - m);
}

static kiln_status contributions(int in_len, int out_len, int s, kiln__contrib *c)
{
    double scale = 1.0 / (double)s;
    double kw = 4.0 / scale; /* antialiased kernel width */
    int taps = (int)ceil(kw) + 2;
    c->taps = taps;
    c->index = malloc(sizeof *c->index * (size_t)out_len * (size_t)taps);
    c->w = malloc(sizeof *c->w * (size_t)out_len * (size_t)taps);
    if (!c->index || !c->w) {
        free(c->index);
        free(c->w);
        c->index = NULL;
        c->w = NULL;
        return kiln_fail(KILN_ERR_NOMEM, "resize: cannot allocate %d x %d weights", out_len, taps);
    }
    for (int x = 1; x <= out_len; x++) {
        double u = (double)x / scale + 0.5 * (1.0 - 1.0 / scale);
        double left = floor(u - kw / 2.0);
        double *w = c->w + (size_t)(x - 1) * taps;
        int *ix = c->index + (size_t)(x - 1) * taps;
        double sum = 0.0;
        for (int j = 0; j < taps; j++) {
            double idx = left + j; /* 1-based input index */
            w[j] = scale * cubic(scale * (u - idx));
            sum += w[j];
            ix[j] = mirror((long)idx - 1, in_len);
        }
        for (int j = 0; j < taps; j++) w[j] /= sum;
    }
    return KILN_OK;
}

static inline uint8_t round_sat_u8(double v)
{
    /* round half away from zero, then saturate (MATLAB uint8 conversion) */
    double r = v < 0 ? -floor(-v + 0.5) : floor(v + 0.5);
    return r <= 0.0 ? 0 : r >= 255.0 ? 255 : (uint8_t)r;
}

kiln_status kiln_image_downscale(const kiln_image *hr, int scale, kiln_image *lr)
{
    memset(lr, 0, sizeof *lr);
    if (scale < 2 || scale > 8)
        return kiln_fail(KILN_ERR_INVALID, "resize: scale %d outside 2..8", scale);
    if (!hr || !hr->rgb || hr->w < scale || hr->h < scale)
        return kiln_fail(KILN_ERR_INVALID, "resize: image %dx%d smaller than scale %d",
                         hr ? hr->w : 0, hr ? hr->h : 0, scale);
    /* crop top-left to a multiple of scale: only the first ow*s x oh*s pixels count */
    int ow = hr->w / scale, oh = hr->h / scale;
    int iw = ow * scale, ih = oh * scale;
    int stride = hr->w * 3;

    kiln__contrib ch = {0}, cw = {0};
    uint8_t *mid = NULL;
    kiln_status st = contributions(ih, oh, scale, &ch);
    if (st == KILN_OK) st = contributions(iw, ow, scale, &cw);
    if (st == KILN_OK) {
        mid = malloc((size_t)oh * (size_t)iw * 3);
        if (!mid) st = kiln_fail(KILN_ERR_NOMEM, "resize: cannot allocate %dx%d intermediate", iw, oh);
    }
    if (st == KILN_OK) st = kiln_image_alloc(lr, ow, oh);
    if (st != KILN_OK) goto done;

    /* pass 1: height ih -> oh, each column of the cropped image */
    for (int y = 0; y < oh; y++) {
        const double *w = ch.w + (size_t)y * ch.taps;
        const int *ix = ch.index + (size_t)y * ch.taps;
        uint8_t *o = mid + (size_t)y * iw * 3;
        for (int x = 0; x < iw * 3; x++) {
            double acc = 0.0;
            for (int j = 0; j < ch.taps; j++) acc += w[j] * hr->rgb[(size_t)ix[j] * stride + x];
            o[x] = round_sat_u8(acc);
        }
    }
    /* pass 2: width iw -> ow, each row of the intermediate */
    for (int y = 0; y < oh; y++) {
        const uint8_t *row = mid + (size_t)y * iw * 3;
        uint8_t *o = lr->rgb + (size_t)y * ow * 3;
        for (int x = 0; x < ow; x++) {
            const double *w = cw.w + (size_t)x * cw.taps;
            const int *ix = cw.index + (size_t)x * cw.taps;
            for (int c = 0; c < 3; c++) {
                double acc = 0.0;
                for (int j = 0; j < cw.taps; j++) acc += w[j] * row[(size_t)ix[j] * 3 + c];
                o[x * 3 + c] = round_sat_u8(acc);
            }
        }
    }
done:
    free(ch.index);
    free(ch.w);
    free(cw.index);
    free(cw.w);
    free(mid);
    if (st != KILN_OK) kiln_image_free(lr);
    return st;
}

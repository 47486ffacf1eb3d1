/*
 * metrics.c — per-image quality scores of SPEC §2: PSNR on RGB, PSNR on
 * BT.601 luma, and SSIM on luma.
 *
 * Conventions (fixed so that figures compare with the reference and with the
 * usual SR evaluation scripts):
 *   - SR comes as float CHW; each value is clamped to [0,1] (NaN counts as 0,
 *     so one bad pixel costs PSNR instead of poisoning the mean with NaN);
 *   - round8 rounds v*255 half away from zero, exactly as
 *     kiln_image_from_chw does, and takes the level back as float32 r/255 like
 *     kiln_image_to_chw, so a score with round8 equals the score of the saved
 *     PNG read back; HR values are float32 v/255 for the same reason;
 *   - HR is cropped top-left to the SR size, then `shave` pixels are removed
 *     from every border of both;
 *   - all sums are double; PSNR = 10 log10(1 / MSE) on [0,1] data, +inf when
 *     MSE == 0; the mean over images is the caller's job.
 *   - SSIM: Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256 on [0,255]
 *     (the spec's BT.601 luma times 255), 11x11 Gaussian window sigma 1.5
 *     (normalised), statistics over the 'valid' region only, C1 = (0.01*255)^2,
 *     C2 = (0.03*255)^2, mean of the SSIM map. The window is separable, so it
 *     is applied as two 11-tap passes.
 *
 * Memory: scratch buffers are allocated per call and freed before returning.
 */
#include "metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KILN__SSIM_WIN 11
#define KILN__SSIM_SIGMA 1.5

kiln_status kiln_metric_parse(const char *s, kiln_metric *out)
{
    if (s && strcmp(s, "psnr") == 0) { *out = KILN_METRIC_PSNR; return KILN_OK; }
    if (s && (strcmp(s, "psnr-y") == 0 || strcmp(s, "psnr_y") == 0)) {
        *out = KILN_METRIC_PSNR_Y;
        return KILN_OK;
    }
    if (s && strcmp(s, "ssim") == 0) { *out = KILN_METRIC_SSIM; return KILN_OK; }
    return kiln_fail(KILN_ERR_INVALID, "metric: unknown name \"%s\" (want psnr, psnr-y or ssim)",
                     s ? s : "(null)");
}

const char *kiln_metric_name(kiln_metric m)
{
    switch (m) {
    case KILN_METRIC_PSNR: return "psnr";
    case KILN_METRIC_PSNR_Y: return "psnr-y";
    case KILN_METRIC_SSIM: return "ssim";
    }
    return "unknown";
}

/* SR sample in [0,1] after clamping and optional 8-bit rounding. */
static inline double sr_value(float v, int round8)
{
    double d = v > 0.0f ? (v < 1.0f ? (double)v : 1.0) : 0.0;
    if (round8) d = (double)((float)floor(d * 255.0 + 0.5) / 255.0f);
    return d;
}

/* HR sample in [0,1] as the network's input layer sees it: float32 v/255
 * (kiln_image_to_chw, torchvision's to_tensor), so an SR equal to the float
 * HR scores +inf rather than ~150 dB. */
static inline double hr_value(uint8_t v)
{
    return (double)((float)v / 255.0f);
}

/* BT.601 luma on [0,1] inputs, SPEC §2. */
static inline double luma(double r, double g, double b)
{
    return (65.738 * r + 129.057 * g + 25.064 * b) / 256.0 + 16.0 / 255.0;
}

static double psnr_of_mse(double mse)
{
    return mse > 0.0 ? 10.0 * log10(1.0 / mse) : INFINITY;
}

/* Luma planes (times `mul`) of the shaved region of SR and HR. */
static void luma_planes(const float *sr, int w, int h, const kiln_image *hr, int shave, int round8,
                        double mul, double *ys, double *yh)
{
    size_t n = (size_t)w * h;
    int rw = w - 2 * shave, rh = h - 2 * shave;
    for (int y = 0; y < rh; y++) {
        for (int x = 0; x < rw; x++) {
            size_t i = (size_t)(y + shave) * w + (size_t)(x + shave);
            const uint8_t *p = hr->rgb + ((size_t)(y + shave) * hr->w + (size_t)(x + shave)) * 3;
            ys[(size_t)y * rw + x] = mul * luma(sr_value(sr[i], round8), sr_value(sr[n + i], round8),
                                                sr_value(sr[2 * n + i], round8));
            yh[(size_t)y * rw + x] = mul * luma(hr_value(p[0]), hr_value(p[1]), hr_value(p[2]));
        }
    }
}

static double psnr_rgb(const float *sr, int w, int h, const kiln_image *hr, int shave, int round8)
{
    size_t n = (size_t)w * h;
    double sum = 0.0;
    for (int c = 0; c < 3; c++) {
        for (int y = shave; y < h - shave; y++) {
            const float *s = sr + c * n + (size_t)y * w;
            const uint8_t *p = hr->rgb + (size_t)y * hr->w * 3 + c;
            for (int x = shave; x < w - shave; x++) {
                double d = sr_value(s[x], round8) - hr_value(p[(size_t)x * 3]);
                sum += d * d;
            }
        }
    }
    double count = 3.0 * (double)(w - 2 * shave) * (double)(h - 2 * shave);
    return psnr_of_mse(sum / count);
}

static double psnr_y(const double *ys, const double *yh, size_t n)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = ys[i] - yh[i];
        sum += d * d;
    }
    return psnr_of_mse(sum / (double)n);
}

/* Mean SSIM of two w x h planes on [0,255] over the valid window region. */
static kiln_status ssim(const double *a, const double *b, int w, int h, double *out)
{
    const int K = KILN__SSIM_WIN, R = K / 2;
    double g[KILN__SSIM_WIN], gs = 0.0;
    for (int i = 0; i < K; i++) {
        g[i] = exp(-(double)((i - R) * (i - R)) / (2.0 * KILN__SSIM_SIGMA * KILN__SSIM_SIGMA));
        gs += g[i];
    }
    for (int i = 0; i < K; i++) g[i] /= gs;

    int ow = w - K + 1, oh = h - K + 1;
    /* horizontal pass: 5 moments, h rows x ow columns */
    size_t hn = (size_t)h * ow;
    double *hm = malloc(sizeof *hm * hn * 5);
    if (!hm) return kiln_fail(KILN_ERR_NOMEM, "ssim: cannot allocate %dx%d scratch", ow, h);
    for (int y = 0; y < h; y++) {
        const double *ra = a + (size_t)y * w, *rb = b + (size_t)y * w;
        for (int x = 0; x < ow; x++) {
            double ma = 0, mb = 0, aa = 0, bb = 0, ab = 0;
            for (int k = 0; k < K; k++) {
                double va = ra[x + k], vb = rb[x + k], gk = g[k];
                ma += gk * va;
                mb += gk * vb;
                aa += gk * va * va;
                bb += gk * vb * vb;
                ab += gk * va * vb;
            }
            size_t i = (size_t)y * ow + x;
            hm[i] = ma;
            hm[hn + i] = mb;
            hm[2 * hn + i] = aa;
            hm[3 * hn + i] = bb;
            hm[4 * hn + i] = ab;
        }
    }
    const double C1 = (0.01 * 255) * (0.01 * 255), C2 = (0.03 * 255) * (0.03 * 255);
    double total = 0.0;
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            double m[5] = {0, 0, 0, 0, 0};
            for (int k = 0; k < K; k++) {
                size_t i = (size_t)(y + k) * ow + x;
                for (int q = 0; q < 5; q++) m[q] += g[k] * hm[q * hn + i];
            }
            double mu1 = m[0], mu2 = m[1];
            double s11 = m[2] - mu1 * mu1, s22 = m[3] - mu2 * mu2, s12 = m[4] - mu1 * mu2;
            total += ((2 * mu1 * mu2 + C1) * (2 * s12 + C2)) /
                     ((mu1 * mu1 + mu2 * mu2 + C1) * (s11 + s22 + C2));
        }
    }
    free(hm);
    *out = total / ((double)ow * oh);
    return KILN_OK;
}

kiln_status kiln_metric_score(const kiln_metric_opts *opts, const float *sr, int w, int h,
                              const kiln_image *hr, double *out)
{
    static const kiln_metric_opts defaults = {KILN_METRIC_PSNR, 0, 0};
    if (!opts) opts = &defaults;
    if (!sr || !hr || !hr->rgb || !out)
        return kiln_fail(KILN_ERR_INVALID, "metric: NULL image");
    if (w <= 0 || h <= 0)
        return kiln_fail(KILN_ERR_INVALID, "metric: SR size %dx%d is not positive", w, h);
    if (hr->w < w || hr->h < h)
        return kiln_fail(KILN_ERR_INVALID, "metric: SR %dx%d is larger than HR %dx%d", w, h,
                         hr->w, hr->h);
    int shave = opts->shave;
    if (shave < 0 || 2 * (long)shave >= w || 2 * (long)shave >= h)
        return kiln_fail(KILN_ERR_INVALID, "metric: shave %d leaves nothing of %dx%d", shave, w, h);
    int rw = w - 2 * shave, rh = h - 2 * shave;

    switch (opts->metric) {
    case KILN_METRIC_PSNR:
        *out = psnr_rgb(sr, w, h, hr, shave, opts->round8);
        return KILN_OK;
    case KILN_METRIC_PSNR_Y:
    case KILN_METRIC_SSIM: {
        if (opts->metric == KILN_METRIC_SSIM && (rw < KILN__SSIM_WIN || rh < KILN__SSIM_WIN))
            return kiln_fail(KILN_ERR_INVALID,
                             "metric: ssim needs at least %dx%d pixels after shave, have %dx%d",
                             KILN__SSIM_WIN, KILN__SSIM_WIN, rw, rh);
        size_t n = (size_t)rw * rh;
        double *ys = malloc(sizeof *ys * n * 2);
        if (!ys) return kiln_fail(KILN_ERR_NOMEM, "metric: cannot allocate %dx%d luma", rw, rh);
        double *yh = ys + n;
        kiln_status st = KILN_OK;
        if (opts->metric == KILN_METRIC_PSNR_Y) {
            luma_planes(sr, w, h, hr, shave, opts->round8, 1.0, ys, yh);
            *out = psnr_y(ys, yh, n);
        } else {
            luma_planes(sr, w, h, hr, shave, opts->round8, 255.0, ys, yh);
            st = ssim(ys, yh, rw, rh, out);
        }
        free(ys);
        return st;
    }
    }
    return kiln_fail(KILN_ERR_INVALID, "metric: unknown metric %d", (int)opts->metric);
}

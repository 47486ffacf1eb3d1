/* test_metrics.c — PSNR / PSNR-Y / SSIM on hand-made images whose answers are
 * computed by hand (closed forms) or by a direct, non-separable reference. */
#include "metrics.h"
#include "util/check.h"

static float *chw_of(const kiln_image *im)
{
    float *f = malloc(sizeof(float) * 3 * (size_t)im->w * im->h);
    kiln_image_to_chw(im, f);
    return f;
}

static void fill(kiln_image *im, uint8_t r, uint8_t g, uint8_t b)
{
    for (size_t i = 0; i < (size_t)im->w * im->h; i++) {
        im->rgb[3 * i] = r;
        im->rgb[3 * i + 1] = g;
        im->rgb[3 * i + 2] = b;
    }
}

static double score(kiln_metric m, int shave, int round8, const float *sr, int w, int h,
                    const kiln_image *hr)
{
    kiln_metric_opts o = {m, shave, round8};
    double v = NAN;
    CHECK_OK(kiln_metric_score(&o, sr, w, h, hr, &v));
    return v;
}

TEST(identical_is_inf_and_ssim_one)
{
    kiln_image hr;
    unsigned seed = 3;
    CHECK_OK(kiln_image_alloc(&hr, 23, 19));
    for (size_t i = 0; i < (size_t)23 * 19 * 3; i++) hr.rgb[i] = (uint8_t)kiln_test_rand(&seed);
    float *sr = chw_of(&hr);
    CHECK(isinf(score(KILN_METRIC_PSNR, 0, 0, sr, 23, 19, &hr)));
    CHECK(isinf(score(KILN_METRIC_PSNR_Y, 0, 0, sr, 23, 19, &hr)));
    CHECK(isinf(score(KILN_METRIC_PSNR, 2, 1, sr, 23, 19, &hr)));
    CHECK_NEAR(score(KILN_METRIC_SSIM, 0, 0, sr, 23, 19, &hr), 1.0, 1e-12);
    /* NULL opts = defaults (RGB PSNR) */
    double v = 0;
    CHECK_OK(kiln_metric_score(NULL, sr, 23, 19, &hr, &v));
    CHECK(isinf(v) && v > 0);
    free(sr);
    kiln_image_free(&hr);
}

TEST(constant_offset_known_psnr)
{
    kiln_image hr;
    CHECK_OK(kiln_image_alloc(&hr, 16, 12));
    fill(&hr, 100, 50, 200);
    float *sr = chw_of(&hr);
    size_t n = 16 * 12;
    for (size_t i = 0; i < 3 * n; i++) sr[i] += 5.0f / 255.0f;
    /* RGB: MSE = (5/255)^2 -> 20 log10(51) = 34.1514 dB (float SR: tolerance) */
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 0, sr, 16, 12, &hr), 20 * log10(51.0), 1e-5);
    /* Y: the difference is 5/255 * (65.738 + 129.057 + 25.064) / 256 */
    double dy = 5.0 / 255.0 * (65.738 + 129.057 + 25.064) / 256.0;
    CHECK_NEAR(score(KILN_METRIC_PSNR_Y, 0, 0, sr, 16, 12, &hr), -20 * log10(dy), 1e-5);
    /* one channel only: MSE = (5/255)^2 / 3 */
    for (size_t i = n; i < 3 * n; i++) sr[i] -= 5.0f / 255.0f;
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 0, sr, 16, 12, &hr), 20 * log10(51.0) + 10 * log10(3.0),
               1e-5);
    free(sr);
    kiln_image_free(&hr);
}

TEST(sr_is_clamped)
{
    kiln_image hr;
    CHECK_OK(kiln_image_alloc(&hr, 4, 4));
    fill(&hr, 255, 0, 255);
    float sr[48];
    for (int i = 0; i < 16; i++) {
        sr[i] = 1.7f;          /* R above 1 vs 255 */
        sr[16 + i] = -3.0f;    /* G below 0 vs 0 */
        sr[32 + i] = i ? 1.0f : INFINITY;
    }
    CHECK(isinf(score(KILN_METRIC_PSNR, 0, 0, sr, 4, 4, &hr)));
    sr[16] = NAN; /* NaN counts as 0: still exact here */
    CHECK(isinf(score(KILN_METRIC_PSNR, 0, 0, sr, 4, 4, &hr)));
    sr[0] = NAN; /* R: 0 vs 1 in one of 48 values -> MSE 1/48 */
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 0, sr, 4, 4, &hr), 10 * log10(48.0), 1e-9);
    kiln_image_free(&hr);
}

TEST(shave_removes_border)
{
    kiln_image hr;
    CHECK_OK(kiln_image_alloc(&hr, 10, 8));
    fill(&hr, 0, 0, 0);
    float *sr = chw_of(&hr);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 10; x++)
                if (x == 0 || y == 0 || x == 9 || y == 7) sr[c * 80 + y * 10 + x] = 1.0f;
    /* 32 ring pixels x 3 channels of error 1 over 240 values: MSE 0.4 */
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 0, sr, 10, 8, &hr), 10 * log10(2.5), 1e-9);
    CHECK(isinf(score(KILN_METRIC_PSNR, 1, 0, sr, 10, 8, &hr)));
    CHECK(isinf(score(KILN_METRIC_PSNR_Y, 2, 0, sr, 10, 8, &hr)));
    /* shave that leaves nothing */
    kiln_metric_opts o = {KILN_METRIC_PSNR, 4, 0};
    double v;
    CHECK_EQ_INT(kiln_metric_score(&o, sr, 10, 8, &hr, &v), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "shave 4") != NULL);
    o.shave = -1;
    CHECK_EQ_INT(kiln_metric_score(&o, sr, 10, 8, &hr, &v), KILN_ERR_INVALID);
    free(sr);
    kiln_image_free(&hr);
}

TEST(hr_cropped_to_sr_size)
{
    kiln_image hr, top;
    unsigned seed = 11;
    CHECK_OK(kiln_image_alloc(&hr, 13, 9));
    CHECK_OK(kiln_image_alloc(&top, 12, 8));
    for (int y = 0; y < 9; y++)
        for (int x = 0; x < 13; x++)
            for (int c = 0; c < 3; c++) {
                uint8_t v = (uint8_t)kiln_test_rand(&seed);
                hr.rgb[(y * 13 + x) * 3 + c] = v;
                if (x < 12 && y < 8) top.rgb[(y * 12 + x) * 3 + c] = v;
            }
    float *sr = chw_of(&top);
    CHECK(isinf(score(KILN_METRIC_PSNR, 0, 0, sr, 12, 8, &hr)));
    CHECK(isinf(score(KILN_METRIC_PSNR_Y, 0, 0, sr, 12, 8, &hr)));
    /* SR larger than HR: refused */
    kiln_metric_opts o = {KILN_METRIC_PSNR, 0, 0};
    double v;
    float *big = calloc(3 * 14 * 9, sizeof(float));
    CHECK_EQ_INT(kiln_metric_score(&o, big, 14, 9, &hr, &v), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "14x9") != NULL && strstr(kiln_errmsg(), "13x9") != NULL);
    free(big);
    free(sr);
    kiln_image_free(&hr);
    kiln_image_free(&top);
}

TEST(round8)
{
    kiln_image hr;
    CHECK_OK(kiln_image_alloc(&hr, 8, 8));
    fill(&hr, 10, 20, 30);
    float *sr = chw_of(&hr);
    for (int i = 0; i < 192; i++) sr[i] += 0.3f / 255.0f;
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 0, sr, 8, 8, &hr), 20 * log10(255.0 / 0.3), 1e-4);
    CHECK(isinf(score(KILN_METRIC_PSNR, 0, 1, sr, 8, 8, &hr)));
    for (int i = 0; i < 192; i++) sr[i] += 0.3f / 255.0f; /* now +0.6 -> rounds to +1 */
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 1, sr, 8, 8, &hr), 20 * log10(255.0), 1e-5); /* float32 levels */
    /* round8 scores equal the score of the 8-bit image kiln would save */
    unsigned seed = 77;
    for (int i = 0; i < 192; i++) sr[i] = kiln_test_randf(&seed, -0.1f, 1.1f);
    kiln_image saved;
    CHECK_OK(kiln_image_from_chw(&saved, sr, 8, 8));
    float *back = chw_of(&saved);
    CHECK_NEAR(score(KILN_METRIC_PSNR, 0, 1, sr, 8, 8, &hr), score(KILN_METRIC_PSNR, 0, 0, back, 8, 8, &hr),
               1e-9);
    free(back);
    kiln_image_free(&saved);
    free(sr);
    kiln_image_free(&hr);
}

/* Constant images: all variances vanish, so SSIM = (2pq + C1) / (p^2 + q^2 + C1). */
TEST(ssim_constant_closed_form)
{
    kiln_image hr, srim;
    CHECK_OK(kiln_image_alloc(&hr, 15, 12));
    CHECK_OK(kiln_image_alloc(&srim, 15, 12));
    fill(&hr, 100, 100, 100);
    fill(&srim, 140, 140, 140);
    float *sr = chw_of(&srim);
    double k = (65.738 + 129.057 + 25.064) / 256.0;
    double p = 16 + 140 * k, q = 16 + 100 * k, C1 = 6.5025;
    double expect = (2 * p * q + C1) / (p * p + q * q + C1);
    CHECK_NEAR(score(KILN_METRIC_SSIM, 0, 0, sr, 15, 12, &hr), expect, 1e-6);
    CHECK(expect < 0.99);
    /* too small for the 11x11 window after shave */
    kiln_metric_opts o = {KILN_METRIC_SSIM, 1, 0};
    double v;
    CHECK_EQ_INT(kiln_metric_score(&o, sr, 15, 12, &hr, &v), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "ssim") != NULL);
    free(sr);
    kiln_image_free(&hr);
    kiln_image_free(&srim);
}

/* Direct 2-D SSIM (non-separable window, straight from the definition; HR
 * taken as float32 v/255 like the network input). */
static double ssim_reference(const float *sr, const kiln_image *hr, int w, int h)
{
    double g[11][11], gs = 0;
    for (int i = 0; i < 11; i++)
        for (int j = 0; j < 11; j++) {
            g[i][j] = exp(-((i - 5) * (i - 5) + (j - 5) * (j - 5)) / 4.5);
            gs += g[i][j];
        }
    size_t n = (size_t)w * h;
    double total = 0;
    for (int y = 0; y + 11 <= h; y++)
        for (int x = 0; x + 11 <= w; x++) {
            double m1 = 0, m2 = 0, a2 = 0, b2 = 0, ab = 0;
            for (int i = 0; i < 11; i++)
                for (int j = 0; j < 11; j++) {
                    size_t idx = (size_t)(y + i) * w + (x + j);
                    double rgb[3], hv[3];
                    for (int c = 0; c < 3; c++) {
                        double v = sr[c * n + idx];
                        rgb[c] = 255 * (v < 0 ? 0 : v > 1 ? 1 : v);
                        hv[c] = 255.0 * (double)((float)hr->rgb[((size_t)(y + i) * hr->w + x + j) * 3 + c] / 255.0f);
                    }
                    double a = 16 + (65.738 * rgb[0] + 129.057 * rgb[1] + 25.064 * rgb[2]) / 256;
                    double b = 16 + (65.738 * hv[0] + 129.057 * hv[1] + 25.064 * hv[2]) / 256;
                    double wt = g[i][j] / gs;
                    m1 += wt * a; m2 += wt * b; a2 += wt * a * a; b2 += wt * b * b; ab += wt * a * b;
                }
            double C1 = 6.5025, C2 = 58.5225;
            total += ((2 * m1 * m2 + C1) * (2 * (ab - m1 * m2) + C2)) /
                     ((m1 * m1 + m2 * m2 + C1) * (a2 - m1 * m1 + b2 - m2 * m2 + C2));
        }
    return total / ((double)(w - 10) * (h - 10));
}

TEST(ssim_matches_direct_reference_and_drops_with_noise)
{
    enum { W = 29, H = 21 };
    kiln_image hr;
    CHECK_OK(kiln_image_alloc(&hr, W, H));
    /* smooth texture so that noise is what hurts */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                hr.rgb[(y * W + x) * 3 + c] = (uint8_t)(128 + 90 * sin(0.3 * x + 0.2 * y + c));
    double prev = 1.0 + 1e-12;
    double amps[4] = {0.005, 0.02, 0.08, 0.3};
    for (int a = 0; a < 4; a++) {
        unsigned seed = 1234;
        float *sr = chw_of(&hr);
        for (int i = 0; i < 3 * W * H; i++)
            sr[i] += kiln_test_randf(&seed, -(float)amps[a], (float)amps[a]);
        double s = score(KILN_METRIC_SSIM, 0, 0, sr, W, H, &hr);
        CHECK_NEAR(s, ssim_reference(sr, &hr, W, H), 1e-10);
        CHECK_MSG(s < prev, "noise %g: ssim %g not below %g", amps[a], s, prev);
        CHECK(s > -1 && s < 1);
        prev = s;
        free(sr);
    }
    CHECK(prev < 0.7);
    kiln_image_free(&hr);
}

TEST(parse_and_names)
{
    kiln_metric m;
    CHECK_OK(kiln_metric_parse("psnr", &m));
    CHECK_EQ_INT(m, KILN_METRIC_PSNR);
    CHECK_OK(kiln_metric_parse("psnr-y", &m));
    CHECK_EQ_INT(m, KILN_METRIC_PSNR_Y);
    CHECK_OK(kiln_metric_parse("ssim", &m));
    CHECK_EQ_INT(m, KILN_METRIC_SSIM);
    CHECK_EQ_INT(kiln_metric_parse("lpips", &m), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "lpips") != NULL);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(kiln_metric_parse(kiln_metric_name((kiln_metric)i), &m));
        CHECK_EQ_INT(m, i);
    }
}

/* The B100 pair: bicubic LR is not HR, but HR vs itself is exact and the
 * nearest-neighbour upscaled LR scores a plausible figure (20..35 dB). */
TEST(real_image_sanity)
{
    kiln_image hr, lr;
    CHECK_OK(kiln_png_read(kiln_test_data("B100/HR/101085.png"), &hr, NULL));
    CHECK_OK(kiln_png_read(kiln_test_data("B100/LR_bicubic/X2/101085x2.png"), &lr, NULL));
    if (!hr.rgb || !lr.rgb) return;
    int w = lr.w * 2, h = lr.h * 2;
    size_t n = (size_t)w * h;
    float *sr = malloc(sizeof(float) * 3 * n);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                sr[c * n + (size_t)y * w + x] = lr.rgb[((size_t)(y / 2) * lr.w + x / 2) * 3 + c] / 255.0f;
    double p = score(KILN_METRIC_PSNR, 0, 0, sr, w, h, &hr);
    double py = score(KILN_METRIC_PSNR_Y, 2, 0, sr, w, h, &hr);
    double s = score(KILN_METRIC_SSIM, 2, 0, sr, w, h, &hr);
    fprintf(stderr, "[nearest x2: psnr %.3f, psnr-y %.3f, ssim %.4f] ", p, py, s);
    CHECK(p > 20 && p < 35);
    CHECK(py > p); /* luma error is smaller than full RGB error on natural images */
    CHECK(s > 0.5 && s < 0.99);
    free(sr);
    kiln_image_free(&hr);
    kiln_image_free(&lr);
}

int main(void)
{
    RUN(identical_is_inf_and_ssim_one);
    RUN(constant_offset_known_psnr);
    RUN(sr_is_clamped);
    RUN(shave_removes_border);
    RUN(hr_cropped_to_sr_size);
    RUN(round8);
    RUN(ssim_constant_closed_form);
    RUN(ssim_matches_direct_reference_and_drops_with_noise);
    RUN(parse_and_names);
    RUN(real_image_sanity);
    return check_summary();
}

/* test_palette.c — SPEC §4 palettization on hand-made tensors: fp16 and 1e-4
 * rounding, LUT padding, int8 LUT, grouped channels, per-channel scales,
 * activation weighting, non-finite weights, invalid specs. */
#include <float.h>
#include <stdint.h>

#include "palette.h"
#include "util/check.h"

static int same_float(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* Palettize with every output requested; arrays sized for n_bits <= 8. */
typedef struct res {
    float lut[8 * 256], ls[8], cs[64];
    int8_t lq[8 * 256];
    int32_t lz[8];
    double cost[8];
    size_t nu[8];
    int k[8];
    uint8_t idx[4096];
    float dq[4096];
} res;

static kiln_status run(const kiln_pspec *ps, const float *w, int cout, int inner, const float *imp, res *r)
{
    memset(r, 0, sizeof *r);
    kiln_palette_out o = {.lut = r->lut, .lut_q = r->lq, .lut_scales = r->ls, .lut_zps = r->lz,
                          .indices = r->idx, .channel_scales = r->cs, .dequant = r->dq,
                          .costs = r->cost, .n_unique = r->nu, .k = r->k};
    return kiln_palettize(ps, w, cout, inner, imp, &o);
}

TEST(fp16_round)
{
    CHECK(kiln_fp16_round(1.0f) == 1.0f);
    CHECK(kiln_fp16_round(0.1f) == 0.0999755859375f);
    CHECK(kiln_fp16_round(-0.1f) == -0.0999755859375f);
    CHECK(kiln_fp16_round(65504.0f) == 65504.0f);
    CHECK(kiln_fp16_round(65519.0f) == 65504.0f);
    CHECK(isinf(kiln_fp16_round(65520.0f)));
    CHECK(isinf(kiln_fp16_round(-1e6f)) && kiln_fp16_round(-1e6f) < 0);
    CHECK(kiln_fp16_round(1e-8f) == 0.0f);
    CHECK(kiln_fp16_round(3e-8f) == 5.9604644775390625e-08f);      /* 2^-24 */
    CHECK(kiln_fp16_round(2.98023223876953125e-08f) == 0.0f);       /* 2^-25: tie to even 0 */
    CHECK(kiln_fp16_round(1.0f + 0x1p-11f) == 1.0f);                /* tie to even */
    CHECK(kiln_fp16_round(1.0f + 3 * 0x1p-11f) == 1.0f + 0x1p-9f);  /* tie to even (up) */
    CHECK(kiln_fp16_round(6.1035156e-05f) == 6.103515625e-05f);     /* smallest normal */
#ifdef __FLT16_MAX__
    /* compare with the compiler's own conversion on many floats */
    unsigned rs = 7;
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t b = kiln_test_rand(&rs);
        float f;
        memcpy(&f, &b, sizeof f);
        if (!isfinite(f)) continue;
        if (i % 2) f = ldexpf(f, -ilogbf(f) + (int)(kiln_test_rand(&rs) % 40) - 28); /* fp16-ish range */
        float want = (float)(_Float16)f, got = kiln_fp16_round(f);
        if (!same_float(want, got) && bad++ < 3) fprintf(stderr, "\n    %a -> %a, want %a", f, got, want);
    }
    CHECK_EQ_INT(bad, 0);
#endif
}

TEST(all_zero_constant_single)
{
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    static res r;
    float z[12] = {0};
    CHECK_OK(run(&ps, z, 3, 4, NULL, &r));
    CHECK_EQ_INT(r.nu[0], 1); CHECK_EQ_INT(r.k[0], 1);
    for (int c = 0; c < 16; c++) { CHECK(r.lut[c] == 0.0f); CHECK_EQ_INT(r.lq[c], 0); }
    CHECK(same_float(r.ls[0], 1.1920929e-07f));
    for (int i = 0; i < 12; i++) { CHECK_EQ_INT(r.idx[i], 0); CHECK(r.dq[i] == 0.0f); }
    CHECK(r.cost[0] == 0.0);
    float c7[6] = {0.7f, 0.7f, 0.7f, 0.7f, 0.7f, 0.7f};
    CHECK_OK(run(&ps, c7, 2, 3, NULL, &r));
    float v = nearbyintf(kiln_fp16_round(0.7f) * 1e4f) / 1e4f;
    CHECK(same_float(r.lut[0], v) && same_float(r.lut[15], v));
    CHECK_EQ_INT(r.lq[0], 127);
    CHECK(same_float(r.ls[0], v / 127.5f));
    for (int i = 0; i < 6; i++) CHECK(same_float(r.dq[i], 127.0f * (v / 127.5f)));
    float one = -0.25f;
    CHECK_OK(run(&ps, &one, 1, 1, NULL, &r));
    /* -0.25 / float(0.25/127.5) is -127.5 or just off it: the float
     * arithmetic decides between -128 and -127 (SPEC §3.2.4) */
    CHECK(r.lut[0] == -0.25f);
    CHECK_EQ_INT(r.lq[0], kiln_quant_code(-0.25f, 0.25f / 127.5f, 0, -128, 127));
    CHECK(r.lq[0] == -128 || r.lq[0] == -127);
}

TEST(rounding_and_padding)
{
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    ps.n_bits = 2;
    ps.lut_quantize = 0;
    static res r;
    /* 0.00001 and 0.00004 both round to 0 on the 1e-4 grid; 0.00006 -> 1e-4 */
    float w[8] = {0.00001f, 0.00004f, 0.00006f, 0.5f, 0.5f, -0.5f, 0.00001f, 0.5f};
    CHECK_OK(run(&ps, w, 2, 4, NULL, &r));
    CHECK_EQ_INT(r.nu[0], 4); /* {-0.5, 0, 1e-4, 0.5} */
    CHECK_EQ_INT(r.k[0], 4);
    w[2] = 0.0f; /* now 3 unique values, LUT of 4 padded with the last */
    CHECK_OK(run(&ps, w, 2, 4, NULL, &r));
    CHECK_EQ_INT(r.nu[0], 3); CHECK_EQ_INT(r.k[0], 3);
    CHECK(r.lut[0] == -0.5f && r.lut[1] == 0.0f && r.lut[2] == 0.5f && r.lut[3] == 0.5f);
    const uint8_t want[8] = {1, 1, 1, 2, 2, 0, 1, 2};
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(r.idx[i], want[i]);
    /* without LUT quantization, dequant is the LUT itself, scale 1 */
    for (int i = 0; i < 8; i++) CHECK(same_float(r.dq[i], r.lut[r.idx[i]]));
    CHECK(r.ls[0] == 1.0f);
}

TEST(two_clusters_1bit_and_lut_int8)
{
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    ps.n_bits = 1;
    static res r;
    float w[20];
    for (int i = 0; i < 20; i++) w[i] = (i % 2 ? 1.0f : -0.5f) + (float)(i / 2) * 0.001f;
    CHECK_OK(run(&ps, w, 4, 5, NULL, &r));
    for (int i = 0; i < 20; i++) CHECK_EQ_INT(r.idx[i], i % 2);
    /* means of the fp16-rounded values (fp16 steps: 2^-11 near 0.5, 2^-10 near 1) */
    CHECK_NEAR(r.lut[0], -0.5 + 0.0045, 5e-4);
    CHECK_NEAR(r.lut[1], 1.0 + 0.0045, 5e-4);
    float s = r.lut[1] / 127.5f;
    CHECK(same_float(r.ls[0], s));
    CHECK_EQ_INT(r.lq[1], 127);
    CHECK_EQ_INT(r.lq[0], (int)nearbyintf(r.lut[0] / s));
    for (int i = 0; i < 20; i++) CHECK(same_float(r.dq[i], (float)r.lq[r.idx[i]] * s));
}

TEST(grouped_channels)
{
    unsigned rs = 11;
    float w[5 * 18];
    for (int i = 0; i < 5 * 18; i++) w[i] = kiln_test_randf(&rs, -1.0f, 1.0f) * (float)(1 + i / 18);
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    ps.n_bits = 3;
    ps.granularity = KILN_PG_PER_GROUPED_CHANNEL;
    ps.group_size = 2;
    CHECK_EQ_INT(kiln_palette_n_luts(&ps, 5), 3);
    static res r, g;
    CHECK_OK(run(&ps, w, 5, 18, NULL, &r));
    /* each group equals palettizing its rows alone, per tensor */
    kiln_pspec pt = ps;
    pt.granularity = KILN_PG_PER_TENSOR;
    for (int b = 0; b < 3; b++) {
        int rows = b < 2 ? 2 : 1;
        CHECK_OK(run(&pt, w + b * 2 * 18, rows, 18, NULL, &g));
        CHECK(memcmp(r.lut + b * 8, g.lut, 8 * sizeof(float)) == 0);
        CHECK(memcmp(r.lq + b * 8, g.lq, 8) == 0);
        CHECK(same_float(r.ls[b], g.ls[0]));
        CHECK(memcmp(r.idx + b * 36, g.idx, (size_t)rows * 18) == 0);
        CHECK(memcmp(r.dq + b * 36, g.dq, (size_t)rows * 18 * sizeof(float)) == 0);
    }
    /* grouped LUTs fit better than one LUT for rows of different scales */
    static res t;
    CHECK_OK(run(&pt, w, 5, 18, NULL, &t));
    double eg = 0, et = 0;
    for (int i = 0; i < 90; i++) {
        eg += (r.dq[i] - w[i]) * (double)(r.dq[i] - w[i]);
        et += (t.dq[i] - w[i]) * (double)(t.dq[i] - w[i]);
    }
    CHECK(eg < et);
}

TEST(per_channel_scale)
{
    float w[3 * 4] = {0.1f, -0.2f, 0.4f, 0.3f, 1.0f, -2.0f, 4.0f, 3.0f, 0, 0, 0, 0};
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    ps.per_channel_scale = 1;
    static res r;
    CHECK_OK(run(&ps, w, 3, 4, NULL, &r));
    CHECK(r.cs[0] == 0.4f && r.cs[1] == 4.0f && r.cs[2] == 1.0f);
    /* rows 0 and 1 are multiples: after scaling, the same values and indices */
    CHECK(memcmp(r.idx, r.idx + 4, 4) == 0);
    for (int i = 0; i < 12; i++) {
        float base = (float)(r.lq[r.idx[i]]) * r.ls[0];
        CHECK(same_float(r.dq[i], base * r.cs[i / 4]));
    }
    for (int i = 8; i < 12; i++) CHECK(r.dq[i] == 0.0f);
    CHECK_NEAR(r.dq[6], 4.0, 4.0 / 127.5);
}

TEST(activation_weighting)
{
    unsigned rs = 99;
    enum { CO = 8, IN = 36 };
    float w[CO * IN], imp[IN], ones[IN];
    for (int i = 0; i < CO * IN; i++) w[i] = kiln_test_randf(&rs, -1.0f, 1.0f);
    for (int i = 0; i < IN; i++) { imp[i] = i < 6 ? 1000.0f : (i < 12 ? 0.0f : 1.0f); ones[i] = 3.0f; }
    kiln_pspec pc, pa;
    kiln_pspec_init(&pc);
    pc.n_bits = 2;
    pa = pc;
    pa.weighting = KILN_KW_ACTIVATION;
    static res rc, ra, ro;
    CHECK_OK(run(&pc, w, CO, IN, NULL, &rc));
    /* uniform importance == counts */
    CHECK_OK(run(&pa, w, CO, IN, ones, &ro));
    CHECK(memcmp(rc.lut, ro.lut, 4 * sizeof(float)) == 0 && memcmp(rc.idx, ro.idx, CO * IN) == 0);
    CHECK(ro.cost[0] == rc.cost[0] * 1.0);
    /* skewed importance: the important columns get a smaller error */
    CHECK_OK(run(&pa, w, CO, IN, imp, &ra));
    double ec = 0, ea = 0;
    for (int o = 0; o < CO; o++)
        for (int i = 0; i < 6; i++) {
            size_t e = (size_t)o * IN + i;
            ec += (rc.dq[e] - w[e]) * (double)(rc.dq[e] - w[e]);
            ea += (ra.dq[e] - w[e]) * (double)(ra.dq[e] - w[e]);
        }
    fprintf(stderr, "[important columns sq.err %.4g (activation) vs %.4g (counts)] ", ea, ec);
    CHECK(ea < ec);
    /* missing or bad importance */
    CHECK_EQ_INT(run(&pa, w, CO, IN, NULL, &ra), KILN_ERR_INVALID);
    imp[3] = NAN;
    CHECK_EQ_INT(run(&pa, w, CO, IN, imp, &ra), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "importance[3]") != NULL);
    imp[3] = -1.0f;
    CHECK_EQ_INT(run(&pa, w, CO, IN, imp, &ra), KILN_ERR_INVALID);
}

TEST(nbits_8_and_kmeans_beats_uniform)
{
    unsigned rs = 5;
    enum { N = 64 * 36 };
    static float w[N];
    for (int i = 0; i < N; i++) {
        float u = 0;
        for (int k = 0; k < 3; k++) u += kiln_test_randf(&rs, -0.3f, 0.3f);
        w[i] = u;
    }
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    ps.n_bits = 8;
    static res r;
    CHECK_OK(run(&ps, w, 64, 36, NULL, &r));
    CHECK_EQ_INT(r.k[0], 256 < (int)r.nu[0] ? 256 : (int)r.nu[0]);
    for (int c = 1; c < 256; c++) CHECK(r.lut[c] >= r.lut[c - 1]);
    /* 4-bit k-means (float LUT) vs 4-bit uniform symmetric quantization */
    ps.n_bits = 4;
    ps.lut_quantize = 0;
    CHECK_OK(run(&ps, w, 64, 36, NULL, &r));
    kiln_qspec q;
    memset(&q, 0, sizeof q);
    q.dtype = KILN_Q_INT4;
    static float dq[N];
    CHECK_OK(kiln_quant_weight(&q, w, 64, 36, NULL, NULL, NULL, NULL, dq));
    double ek = 0, eu = 0;
    for (int i = 0; i < N; i++) {
        ek += (r.dq[i] - w[i]) * (double)(r.dq[i] - w[i]);
        eu += (dq[i] - w[i]) * (double)(dq[i] - w[i]);
    }
    fprintf(stderr, "[4-bit sq.err k-means %.4g vs uniform int4 %.4g] ", ek, eu);
    CHECK(ek < eu);
}

TEST(invalid)
{
    kiln_pspec ps;
    kiln_pspec_init(&ps);
    static res r;
    float w[4] = {0.1f, 0.2f, INFINITY, 0.4f};
    CHECK_EQ_INT(run(&ps, w, 2, 2, NULL, &r), KILN_ERR_INVALID);
    CHECK_MSG(strstr(kiln_errmsg(), "element 2 (channel 1)") != NULL, "%s", kiln_errmsg());
    w[2] = NAN;
    CHECK_EQ_INT(run(&ps, w, 2, 2, NULL, &r), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "NaN") != NULL);
    w[2] = 0.3f;
    ps.n_bits = 5;
    CHECK_EQ_INT(run(&ps, w, 2, 2, NULL, &r), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "n_bits 5") != NULL);
    ps.n_bits = 4;
    ps.granularity = KILN_PG_PER_GROUPED_CHANNEL;
    ps.group_size = 0;
    CHECK_EQ_INT(run(&ps, w, 2, 2, NULL, &r), KILN_ERR_INVALID);
    ps.granularity = KILN_PG_PER_TENSOR;
    CHECK_EQ_INT(run(&ps, w, 0, 2, NULL, &r), KILN_ERR_INVALID);
    ps.lut_qspec.dtype = KILN_Q_UINT8;
    CHECK_EQ_INT(run(&ps, w, 2, 2, NULL, &r), KILN_ERR_UNSUPPORTED);
}

int main(void)
{
    RUN(fp16_round);
    RUN(all_zero_constant_single);
    RUN(rounding_and_padding);
    RUN(two_clusters_1bit_and_lut_int8);
    RUN(grouped_channels);
    RUN(per_channel_scale);
    RUN(activation_weighting);
    RUN(nbits_8_and_kmeans_beats_uniform);
    RUN(invalid);
    return check_summary();
}

/*
 * quant.h — integer quantization of SPEC §3: specs, qparams, fake
 * quantization, observers (qparams calculators), weight quantization, and the
 * activation quantizer that hooks every site of a model.
 *
 * (Types below were fixed by the lead so the recipe and artifact modules can
 * use them; the quant module owns the functions.)
 */
#ifndef KILN_QUANT_H
#define KILN_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum kiln_qdtype {
    KILN_Q_INT8 = 0, /* [-128, 127] */
    KILN_Q_UINT8,    /* [0, 255]    */
    KILN_Q_INT4,     /* [-8, 7]     */
    KILN_Q_UINT4,    /* [0, 15]     */
} kiln_qdtype;

typedef enum kiln_qscheme {
    KILN_QS_SYMMETRIC = 0,
    KILN_QS_ASYMMETRIC,
    KILN_QS_SYMMETRIC_WITH_CLIPPING, /* int8 [-127, 127] */
} kiln_qscheme;

typedef enum kiln_qgranularity {
    KILN_QG_PER_TENSOR = 0,
    KILN_QG_PER_CHANNEL, /* axis */
    KILN_QG_PER_BLOCK,   /* axis, block_size */
} kiln_qgranularity;

typedef enum kiln_qcalc {
    KILN_QC_STATIC = 0,      /* min/max of the tensor itself (weights)           */
    KILN_QC_MOVING_AVERAGE,  /* running = c*x + (1-c)*running (SPEC §3.4)         */
    KILN_QC_GLOBAL_MINMAX,   /* min of mins, max of maxes over all observations   */
    KILN_QC_HIST_MSE,        /* kiln §7: histogram, MSE-optimal clipping range    */
    KILN_QC_HIST_PERCENTILE, /* kiln §7: histogram, percentile clipping           */
} kiln_qcalc;

typedef struct kiln_qspec {
    kiln_qdtype dtype;
    kiln_qscheme qscheme;
    kiln_qgranularity granularity;
    int axis;            /* per_channel / per_block */
    int block_size;      /* per_block               */
    kiln_qcalc calc;
    float ma_constant;   /* moving_average c (default 0.01)        */
    float percentile;    /* hist_percentile, e.g. 99.99            */
    int asymmetric_relu; /* ReLU outputs use the full unsigned range */
    int multiply_by_inverse; /* fake quant as x * (1/scale) (torch parity) instead of x / scale */
} kiln_qspec;

/* qmin/qmax of a dtype+scheme (symmetric_with_clipping int8 → -127..127). */
void kiln_qrange(kiln_qdtype dtype, kiln_qscheme scheme, int *qmin, int *qmax);

/* ---- qparams and fake quantization (SPEC §3.2, §3.3) -------------------
 *
 * All arithmetic is float32, in the order SPEC §3.2 writes it:
 *   min = min(min, 0), max = max(max, 0);
 *   symmetric (and symmetric_with_clipping):
 *       scale = max(-min, max) / ((qmax - qmin) / 2)   -- /127.5 for int8
 *       zp    = (qmax + qmin + 1) / 2 (C integer division: 0 for int8, 128 uint8)
 *   asymmetric:
 *       scale = (max - min) / (qmax - qmin)
 *       zp    = clamp(qmin - rint(min / scale), qmin, qmax)
 *   both: scale = max(scale, 1.1920929e-07).
 * Non-finite min or max is refused (KILN_ERR_INVALID), as is min > max after
 * the clamp (impossible unless NaN). Per-block/per-channel callers loop. */
kiln_status kiln_qparams(const kiln_qspec *spec, float min, float max, float *scale,
                         int32_t *zp);

/* In place: q = clamp(rint(x / scale) + zp, qmin, qmax); x = (q - zp) * scale
 * (x * (1/scale) instead of x / scale when multiply_by_inverse, for torch
 * parity). rint is round half to even. Non-finite inputs: +Inf -> qmax,
 * -Inf -> qmin, NaN -> zp (i.e. 0.0): an int8 tensor has no NaN, and the
 * zero point is the neutral code. Runs the AVX2 kernel when the CPU has it;
 * the result is bit-identical to the scalar reference. */
void kiln_fake_quant(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                     int multiply_by_inverse);

/* One value's code: clamp(rint(x / scale) + zp, qmin, qmax) (NaN -> zp). */
int32_t kiln_quant_code(float x, float scale, int32_t zp, int qmin, int qmax);

/* ---- weight quantization ------------------------------------------------
 *
 * A weight tensor is viewed as a [cout][inner] row-major matrix (OIHW with
 * inner = cin*kh*kw). Granularity (spec->granularity):
 *   per_tensor               1 scale/zp for the whole tensor;
 *   per_channel, axis 0      cout scales, scale[o] for row o;
 *   per_block,   axis 1      blocks of block_size consecutive elements along
 *                            the inner dimension of each row (the last block
 *                            of a row is shorter when block_size does not
 *                            divide inner): nb = ceil(inner / block_size)
 *                            blocks per row, scale[o * nb + b] for the block
 *                            holding elements [b*block_size, (b+1)*block_size).
 * Other axes are KILN_ERR_UNSUPPORTED. The range of each block is its min/max
 * (calc is ignored: weights are always "static").
 * Outputs (each may be NULL):
 *   codes   [cout*inner] integer codes (int16 holds every dtype),
 *   scales, zps  [kiln_quant_weight_nscales()] ,
 *   dequant [cout*inner] (q - zp) * scale, the fake-quantized weight.
 * A NaN or infinite weight is refused with KILN_ERR_INVALID naming the
 * element index (callers prefix the tensor name with kiln_errmsg_prefix). */
size_t kiln_quant_weight_nscales(const kiln_qspec *spec, int cout, int inner);
kiln_status kiln_quant_weight(const kiln_qspec *spec, const float *w, int cout, int inner,
                              int16_t *codes, float *scales, int32_t *zps, size_t *n_scales,
                              float *dequant);

/* ---- observers (qparams calculators for activations, SPEC §3.4, §7) -----
 *
 * An observer accumulates the statistics of the tensors it is shown and turns
 * them into qparams. Every observed batch contributes its min and max, both
 * clamped to include 0 (SPEC §3.2.1). Non-finite values (NaN, +-Inf) are
 * ignored by every calculator and counted (kiln_observer_nonfinite).
 *   static          the range of the last observed batch;
 *   moving_average  first batch sets the running range, later ones do
 *                   running = c*x + (1-c)*running (float32, c = ma_constant,
 *                   0.01 when 0);
 *   global_minmax   min of mins, max of maxes;
 *   hist_mse        (kiln) a histogram of every value; the clipping range
 *                   that minimises the estimated quantization MSE;
 *   hist_percentile (kiln) a histogram; the range that keeps `percentile` %
 *                   of the values (99.99 when 0).
 * Histogram method: two histograms of KILN_HIST_BINS bins each, one for
 * |x| of negative values and one for positive values, over [0, R] with one
 * common bound R; R starts at the first batch's max|x| rounded up to a power
 * of two and doubles when a larger value arrives (bins are merged in pairs,
 * so earlier counts are kept exactly, at half the resolution). Exact zeros
 * are not histogrammed: they are exactly representable with any scale and
 * zero point (zp is an integer), so they add no error whatever the range
 * (MSE), and they would otherwise let the zero border of padded feature maps
 * and dead ReLU outputs move percentiles. MSE: candidate ranges are bin edges
 * [-a, b] (symmetric schemes: a = b = T); the estimate is, per bin with
 * centre c and count n, n*(|c| - edge)^2 outside the range plus n*step^2/12
 * inside, step being the scale the candidate's qparams give. Percentile:
 * symmetric schemes clip at the p-th percentile of |x|; asymmetric at the
 * (100-p)-th and p-th percentiles of x (linear inside a bin), then include 0.
 */
#define KILN_HIST_BINS 2048

typedef struct kiln_observer kiln_observer;

kiln_status kiln_observer_create(const kiln_qspec *spec, kiln_observer **out);
void kiln_observer_destroy(kiln_observer *o);
/* Forget everything observed (the spec stays). */
void kiln_observer_reset(kiln_observer *o);
kiln_status kiln_observer_observe(kiln_observer *o, const float *data, size_t n);
/* The range the qparams come from (running range, or the chosen clipping
 * range for histograms). An observer that saw no finite value reports [0, 0]
 * (whose qparams have the floor scale 1.1920929e-07). */
kiln_status kiln_observer_range(const kiln_observer *o, float *min, float *max);
kiln_status kiln_observer_qparams(const kiln_observer *o, float *scale, int32_t *zp);
const kiln_qspec *kiln_observer_spec(const kiln_observer *o);
size_t kiln_observer_count(const kiln_observer *o);    /* batches observed   */
size_t kiln_observer_nonfinite(const kiln_observer *o); /* values ignored     */

/* Min and max of the finite values of x, both clamped to include 0 (so an
 * empty or all-non-finite input gives [0, 0]); returns how many values were
 * non-finite. AVX2 when available, bit-identical to the scalar reference. */
size_t kiln_minmax0(const float *x, size_t n, float *min, float *max);

/* ---- activation quantizer over a model (SPEC §3.4, §3.5) ----------------
 *
 * One observer per enabled activation site of a kiln_model (model.h). The
 * caller gives one spec per site (NULL exempts the site). ReLU sites follow
 * SPEC §3.5: with spec->asymmetric_relu they use uint8 asymmetric [0, 255]
 * (zero point 0, since their minimum is 0); otherwise the site's own spec
 * (int8 symmetric: codes 0..127). kiln_actquant_create knows a ReLU site by
 * the op that makes it (a plain relu node of the model's graph);
 * kiln_actquant_create_sites, which has only names, by a name ending in
 * ".relu".
 * Modes: OFF (hook does nothing), CALIBRATE (observers see each site's buffer;
 * values unchanged), QUANTIZE (frozen qparams; fake quantization in place).
 * kiln_actquant_freeze computes every enabled site's qparams from its
 * observer; QUANTIZE requires frozen qparams. Buffers given to the hook may
 * include the zero border of padded feature maps: harmless to min/max (0 is
 * always in range), to fake quantization (0 maps to 0), and to histograms
 * (zeros are not histogrammed, see above).
 * Threading: CALIBRATE mutates the observers, so one forward pass at a time;
 * QUANTIZE only reads and may serve concurrent passes (model clones).
 * Ownership: the actquant copies the specs and site names; it does not keep
 * the model. */
typedef enum kiln_aq_mode {
    KILN_AQ_OFF = 0,
    KILN_AQ_CALIBRATE,
    KILN_AQ_QUANTIZE,
} kiln_aq_mode;

typedef struct kiln_actquant kiln_actquant;
struct kiln_model;     /* model.h */
struct kiln_site_hook; /* model.h */

kiln_status kiln_actquant_create(const struct kiln_model *m, const kiln_qspec *const *site_specs,
                                 kiln_actquant **out);
/* The same, from a site count and names (no model needed: tests, artifacts). */
kiln_status kiln_actquant_create_sites(size_t n_sites, const char *const *names,
                                       const kiln_qspec *const *site_specs, kiln_actquant **out);
void kiln_actquant_destroy(kiln_actquant *aq);
kiln_status kiln_actquant_set_mode(kiln_actquant *aq, kiln_aq_mode mode);
kiln_aq_mode kiln_actquant_mode(const kiln_actquant *aq);
/* Compute and freeze every enabled site's qparams and switch to QUANTIZE
 * (SPEC §3.4: after calibration observers are off, fake quantization on). */
kiln_status kiln_actquant_freeze(kiln_actquant *aq);
int kiln_actquant_frozen(const kiln_actquant *aq);
/* Set one site's frozen qparams directly (an artifact read back); the
 * actquant counts as frozen once every enabled site was set or frozen. */
kiln_status kiln_actquant_site_set(kiln_actquant *aq, size_t site, float scale, int32_t zp,
                                   int qmin, int qmax);
/* Fill *hook with the hook to pass to kiln_model_forward (fn =
 * kiln_actquant_on_site, ctx = aq). */
void kiln_actquant_hook(kiln_actquant *aq, struct kiln_site_hook *hook);
/* The hook function itself (for callers chaining hooks; ctx is the
 * kiln_actquant). Returns non-zero, aborting the pass, only when the site
 * index is out of range or the actquant is in QUANTIZE mode without frozen
 * qparams; kiln_errmsg() then says why. */
int kiln_actquant_on_site(void *ctx, size_t site, float *data, size_t n);

size_t kiln_actquant_site_count(const kiln_actquant *aq);
const char *kiln_actquant_site_name(const kiln_actquant *aq, size_t site);
int kiln_actquant_site_enabled(const kiln_actquant *aq, size_t site);
/* The spec the site really uses (after the ReLU rule), NULL when exempt. */
const kiln_qspec *kiln_actquant_site_spec(const kiln_actquant *aq, size_t site);
/* Frozen qparams (KILN_ERR_INVALID when exempt or not frozen). */
kiln_status kiln_actquant_site_qparams(const kiln_actquant *aq, size_t site, float *scale,
                                       int32_t *zp, int *qmin, int *qmax);
/* Observer range and observation count (0 for an exempt site). */
kiln_status kiln_actquant_site_range(const kiln_actquant *aq, size_t site, float *min,
                                     float *max);
size_t kiln_actquant_site_observations(const kiln_actquant *aq, size_t site);

/* ---- internal: kernels exposed for their tests --------------------------- */
int kiln__cpu_avx2(void); /* AVX2+FMA usable (and not disabled by KILN_NO_AVX2=1) */
void kiln__fake_quant_scalar(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                             int multiply_by_inverse);
void kiln__fake_quant_avx2(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                           int multiply_by_inverse);
size_t kiln__minmax0_scalar(const float *x, size_t n, float *min, float *max);
size_t kiln__minmax0_avx2(const float *x, size_t n, float *min, float *max);
/* AVX-512 F/BW/DQ/VL usable (and not disabled by KILN_NO_AVX512=1; valgrind
 * cannot run AVX-512). The AVX-512 kernels are bit-identical to the scalar
 * ones; kiln_fake_quant and kiln_minmax0 prefer them. */
int kiln__cpu_avx512(void);
void kiln__fake_quant_avx512(float *x, size_t n, float scale, int32_t zp, int qmin, int qmax,
                             int multiply_by_inverse);
size_t kiln__minmax0_avx512(const float *x, size_t n, float *min, float *max);

#endif

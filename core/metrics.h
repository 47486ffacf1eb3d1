/*
 * metrics.h — image quality metrics of SPEC §2.
 *
 * sr is the network output as float CHW (3 x h x w, unclamped); hr is the
 * ground truth, at least as large, cropped top-left to the SR size. By
 * default (zeroed kiln_metric_opts) PSNR is computed on RGB in [0,1] with SR
 * clamped to [0,1], no shave, no rounding: PSNR = 10 log10(1 / MSE), with
 * MSE accumulated in double. MSE == 0 gives +inf.
 */
#ifndef KILN_METRICS_H
#define KILN_METRICS_H

#include "image.h"
#include "status.h"

typedef enum kiln_metric {
    KILN_METRIC_PSNR = 0, /* RGB */
    KILN_METRIC_PSNR_Y,   /* BT.601 luma: Y = (65.738R + 129.057G + 25.064B)/256 + 16/255 */
    KILN_METRIC_SSIM,     /* on Y when y_channel... see below; Gaussian 11x11, sigma 1.5 */
} kiln_metric;

typedef struct kiln_metric_opts {
    kiln_metric metric;
    int shave;     /* pixels removed from every border before comparing */
    int round8;    /* round SR to 8-bit levels (round(v*255)/255) first */
} kiln_metric_opts;

kiln_status kiln_metric_parse(const char *s, kiln_metric *out); /* "psnr"|"psnr-y"|"ssim" */
const char *kiln_metric_name(kiln_metric m);

/* Score of one image (dB for PSNR, [.., 1] for SSIM). SSIM is computed on the
 * Y channel (BT.601, scaled to [0,255], C1 = (0.01*255)^2, C2 = (0.03*255)^2)
 * over the valid region of the 11x11 Gaussian window, as in the usual SR
 * evaluation scripts. */
kiln_status kiln_metric_score(const kiln_metric_opts *opts, const float *sr, int w, int h,
                              const kiln_image *hr, double *out);

#endif

/*
 * dataset.h — benchmark datasets on disk.
 *
 * Layout (EDSR benchmark.tar): DIR/HR/<id>.png and DIR/LR_bicubic/X<s>/<id>x<s>.png.
 * Images are sorted by HR file name byte-wise (strcmp). A folder with only
 * HR/ (or LR missing for the requested scale) is accepted: LR images are then
 * made on the fly by kiln_image_downscale (MATLAB-compatible bicubic).
 * Split: the first `calib` images (default 20) calibrate, the rest evaluate.
 */
#ifndef KILN_DATASET_H
#define KILN_DATASET_H

#include <stddef.h>

#include "image.h"
#include "status.h"

#define KILN_DATASET_MAX_IMAGES 100000

typedef struct kiln_dataset kiln_dataset;

typedef enum kiln_split {
    KILN_SPLIT_ALL = 0,
    KILN_SPLIT_CALIB,
    KILN_SPLIT_EVAL,
} kiln_split;

/* Open DIR for scale s (2..8). Fails with KILN_ERR_NOT_FOUND when DIR/HR has no PNG. */
kiln_status kiln_dataset_open(const char *dir, int scale, kiln_dataset **out);
void kiln_dataset_close(kiln_dataset *ds);

size_t kiln_dataset_count(const kiln_dataset *ds);
int kiln_dataset_scale(const kiln_dataset *ds);
/* 1 when LR files exist for every image, 0 when LR is made from HR. */
int kiln_dataset_has_lr(const kiln_dataset *ds);
/* HR file name of image i ("101085.png"). */
const char *kiln_dataset_name(const kiln_dataset *ds, size_t i);

/* Index range [*first, *first + *count) of a split, with `calib` calibration
 * images (clamped to the dataset size). */
void kiln_dataset_split(const kiln_dataset *ds, kiln_split split, size_t calib,
                        size_t *first, size_t *count);
kiln_status kiln_split_parse(const char *s, kiln_split *out); /* "calib"|"eval"|"all" */

/* Load image i: LR (read, or made from HR) and HR. Either pointer may be NULL. */
kiln_status kiln_dataset_load(const kiln_dataset *ds, size_t i, kiln_image *lr, kiln_image *hr);

#endif

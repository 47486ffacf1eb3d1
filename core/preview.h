/*
 * preview.h — side-by-side crops of one image, for the dashboard's job detail
 * (the image behind GET /v1/jobs/{id}/preview?image=…&x=…&y=…&size=…).
 *
 * The preview is one PNG of four square panels, left to right, separated by
 * KILN_PREVIEW_GAP columns of mid grey:
 *   1. HR ground truth,
 *   2. the FP32 checkpoint's SR output,
 *   3. the compressed artifact's SR output,
 *   4. |FP32 - compressed| per channel on the 8-bit outputs, multiplied by
 *      KILN_PREVIEW_DIFF_GAIN (8) and saturated at 255 — black means the two
 *      outputs agree, a bright pixel differs by >= 32 levels.
 * Each panel is the region [x, x+size) x [y, y+size) of the SR-resolution
 * image (the LR input times the model's scale), at 1:1 pixels.
 *
 * Parameters: size must be in [1, KILN_PREVIEW_MAX_SIZE]; it is clamped to
 * the image's smaller side. x and y must be >= 0 and the region must fit in
 * the image (x + size <= width); otherwise KILN_ERR_INVALID naming the
 * parameter. An unknown image name is KILN_ERR_NOT_FOUND.
 */
#ifndef KILN_PREVIEW_H
#define KILN_PREVIEW_H

#include <stddef.h>

#include "image.h"
#include "status.h"

#define KILN_PREVIEW_MAX_SIZE 512
#define KILN_PREVIEW_DIFF_GAIN 8
#define KILN_PREVIEW_GAP 4
#define KILN_PREVIEW_GAP_LEVEL 128

/* Render the preview PNG (malloc'ed into *png, freed by the caller with free()).
 * image_name is the HR file name ("3096.png"; the ".png" may be omitted).
 * threads <= 0 uses every CPU. Only the LR region the crop depends on (plus
 * the network's receptive field) is run through the two networks, so the
 * cost does not grow with the image size. */
kiln_status kiln_preview_render(const char *checkpoint_path, const char *artifact_path,
                                const char *dataset_dir, const char *image_name, int x, int y,
                                int size, int threads, void **png, size_t *png_len);

/* The composition step alone: crop (x, y, size) from hr, fp32 and comp
 * (images of at least x+size by y+size pixels) and lay out the four panels in
 * out (allocated here; kiln_image_free releases it). */
kiln_status kiln_preview_compose(const kiln_image *hr, const kiln_image *fp32,
                                 const kiln_image *comp, int x, int y, int size, kiln_image *out);

#endif

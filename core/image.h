/*
 * image.h — 8-bit RGB images, PNG input/output (libpng), MATLAB-compatible
 * bicubic downscaling, and conversion to/from the network's float layout.
 *
 * kiln_image is interleaved RGB (HWC, 3 bytes per pixel, row-major, no row
 * padding). PNG reading accepts 8-bit RGB, gray (expanded to RGB), palette
 * (expanded), gray+alpha and RGBA (alpha dropped: kiln_png_read reports it
 * through *warn so the caller can print a warning). 16-bit PNGs are converted
 * to 8 bits by rounding (v*255 + 32767) / 65535 and reported through *warn.
 * Images wider or taller than KILN_IMAGE_MAX_DIM or with more than
 * KILN_IMAGE_MAX_PIXELS pixels are refused with KILN_ERR_LIMIT before any
 * pixel data is decoded (decompression bombs).
 */
#ifndef KILN_IMAGE_H
#define KILN_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define KILN_IMAGE_MAX_DIM 16384
#define KILN_IMAGE_MAX_PIXELS ((size_t)64 << 20) /* 64 Mpx */

typedef struct kiln_image {
    int w, h;
    uint8_t *rgb; /* w * h * 3 bytes, owned */
} kiln_image;

/* Flags set in *warn by the PNG reader (warn may be NULL). */
enum {
    KILN_PNG_WARN_ALPHA_DROPPED = 1,
    KILN_PNG_WARN_16BIT_CONVERTED = 2,
};

kiln_status kiln_image_alloc(kiln_image *img, int w, int h); /* zeroed */
void kiln_image_free(kiln_image *img);

kiln_status kiln_png_read(const char *path, kiln_image *out, int *warn);
kiln_status kiln_png_read_mem(const void *buf, size_t len, kiln_image *out, int *warn);
kiln_status kiln_png_write(const char *path, const kiln_image *img);
/* Encode to a malloc'ed buffer (*out_buf freed by the caller with free()). */
kiln_status kiln_png_write_mem(const kiln_image *img, void **out_buf, size_t *out_len);

/* uint8 HWC -> float CHW in [0,1] (v / 255). chw has 3*w*h floats. */
void kiln_image_to_chw(const kiln_image *img, float *chw);
/* float CHW -> uint8 HWC: clamp to [0,1], then round(v*255) half away from zero. */
kiln_status kiln_image_from_chw(kiln_image *img, const float *chw, int w, int h);

/* MATLAB imresize(img, 1/scale, 'bicubic') (SPEC §2): Keys a = -0.5,
 * antialiasing kernel width 4*scale, symmetric boundary, rows first then
 * columns, uint8 rounding (half away from zero) after each pass. The input is
 * first cropped (top-left) to a multiple of scale. scale in 2..8. */
kiln_status kiln_image_downscale(const kiln_image *hr, int scale, kiln_image *lr);

#endif

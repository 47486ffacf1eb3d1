/*
 * tile.h — tiled inference: run a network on images of any size in bounded memory.
 *
 * An untiled forward pass keeps about ten feature maps of the whole image
 * (for EDSR-baseline x2 roughly 3 GB per LR megapixel: four 64-channel maps
 * at LR size, the 256-channel upsampler output, the 64-channel pixel-shuffle
 * output at SR size). kiln_forward_tiled cuts the LR image into tiles of at
 * most `tile` x `tile` pixels, runs each tile with a halo of
 * kiln_tile_halo(m) LR pixels of context on every side (cropped where the
 * tile meets the image border), and copies the valid interior of each tile's
 * SR output into the full SR image. Memory then grows with the tile, not the
 * image.
 *
 * Exactness: a k x k conv makes an output pixel depend on (k-1)/2 more pixels
 * on each side at its own resolution: one LR pixel for a 3x3 conv at LR size,
 * half of one after a x2 upsampler. The halo is that receptive-field radius
 * in LR pixels, rounded up (kiln_graph_halo: 36 for EDSR-baseline x2, 8 for
 * the R=2 x4 fixture), and inside it the tile's artificial zero padding never
 * reaches a valid pixel. A network with a global average pool (RCAN-style
 * channel attention) has no such radius: every output pixel depends on the
 * whole image, so explicit tiling is refused and the _auto functions run it
 * untiled. At a real
 * image border the tile's padding *is* the image's padding. Hence:
 *   - with a direct convolution (KILN_IMPL_REFERENCE, KILN_IMPL_AVX2), which
 *     computes each output pixel with the same instructions whatever its
 *     position, the tiled output is bit-identical to the untiled one;
 *   - with KILN_IMPL_WINOGRAD the 4x4 output tiles of the transform sit at
 *     positions relative to the tile origin, so rounding differs slightly
 *     (tests/test_tile.c bounds it).
 *
 * Hooks: the hook is called once per site per *tile*, on the tile's tensor.
 * That is valid for elementwise hooks with fixed parameters — the
 * fake-quantization hook of a finalized artifact (frozen qparams) — but NOT
 * for calibration observers, whose min/max/histograms would see each tile
 * separately (and the halo twice): calibrate untiled.
 *
 * Memory: the caller owns lr and sr (3 x h*s x w*s floats, CHW, as
 * kiln_model_forward); tile buffers are allocated and freed per call. The
 * model keeps its working maps at the largest input it has seen, so a model
 * that already ran a huge untiled image keeps that memory.
 */
#ifndef KILN_TILE_H
#define KILN_TILE_H

#include "image.h"
#include "model.h"
#include "pool.h"
#include "runner.h"
#include "status.h"

/* Default valid tile side (LR pixels) when tile <= 0. With EDSR's 36-pixel halo
 * a 256 tile computes (256+72)^2/256^2 = 1.64x the pixels of the interior in
 * the worst case and needs about 0.35 GB of working maps. */
#define KILN_TILE_DEFAULT 256
/* kiln_forward_auto runs tiled above this many LR pixels (0.25 Mpx, about
 * 0.8 GB of working maps untiled for EDSR-baseline). */
#define KILN_TILE_AUTO_PIXELS ((size_t)250000)

/* LR pixels of context one SR pixel needs on each side (kiln_graph_halo);
 * -1 for a network with a global pool. */
int kiln_tile_halo(const kiln_model *m);

/* Forward pass in tiles of at most tile x tile LR pixels (tile <= 0:
 * KILN_TILE_DEFAULT). sr receives 3 x (h*s) x (w*s) floats, CHW, unclamped.
 * hook: see above (elementwise hooks only). pool may be NULL. */
kiln_status kiln_forward_tiled(kiln_model *m, const kiln_image *lr, float *sr, kiln_pool *pool,
                               const kiln_site_hook *hook, int tile);

/* kiln_model_forward for inputs of at most KILN_TILE_AUTO_PIXELS pixels,
 * kiln_forward_tiled with the default tile above. */
kiln_status kiln_forward_auto(kiln_model *m, const kiln_image *lr, float *sr, kiln_pool *pool,
                              const kiln_site_hook *hook);

/* The same for a runner, whatever its engine (FP32 checkpoint, SIMULATE with
 * its fake-quant hook, INT8 — whose requantization is elementwise with frozen
 * qparams and whose integer convolutions are exact, so tiling is exact
 * there too): kiln_runner_forward per tile. What `kiln upscale` should call
 * in place of kiln_runner_forward. */
kiln_status kiln_runner_forward_tiled(kiln_runner *r, const kiln_image *lr, float *sr, kiln_pool *pool,
                                      int tile);
kiln_status kiln_runner_forward_auto(kiln_runner *r, const kiln_image *lr, float *sr, kiln_pool *pool);

/* The tiling loop itself, over any forward function that maps an LR image
 * to 3 x (h*scale) x (w*scale) floats and whose output pixels depend on at
 * most `halo` LR pixels on each side. */
typedef kiln_status (*kiln_tile_forward_fn)(void *ctx, const kiln_image *lr, float *sr, kiln_pool *pool);
kiln_status kiln_tile_run(kiln_tile_forward_fn fn, void *ctx, int scale, int halo, const kiln_image *lr,
                          float *sr, kiln_pool *pool, int tile);

#endif

/*
 * tile.c — tiled inference (design and exactness argument in tile.h).
 *
 * Layout of the work: the LR image is split into nx x ny tiles of nearly
 * equal size (boundaries at i*W/nx, so no sliver of a last tile); each tile's
 * input is its valid rectangle grown by the halo and clipped to the image.
 * Tiles run one after another through kiln_model_forward (the pool
 * parallelises inside each conv, as for a whole image), so peak memory is one
 * tile's working maps + one tile's SR output + the caller's SR image.
 *
 * Invariants: valid rectangles partition the LR image, so every SR pixel is
 * written exactly once; an SR pixel is copied only from a tile whose input
 * covers its whole receptive field or reaches the real image border on that
 * side.
 *
 * The loop (kiln_tile_run) takes any forward function, so the FP32 model,
 * the simulated artifact (model + fake-quant hook) and the INT8 engine
 * (through kiln_runner_forward) share it.
 *
 * Halo: the graph's receptive-field radius in LR pixels (kiln_graph_halo:
 * each k x k conv adds (k-1)/2 pixels of its tensor's resolution, i.e.
 * (k-1)/2 / sfac LR pixels, rounded up once at the end; for EDSR-baseline
 * x2 that is 36). A network with a global average pool (RCAN's channel
 * attention) has none: every output pixel depends on the whole image, so
 * explicit tiling is refused and the _auto functions run such a network
 * untiled, whatever the image size.
 *
 * Memory: the LR crop and the tile's SR buffer are allocated once per call at
 * the largest tile's size and freed before returning; nothing is retained.
 */
#include "tile.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int kiln_tile_halo(const kiln_model *m) { return kiln_graph_halo(kiln_model_graph(m)); }

/* The refusal for a network whose output pixels see the whole image. */
static kiln_status no_halo(const kiln_model *m)
{
    return kiln_fail(KILN_ERR_UNSUPPORTED,
                     "tile: %s has a global average pool, so every output pixel depends on the whole image: it "
                     "cannot run in tiles (run it untiled)", kiln_model_describe(m));
}

static int imin(int a, int b) { return a < b ? a : b; }
static int imax(int a, int b) { return a > b ? a : b; }

kiln_status kiln_tile_run(kiln_tile_forward_fn fn, void *ctx, int scale, int halo, const kiln_image *lr,
                          float *sr, kiln_pool *pool, int tile)
{
    if (!fn || !lr || !sr) return kiln_fail(KILN_ERR_INVALID, "tile: NULL forward function, image or output");
    if (lr->w < 1 || lr->h < 1 || !lr->rgb)
        return kiln_fail(KILN_ERR_INVALID, "tile: empty input image %dx%d", lr->w, lr->h);
    if (scale < 1 || halo < 0)
        return kiln_fail(KILN_ERR_INVALID, "tile: scale %d / halo %d out of range", scale, halo);
    if (tile <= 0) tile = KILN_TILE_DEFAULT;
    const int W = lr->w, H = lr->h, s = scale;
    const int nx = (W + tile - 1) / tile, ny = (H + tile - 1) / tile;
    if (nx == 1 && ny == 1) return fn(ctx, lr, sr, pool);

    /* Largest valid tile: ceil(W/nx) <= tile; its input adds the halo twice. */
    const int mw = imin(W, (W + nx - 1) / nx + 2 * halo), mh = imin(H, (H + ny - 1) / ny + 2 * halo);
    kiln_image crop = {0};
    kiln_status st = kiln_image_alloc(&crop, mw, mh);
    if (st != KILN_OK) return st;
    const size_t tsr_n = (size_t)3 * mw * s * mh * s;
    float *tsr = malloc(tsr_n * sizeof(float));
    if (!tsr) {
        kiln_image_free(&crop);
        return kiln_fail(KILN_ERR_NOMEM, "tile: cannot allocate a %dx%d tile output", mw * s, mh * s);
    }
    const size_t SW = (size_t)W * s, SH = (size_t)H * s;
    for (int ty = 0; st == KILN_OK && ty < ny; ty++) {
        const int vy0 = (int)((long long)ty * H / ny), vy1 = (int)((long long)(ty + 1) * H / ny);
        const int iy0 = imax(0, vy0 - halo), iy1 = imin(H, vy1 + halo);
        for (int tx = 0; st == KILN_OK && tx < nx; tx++) {
            const int vx0 = (int)((long long)tx * W / nx), vx1 = (int)((long long)(tx + 1) * W / nx);
            const int ix0 = imax(0, vx0 - halo), ix1 = imin(W, vx1 + halo);
            /* The crop buffer holds mw*mh pixels; this tile uses a prefix. */
            crop.w = ix1 - ix0;
            crop.h = iy1 - iy0;
            for (int y = 0; y < crop.h; y++)
                memcpy(crop.rgb + (size_t)y * crop.w * 3,
                       lr->rgb + ((size_t)(iy0 + y) * W + ix0) * 3, (size_t)crop.w * 3);
            st = fn(ctx, &crop, tsr, pool);
            if (st != KILN_OK) {
                kiln_errmsg_prefix("tile (%d,%d) of %dx%d: ", tx, ty, nx, ny);
                break;
            }
            const size_t tw = (size_t)crop.w * s, th = (size_t)crop.h * s;
            const size_t ox = (size_t)(vx0 - ix0) * s, oy = (size_t)(vy0 - iy0) * s;
            const size_t cw = (size_t)(vx1 - vx0) * s, chh = (size_t)(vy1 - vy0) * s;
            for (int c = 0; c < 3; c++)
                for (size_t y = 0; y < chh; y++)
                    memcpy(sr + ((size_t)c * SH + (size_t)vy0 * s + y) * SW + (size_t)vx0 * s,
                           tsr + ((size_t)c * th + oy + y) * tw + ox, cw * sizeof(float));
        }
    }
    /* Restore the allocation's real shape so kiln_image_free sees what it made. */
    crop.w = mw;
    crop.h = mh;
    kiln_image_free(&crop);
    free(tsr);
    return st;
}

typedef struct model_ctx {
    kiln_model *m;
    const kiln_site_hook *hook;
} model_ctx;

static kiln_status model_fn(void *ctx, const kiln_image *lr, float *sr, kiln_pool *pool)
{
    model_ctx *c = ctx;
    return kiln_model_forward(c->m, lr, sr, pool, c->hook);
}

kiln_status kiln_forward_tiled(kiln_model *m, const kiln_image *lr, float *sr, kiln_pool *pool,
                               const kiln_site_hook *hook, int tile)
{
    if (!m) return kiln_fail(KILN_ERR_INVALID, "tile: NULL model");
    const int halo = kiln_tile_halo(m);
    if (halo < 0) return no_halo(m);
    model_ctx c = {m, hook};
    return kiln_tile_run(model_fn, &c, kiln_model_scale(m), halo, lr, sr, pool, tile);
}

kiln_status kiln_forward_auto(kiln_model *m, const kiln_image *lr, float *sr, kiln_pool *pool,
                              const kiln_site_hook *hook)
{
    if (!m || !lr || !sr) return kiln_fail(KILN_ERR_INVALID, "forward: NULL model, image or output");
    if ((size_t)lr->w * (size_t)lr->h > KILN_TILE_AUTO_PIXELS && kiln_tile_halo(m) >= 0)
        return kiln_forward_tiled(m, lr, sr, pool, hook, KILN_TILE_DEFAULT);
    return kiln_model_forward(m, lr, sr, pool, hook);
}

static kiln_status runner_fn(void *ctx, const kiln_image *lr, float *sr, kiln_pool *pool)
{
    return kiln_runner_forward(ctx, lr, sr, pool);
}

kiln_status kiln_runner_forward_tiled(kiln_runner *r, const kiln_image *lr, float *sr, kiln_pool *pool,
                                      int tile)
{
    if (!r) return kiln_fail(KILN_ERR_INVALID, "tile: NULL runner");
    /* Every engine runs the graph of kiln_runner_model(r). */
    const kiln_model *m = kiln_runner_model(r);
    const int halo = kiln_tile_halo(m);
    if (halo < 0) return no_halo(m);
    return kiln_tile_run(runner_fn, r, kiln_model_scale(m), halo, lr, sr, pool, tile);
}

kiln_status kiln_runner_forward_auto(kiln_runner *r, const kiln_image *lr, float *sr, kiln_pool *pool)
{
    if (!r || !lr || !sr) return kiln_fail(KILN_ERR_INVALID, "forward: NULL runner, image or output");
    if ((size_t)lr->w * (size_t)lr->h > KILN_TILE_AUTO_PIXELS && kiln_tile_halo(kiln_runner_model(r)) >= 0)
        return kiln_runner_forward_tiled(r, lr, sr, pool, KILN_TILE_DEFAULT);
    return kiln_runner_forward(r, lr, sr, pool);
}

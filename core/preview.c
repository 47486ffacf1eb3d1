/*
 * preview.c — the four-panel crop preview (HR | FP32 | compressed | diff x8).
 *
 * What: open the checkpoint and the artifact as runners, load one dataset
 * image, run both networks on the LR region the requested SR crop depends
 * on, and compose the panels into one PNG (layout in preview.h).
 *
 * Why only a region: these networks are stacks of convolutions, so an SR
 * pixel depends only on LR pixels within its receptive field, whose radius
 * is the graph's halo (kiln_graph_halo; 36 LR pixels for EDSR-baseline x2).
 * Running the networks on the crop plus that margin and one pixel more
 * (clamped to the image: where the margin hits the real border, the zero
 * padding is the same as on the full image) gives the same output as the
 * full image at a fraction of the cost; tests/test_preview.c checks that
 * against a full-image run. A network with a global average pool has no
 * halo (every pixel sees the whole image): it runs on the whole image.
 *
 * The artifact must be a compressed form of the checkpoint: the same scale,
 * the same convs (graph weights) and the same activation sites, by name.
 *
 * Memory: every buffer is owned here and freed before returning; the PNG is
 * handed to the caller (free()).
 */
#include "preview.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "pool.h"
#include "runner.h"

/* Same network: convs and sites, by count and name. */
static kiln_status same_network(const kiln_model *a, const kiln_model *b)
{
    size_t nc = kiln_model_conv_count(a), ns = kiln_model_site_count(a);
    if (kiln_model_conv_count(b) != nc || kiln_model_site_count(b) != ns)
        return kiln_fail(KILN_ERR_INVALID, "preview: the artifact (%zu convs, %zu sites) is not a compressed form of "
                         "the checkpoint (%zu convs, %zu sites)", kiln_model_conv_count(b), kiln_model_site_count(b), nc,
                         ns);
    for (size_t i = 0; i < nc; i++)
        if (strcmp(kiln_model_conv_name(a, i), kiln_model_conv_name(b, i)) != 0)
            return kiln_fail(KILN_ERR_INVALID, "preview: conv %zu is %s in the artifact, %s in the checkpoint", i,
                             kiln_model_conv_name(b, i), kiln_model_conv_name(a, i));
    for (size_t i = 0; i < ns; i++)
        if (strcmp(kiln_model_site_name(a, i), kiln_model_site_name(b, i)) != 0)
            return kiln_fail(KILN_ERR_INVALID, "preview: activation site %zu is %s in the artifact, %s in the checkpoint",
                             i, kiln_model_site_name(b, i), kiln_model_site_name(a, i));
    return KILN_OK;
}

/* Copy the w x h region at (x, y) of src (which must contain it) into out. */
static kiln_status crop(const kiln_image *src, int x, int y, int w, int h, kiln_image *out)
{
    kiln_status st = kiln_image_alloc(out, w, h);
    if (st != KILN_OK) return st;
    for (int r = 0; r < h; r++)
        memcpy(out->rgb + (size_t)r * w * 3, src->rgb + ((size_t)(y + r) * src->w + x) * 3,
               (size_t)w * 3);
    return KILN_OK;
}

kiln_status kiln_preview_compose(const kiln_image *hr, const kiln_image *fp32,
                                 const kiln_image *comp, int x, int y, int size, kiln_image *out)
{
    if (!hr || !fp32 || !comp || !out)
        return kiln_fail(KILN_ERR_INVALID, "preview: NULL image");
    if (size < 1 || size > KILN_PREVIEW_MAX_SIZE)
        return kiln_fail(KILN_ERR_INVALID, "preview: size %d is outside [1, %d]", size,
                         KILN_PREVIEW_MAX_SIZE);
    if (x < 0) return kiln_fail(KILN_ERR_INVALID, "preview: x %d is negative", x);
    if (y < 0) return kiln_fail(KILN_ERR_INVALID, "preview: y %d is negative", y);
    const kiln_image *im[3] = {hr, fp32, comp};
    static const char *const what[3] = {"hr", "fp32", "compressed"};
    for (int i = 0; i < 3; i++) {
        if (x + size > im[i]->w)
            return kiln_fail(KILN_ERR_INVALID, "preview: x %d + size %d exceeds the %s image width %d",
                             x, size, what[i], im[i]->w);
        if (y + size > im[i]->h)
            return kiln_fail(KILN_ERR_INVALID, "preview: y %d + size %d exceeds the %s image height %d",
                             y, size, what[i], im[i]->h);
    }
    int W = 4 * size + 3 * KILN_PREVIEW_GAP;
    kiln_status st = kiln_image_alloc(out, W, size);
    if (st != KILN_OK) return st;
    memset(out->rgb, KILN_PREVIEW_GAP_LEVEL, (size_t)W * size * 3);
    for (int r = 0; r < size; r++) {
        uint8_t *row = out->rgb + (size_t)r * W * 3;
        for (int p = 0; p < 3; p++)
            memcpy(row + (size_t)p * (size + KILN_PREVIEW_GAP) * 3,
                   im[p]->rgb + ((size_t)(y + r) * im[p]->w + x) * 3, (size_t)size * 3);
        const uint8_t *a = fp32->rgb + ((size_t)(y + r) * fp32->w + x) * 3;
        const uint8_t *b = comp->rgb + ((size_t)(y + r) * comp->w + x) * 3;
        uint8_t *d = row + (size_t)3 * (size + KILN_PREVIEW_GAP) * 3;
        for (int i = 0; i < size * 3; i++) {
            int v = abs((int)a[i] - (int)b[i]) * KILN_PREVIEW_DIFF_GAIN;
            d[i] = (uint8_t)(v > 255 ? 255 : v);
        }
    }
    return KILN_OK;
}

/* Index of image_name in ds (exact HR file name, or the name without ".png"). */
static kiln_status find_image(const kiln_dataset *ds, const char *image_name, size_t *idx)
{
    size_t n = kiln_dataset_count(ds), len = strlen(image_name);
    for (size_t i = 0; i < n; i++) {
        const char *nm = kiln_dataset_name(ds, i);
        if (strcmp(nm, image_name) == 0 ||
            (strncmp(nm, image_name, len) == 0 && strcmp(nm + len, ".png") == 0)) {
            *idx = i;
            return KILN_OK;
        }
    }
    return kiln_fail(KILN_ERR_NOT_FOUND, "preview: image \"%s\" is not in the dataset", image_name);
}

/* Run r on the LR crop and convert its output to 8 bits. */
static kiln_status run_crop(kiln_runner *r, const kiln_image *lr, kiln_pool *pool, int scale,
                            kiln_image *out)
{
    size_t n = (size_t)3 * lr->w * scale * lr->h * scale;
    float *sr = malloc(n * sizeof(float));
    if (!sr) return kiln_fail(KILN_ERR_NOMEM, "preview: cannot allocate %zu SR floats", n);
    kiln_status st = kiln_runner_forward(r, lr, sr, pool);
    if (st == KILN_OK) st = kiln_image_from_chw(out, sr, lr->w * scale, lr->h * scale);
    free(sr);
    return st;
}

kiln_status kiln_preview_render(const char *checkpoint_path, const char *artifact_path,
                                const char *dataset_dir, const char *image_name, int x, int y,
                                int size, int threads, void **png, size_t *png_len)
{
    if (!checkpoint_path || !artifact_path || !dataset_dir || !image_name || !png || !png_len)
        return kiln_fail(KILN_ERR_INVALID, "preview: NULL argument");
    *png = NULL;
    *png_len = 0;
    if (size < 1 || size > KILN_PREVIEW_MAX_SIZE)
        return kiln_fail(KILN_ERR_INVALID, "preview: size %d is outside [1, %d]", size,
                         KILN_PREVIEW_MAX_SIZE);
    if (x < 0) return kiln_fail(KILN_ERR_INVALID, "preview: x %d is negative", x);
    if (y < 0) return kiln_fail(KILN_ERR_INVALID, "preview: y %d is negative", y);

    kiln_runner *fp = NULL, *cq = NULL;
    kiln_dataset *ds = NULL;
    kiln_pool *pool = NULL;
    kiln_image lr = {0}, hr = {0}, lrc = {0}, hrc = {0}, sa = {0}, sb = {0}, out = {0};
    /* the artifact first: a multi-scale checkpoint opens at its scale */
    kiln_status st = kiln_runner_open(artifact_path, NULL, KILN_ENGINE_AUTO, &cq);
    if (st != KILN_OK) {
        kiln_errmsg_prefix("preview: artifact: ");
        goto done;
    }
    kiln_model_opts mo = {.scale = kiln_model_scale(kiln_runner_model(cq))};
    st = kiln_runner_open(checkpoint_path, &mo, KILN_ENGINE_AUTO, &fp);
    if (st != KILN_OK) {
        kiln_errmsg_prefix("preview: checkpoint: ");
        goto done;
    }
    int s = kiln_model_scale(kiln_runner_model(fp));
    if (kiln_model_scale(kiln_runner_model(cq)) != s) {
        st = kiln_fail(KILN_ERR_INVALID, "preview: artifact scale x%d differs from the checkpoint's x%d",
                       kiln_model_scale(kiln_runner_model(cq)), s);
        goto done;
    }
    if ((st = same_network(kiln_runner_model(fp), kiln_runner_model(cq))) != KILN_OK) goto done;
    st = kiln_dataset_open(dataset_dir, s, &ds);
    if (st != KILN_OK) goto done;
    size_t idx = 0;
    st = find_image(ds, image_name, &idx);
    if (st != KILN_OK) goto done;
    st = kiln_dataset_load(ds, idx, &lr, &hr);
    if (st != KILN_OK) goto done;

    /* The SR image is LR x s; an HR that is not a multiple of s is larger. */
    int W = lr.w * s < hr.w ? lr.w * s : hr.w, H = lr.h * s < hr.h ? lr.h * s : hr.h;
    if (size > W) size = W;
    if (size > H) size = H;
    if (x + size > W) {
        st = kiln_fail(KILN_ERR_INVALID, "preview: x %d + size %d exceeds the image width %d", x, size, W);
        goto done;
    }
    if (y + size > H) {
        st = kiln_fail(KILN_ERR_INVALID, "preview: y %d + size %d exceeds the image height %d", y, size, H);
        goto done;
    }

    /* the same graph (checked above): one halo; none = the whole image */
    int m = kiln_graph_halo(kiln_model_graph(kiln_runner_model(fp)));
    if (m < 0) m = lr.w > lr.h ? lr.w : lr.h;
    else m += 1;
    int lx0 = x / s - m, ly0 = y / s - m;
    int lx1 = (x + size + s - 1) / s + m, ly1 = (y + size + s - 1) / s + m;
    if (lx0 < 0) lx0 = 0;
    if (ly0 < 0) ly0 = 0;
    if (lx1 > lr.w) lx1 = lr.w;
    if (ly1 > lr.h) ly1 = lr.h;
    st = crop(&lr, lx0, ly0, lx1 - lx0, ly1 - ly0, &lrc);
    if (st == KILN_OK) st = kiln_pool_create(threads, &pool);
    if (st == KILN_OK) st = run_crop(fp, &lrc, pool, s, &sa);
    if (st == KILN_OK) st = run_crop(cq, &lrc, pool, s, &sb);
    /* HR cropped to the same SR-resolution window as the network outputs. */
    if (st == KILN_OK) {
        int hw = hr.w - lx0 * s < sa.w ? hr.w - lx0 * s : sa.w;
        int hh = hr.h - ly0 * s < sa.h ? hr.h - ly0 * s : sa.h;
        st = crop(&hr, lx0 * s, ly0 * s, hw, hh, &hrc);
    }
    if (st == KILN_OK) st = kiln_preview_compose(&hrc, &sa, &sb, x - lx0 * s, y - ly0 * s, size, &out);
    if (st == KILN_OK) st = kiln_png_write_mem(&out, png, png_len);

done:
    kiln_image_free(&out);
    kiln_image_free(&sa);
    kiln_image_free(&sb);
    kiln_image_free(&hrc);
    kiln_image_free(&lrc);
    kiln_image_free(&lr);
    kiln_image_free(&hr);
    kiln_pool_destroy(pool);
    kiln_dataset_close(ds);
    kiln_runner_close(cq);
    kiln_runner_close(fp);
    return st;
}

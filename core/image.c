/*
 * image.c — 8-bit RGB images: PNG decode/encode through libpng, and the
 * conversions to and from the network's float CHW layout.
 *
 * Decoding. Every PNG flavour is normalised to 8-bit interleaved RGB:
 * palette and low-bit gray are expanded, gray becomes RGB, alpha channels are
 * stripped and tRNS is ignored (both reported as KILN_PNG_WARN_ALPHA_DROPPED),
 * and 16-bit samples are converted by hand with the documented rounding
 * (v*255 + 32767) / 65535 (libpng's own scale_16 rounds slightly differently,
 * so it is not used). Interlaced images go through libpng's pass handling.
 *
 * Untrusted input. Dimensions are checked twice before any row is decoded:
 * the read callback peeks at IHDR as its bytes stream past (so even a
 * 100000x100000 header is refused with KILN_ERR_LIMIT before libpng looks at
 * it), and png_get_IHDR is checked again after png_read_info (which stops at
 * the first IDAT). libpng's own user limits, chunk cache limit and chunk
 * malloc limit bound what ancillary chunks (iCCP, zTXt, ...) may allocate.
 *
 * Error handling. libpng reports errors by longjmp. All resources of a
 * decode/encode live in a context struct owned by the caller of the function
 * that calls setjmp, so nothing that changes between setjmp and longjmp is a
 * local of the setjmp frame; the caller frees whatever the context holds.
 *
 * Memory: kiln_image owns its rgb buffer (malloc); kiln_image_free releases it
 * and zeroes the struct. On failure the output image is left zeroed.
 */
#include "image.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest single ancillary chunk libpng may allocate (ICC profiles are the
 * biggest legitimate ones, well under this). */
#define KILN__PNG_CHUNK_MALLOC_MAX ((png_alloc_size_t)8 << 20)
/* Largest number of ancillary chunks kept (sPLT, text, unknown). */
#define KILN__PNG_CHUNK_CACHE_MAX 128

kiln_status kiln_image_alloc(kiln_image *img, int w, int h)
{
    img->w = img->h = 0;
    img->rgb = NULL;
    if (w <= 0 || h <= 0)
        return kiln_fail(KILN_ERR_INVALID, "image: size %dx%d is not positive", w, h);
    if (w > KILN_IMAGE_MAX_DIM || h > KILN_IMAGE_MAX_DIM ||
        (size_t)w * (size_t)h > KILN_IMAGE_MAX_PIXELS)
        return kiln_fail(KILN_ERR_LIMIT, "image: size %dx%d exceeds the limit (%d per side, %zu pixels)",
                         w, h, KILN_IMAGE_MAX_DIM, KILN_IMAGE_MAX_PIXELS);
    uint8_t *p = calloc((size_t)w * (size_t)h, 3);
    if (!p) return kiln_fail(KILN_ERR_NOMEM, "image: cannot allocate %dx%d RGB", w, h);
    img->w = w;
    img->h = h;
    img->rgb = p;
    return KILN_OK;
}

void kiln_image_free(kiln_image *img)
{
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                  */

typedef struct kiln__png_rd {
    /* source: a memory buffer, or a FILE */
    const uint8_t *buf;
    size_t len, pos;
    FILE *fp;
    /* first 24 bytes seen (signature + IHDR length/type/width/height) */
    uint8_t head[24];
    size_t nread;
    size_t total;       /* bytes in the source (file size), for messages */
    uint32_t last_len;  /* length field of the last chunk header read */
    /* outcome */
    kiln_status st;     /* status to report when libpng longjmps */
    char msg[200];
    /* resources freed by the caller */
    png_structp png;
    png_infop info;
    uint8_t *tmp;       /* 16-bit rows, or one row */
    kiln_image img;
    int warn;
} kiln__png_rd;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void rd_error(png_structp png, png_const_charp msg)
{
    kiln__png_rd *rd = png_get_error_ptr(png);
    /* The first error wins: a limit found by the read callback must not be
     * overwritten by libpng's follow-up complaint. */
    if (rd->st == KILN_OK) {
        rd->st = KILN_ERR_FORMAT;
        snprintf(rd->msg, sizeof rd->msg, "%s", msg);
    }
    png_longjmp(png, 1);
}

static void rd_warning(png_structp png, png_const_charp msg)
{
    /* libpng reports an over-long chunk as a *benign* error (a warning by
     * default on read) and then allocates it anyway: a 100-byte file
     * claiming a 1.7 GB tEXt chunk would make it allocate 1.7 GB. That one is
     * escalated; the other warnings (bad ancillary CRC, odd sRGB profile, ...)
     * only skip the chunk, which is what we want. */
    if (strstr(msg, "chunk data is too large") != NULL) {
        kiln__png_rd *rd = png_get_error_ptr(png);
        if (rd->st == KILN_OK) {
            /* A length beyond the end of the input is damage, not a big file. */
            if (rd->total >= rd->pos && rd->last_len > rd->total - rd->pos) {
                rd->st = KILN_ERR_FORMAT;
                snprintf(rd->msg, sizeof rd->msg,
                         "truncated: %s chunk length %u runs past the end of the data", msg,
                         (unsigned)rd->last_len);
            } else {
                rd->st = KILN_ERR_LIMIT;
                snprintf(rd->msg, sizeof rd->msg, "%s (length %u, limit %zu bytes per chunk)",
                         msg, (unsigned)rd->last_len, (size_t)KILN__PNG_CHUNK_MALLOC_MAX);
            }
        }
        png_longjmp(png, 1);
    }
}

static void wr_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* the encoder only warns about things kiln never asks for */
}

/* Refuse oversized images as soon as IHDR's width and height have streamed
 * past, before libpng parses (and allocates for) them. */
static void rd_peek(png_structp png, kiln__png_rd *rd, const uint8_t *data, size_t n)
{
    size_t before = rd->nread;
    if (before >= sizeof rd->head) return;
    size_t take = n < sizeof rd->head - before ? n : sizeof rd->head - before;
    memcpy(rd->head + before, data, take);
    rd->nread += take;
    if (rd->nread < sizeof rd->head || memcmp(rd->head + 12, "IHDR", 4) != 0) return;
    uint32_t w = be32(rd->head + 16), h = be32(rd->head + 20);
    if (w > KILN_IMAGE_MAX_DIM || h > KILN_IMAGE_MAX_DIM ||
        (uint64_t)w * h > (uint64_t)KILN_IMAGE_MAX_PIXELS) {
        rd->st = KILN_ERR_LIMIT;
        snprintf(rd->msg, sizeof rd->msg,
                 "IHDR size %ux%u exceeds the limit (%d per side, %zu pixels)", (unsigned)w,
                 (unsigned)h, KILN_IMAGE_MAX_DIM, KILN_IMAGE_MAX_PIXELS);
        png_error(png, rd->msg);
    }
}

static void rd_read(png_structp png, png_bytep data, size_t n)
{
    kiln__png_rd *rd = png_get_io_ptr(png);
    if (rd->fp) {
        size_t got = fread(data, 1, n, rd->fp);
        if (got != n) {
            if (ferror(rd->fp)) {
                rd->st = KILN_ERR_IO;
                snprintf(rd->msg, sizeof rd->msg, "read error at offset %zu: %s",
                         rd->pos + got, strerror(errno));
            }
            png_error(png, "truncated: unexpected end of file");
        }
    } else {
        if (n > rd->len - rd->pos) png_error(png, "truncated: unexpected end of data");
        memcpy(data, rd->buf + rd->pos, n);
    }
    rd->pos += n;
    if (n == 8) rd->last_len = be32(data); /* libpng reads chunk headers 8 bytes at a time */
    rd_peek(png, rd, data, n);
}

static inline uint8_t u16_to_u8(unsigned v)
{
    return (uint8_t)((v * 255u + 32767u) / 65535u);
}

/* Runs between setjmp and png_read_end; all state lives in *rd. */
static void rd_decode(kiln__png_rd *rd)
{
    png_structp png = rd->png;
    png_infop info = rd->info;

    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (w == 0 || h == 0 || w > KILN_IMAGE_MAX_DIM || h > KILN_IMAGE_MAX_DIM ||
        (uint64_t)w * h > (uint64_t)KILN_IMAGE_MAX_PIXELS) {
        rd->st = KILN_ERR_LIMIT;
        snprintf(rd->msg, sizeof rd->msg, "IHDR size %ux%u exceeds the limit", (unsigned)w,
                 (unsigned)h);
        png_error(png, rd->msg);
    }

    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    if (ctype & PNG_COLOR_MASK_ALPHA) {
        png_set_strip_alpha(png);
        rd->warn |= KILN_PNG_WARN_ALPHA_DROPPED;
    }
    /* Palette/low-bit expansion turns tRNS into an alpha channel; strip it
     * like any other alpha (a no-op where no alpha results). */
    if (png_get_valid(png, info, PNG_INFO_tRNS)) {
        png_set_strip_alpha(png);
        rd->warn |= KILN_PNG_WARN_ALPHA_DROPPED;
    }
    if (depth == 16) rd->warn |= KILN_PNG_WARN_16BIT_CONVERTED;
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);

    size_t bps = depth == 16 ? 2 : 1; /* bytes per sample after the transforms */
    size_t rowbytes = (size_t)w * 3 * bps;
    if (png_get_rowbytes(png, info) != rowbytes || png_get_channels(png, info) != 3) {
        rd->st = KILN_ERR_INTERNAL;
        snprintf(rd->msg, sizeof rd->msg, "transformed row is %zu bytes, %u channels (want %zu, 3)",
                 (size_t)png_get_rowbytes(png, info), (unsigned)png_get_channels(png, info),
                 rowbytes);
        png_error(png, rd->msg);
    }

    /* Allocated only now, after both size checks. */
    if (kiln_image_alloc(&rd->img, (int)w, (int)h) != KILN_OK) {
        rd->st = KILN_ERR_NOMEM;
        snprintf(rd->msg, sizeof rd->msg, "cannot allocate %ux%u image", (unsigned)w, (unsigned)h);
        png_error(png, rd->msg);
    }
    uint8_t *out = rd->img.rgb;

    if (bps == 1) {
        /* Rows decode straight into the image; interlaced passes revisit them. */
        for (int p = 0; p < passes; p++)
            for (png_uint_32 y = 0; y < h; y++) png_read_row(png, out + (size_t)y * rowbytes, NULL);
    } else {
        /* Interlaced passes need the whole 16-bit image; progressive ones one row. */
        size_t rows = passes > 1 ? h : 1;
        rd->tmp = malloc(rows * rowbytes);
        if (!rd->tmp) {
            rd->st = KILN_ERR_NOMEM;
            snprintf(rd->msg, sizeof rd->msg, "cannot allocate 16-bit buffer for %ux%u",
                     (unsigned)w, (unsigned)h);
            png_error(png, rd->msg);
        }
        /* Not cleared: every pixel is written by the time the last pass
         * reaches its row, and clearing would touch the whole buffer even
         * for a tiny file that claims a huge size and then runs out of data. */
        for (int p = 0; p < passes; p++) {
            for (png_uint_32 y = 0; y < h; y++) {
                uint8_t *row = rd->tmp + (passes > 1 ? (size_t)y * rowbytes : 0);
                png_read_row(png, row, NULL);
                if (p == passes - 1) {
                    uint8_t *o = out + (size_t)y * w * 3;
                    for (size_t i = 0; i < (size_t)w * 3; i++)
                        o[i] = u16_to_u8((unsigned)row[2 * i] << 8 | row[2 * i + 1]);
                }
            }
        }
    }
    png_read_end(png, NULL);
}

static kiln_status rd_run(kiln__png_rd *rd, kiln_image *out, int *warn)
{
    memset(out, 0, sizeof *out);
    if (warn) *warn = 0;
    rd->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, rd, rd_error, rd_warning);
    if (!rd->png) return kiln_fail(KILN_ERR_NOMEM, "png: cannot create read struct");
    rd->info = png_create_info_struct(rd->png);
    if (!rd->info) {
        png_destroy_read_struct(&rd->png, NULL, NULL);
        return kiln_fail(KILN_ERR_NOMEM, "png: cannot create info struct");
    }
    png_set_read_fn(rd->png, rd, rd_read);
    png_set_user_limits(rd->png, KILN_IMAGE_MAX_DIM, KILN_IMAGE_MAX_DIM);
    png_set_chunk_cache_max(rd->png, KILN__PNG_CHUNK_CACHE_MAX);
    png_set_chunk_malloc_max(rd->png, KILN__PNG_CHUNK_MALLOC_MAX);

    int failed = 0;
    if (setjmp(png_jmpbuf(rd->png)) == 0)
        rd_decode(rd);
    else
        failed = 1;

    png_destroy_read_struct(&rd->png, &rd->info, NULL);
    free(rd->tmp);
    rd->tmp = NULL;
    if (failed) {
        kiln_image_free(&rd->img);
        kiln_status st = rd->st != KILN_OK ? rd->st : KILN_ERR_FORMAT;
        return kiln_fail(st, "png: %s (near byte offset %zu)", rd->msg, rd->pos);
    }
    *out = rd->img;
    if (warn) *warn = rd->warn;
    return KILN_OK;
}

kiln_status kiln_png_read_mem(const void *buf, size_t len, kiln_image *out, int *warn)
{
    kiln__png_rd rd;
    memset(&rd, 0, sizeof rd);
    if (!buf && len) return kiln_fail(KILN_ERR_INVALID, "png: NULL buffer of %zu bytes", len);
    rd.buf = buf;
    rd.len = len;
    rd.total = len;
    return rd_run(&rd, out, warn);
}

kiln_status kiln_png_read(const char *path, kiln_image *out, int *warn)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        int e = errno;
        return kiln_fail(e == ENOENT ? KILN_ERR_NOT_FOUND : KILN_ERR_IO, "%s: cannot open: %s",
                         path, strerror(e));
    }
    kiln__png_rd rd;
    memset(&rd, 0, sizeof rd);
    rd.fp = fp;
    struct stat sb;
    rd.total = fstat(fileno(fp), &sb) == 0 && S_ISREG(sb.st_mode) ? (size_t)sb.st_size : SIZE_MAX;
    kiln_status st = rd_run(&rd, out, warn);
    fclose(fp);
    if (st != KILN_OK) kiln_errmsg_prefix("%s: ", path);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                  */

typedef struct kiln__png_wr {
    uint8_t *buf;
    size_t len, cap;
    int nomem;
    char msg[200];
    png_structp png;
    png_infop info;
} kiln__png_wr;

static void wr_error(png_structp png, png_const_charp msg)
{
    kiln__png_wr *wr = png_get_error_ptr(png);
    if (!wr->msg[0]) snprintf(wr->msg, sizeof wr->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void wr_write(png_structp png, png_bytep data, size_t n)
{
    kiln__png_wr *wr = png_get_io_ptr(png);
    if (n > wr->cap - wr->len) {
        size_t cap = wr->cap ? wr->cap : 4096;
        while (n > cap - wr->len) {
            if (cap > SIZE_MAX / 2) { wr->nomem = 1; png_error(png, "output too large"); }
            cap *= 2;
        }
        uint8_t *p = realloc(wr->buf, cap);
        if (!p) { wr->nomem = 1; png_error(png, "cannot grow output buffer"); }
        wr->buf = p;
        wr->cap = cap;
    }
    memcpy(wr->buf + wr->len, data, n);
    wr->len += n;
}

static void wr_flush(png_structp png) { (void)png; }

static void wr_encode(kiln__png_wr *wr, const kiln_image *img)
{
    png_set_write_fn(wr->png, wr, wr_write, wr_flush);
    png_set_IHDR(wr->png, wr->info, (png_uint_32)img->w, (png_uint_32)img->h, 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(wr->png, wr->info);
    for (int y = 0; y < img->h; y++)
        png_write_row(wr->png, img->rgb + (size_t)y * (size_t)img->w * 3);
    png_write_end(wr->png, NULL);
}

kiln_status kiln_png_write_mem(const kiln_image *img, void **out_buf, size_t *out_len)
{
    *out_buf = NULL;
    *out_len = 0;
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0)
        return kiln_fail(KILN_ERR_INVALID, "png: cannot encode an empty image");
    if (img->w > KILN_IMAGE_MAX_DIM || img->h > KILN_IMAGE_MAX_DIM)
        return kiln_fail(KILN_ERR_LIMIT, "png: image %dx%d exceeds the limit", img->w, img->h);
    kiln__png_wr wr;
    memset(&wr, 0, sizeof wr);
    wr.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &wr, wr_error, wr_warning);
    if (!wr.png) return kiln_fail(KILN_ERR_NOMEM, "png: cannot create write struct");
    wr.info = png_create_info_struct(wr.png);
    if (!wr.info) {
        png_destroy_write_struct(&wr.png, NULL);
        return kiln_fail(KILN_ERR_NOMEM, "png: cannot create info struct");
    }
    int failed = 0;
    if (setjmp(png_jmpbuf(wr.png)) == 0)
        wr_encode(&wr, img);
    else
        failed = 1;
    png_destroy_write_struct(&wr.png, &wr.info);
    if (failed) {
        free(wr.buf);
        return kiln_fail(wr.nomem ? KILN_ERR_NOMEM : KILN_ERR_INTERNAL, "png: encode failed: %s",
                         wr.msg);
    }
    *out_buf = wr.buf;
    *out_len = wr.len;
    return KILN_OK;
}

kiln_status kiln_png_write(const char *path, const kiln_image *img)
{
    void *buf;
    size_t len;
    kiln_status st = kiln_png_write_mem(img, &buf, &len);
    if (st != KILN_OK) return st;
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        int e = errno;
        free(buf);
        return kiln_fail(KILN_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    size_t put = fwrite(buf, 1, len, fp);
    int e = errno;
    free(buf);
    if (put != len) {
        fclose(fp);
        return kiln_fail(KILN_ERR_IO, "%s: write failed after %zu of %zu bytes: %s", path, put,
                         len, strerror(e));
    }
    if (fclose(fp) != 0)
        return kiln_fail(KILN_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* Float layout                                                              */

void kiln_image_to_chw(const kiln_image *img, float *chw)
{
    size_t n = (size_t)img->w * (size_t)img->h;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) chw[c * n + i] = (float)img->rgb[3 * i + c] / 255.0f;
}

kiln_status kiln_image_from_chw(kiln_image *img, const float *chw, int w, int h)
{
    kiln_status st = kiln_image_alloc(img, w, h);
    if (st != KILN_OK) return st;
    size_t n = (size_t)w * (size_t)h;
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < 3; c++) {
            float v = chw[c * n + i];
            /* NaN compares false both ways and lands on 0, like a clamp would. */
            double d = v > 0.0f ? (v < 1.0f ? (double)v : 1.0) : 0.0;
            img->rgb[3 * i + c] = (uint8_t)floor(d * 255.0 + 0.5); /* d >= 0: half away */
        }
    }
    return KILN_OK;
}

/* test_image.c — PNG decoding of every colour type (converted as image.h
 * documents), encode/decode round trips, damaged and hostile files, and the
 * float CHW conversions. Test PNGs are encoded here with libpng directly, so
 * the reader is checked against an independent writer. */
#include <png.h>
#include <setjmp.h>
#include <unistd.h>

#include "image.h"
#include "util/check.h"

/* ---- an independent PNG encoder for the fixtures ---- */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
} membuf;

static void mb_write(png_structp png, png_bytep d, size_t n)
{
    membuf *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2 + 256;
        m->buf = realloc(m->buf, m->cap);
    }
    memcpy(m->buf + m->len, d, n);
    m->len += n;
}
static void mb_flush(png_structp png) { (void)png; }

/* rows: h rows of packed samples as libpng expects for (ctype, depth), big-endian
 * for 16 bit. plte/trns optional. */
static uint8_t *encode_png(int w, int h, int ctype, int depth, int interlace, const uint8_t *rows,
                           size_t rowbytes, const png_color *plte, int nplte,
                           const uint8_t *trns, int ntrns, const png_color_16 *trns_color,
                           size_t *len)
{
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(m.buf);
        return NULL;
    }
    png_set_write_fn(png, &m, mb_write, mb_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, ctype,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (plte) png_set_PLTE(png, info, plte, nplte);
    if (trns || trns_color) png_set_tRNS(png, info, trns, ntrns, trns_color);
    png_write_info(png, info);
    png_bytep *rp = malloc(sizeof *rp * (size_t)h);
    for (int y = 0; y < h; y++) rp[y] = (png_bytep)rows + (size_t)y * rowbytes;
    png_write_image(png, rp);
    png_write_end(png, NULL);
    free(rp);
    png_destroy_write_struct(&png, &info);
    *len = m.len;
    return m.buf;
}

static kiln_image decode(const uint8_t *buf, size_t len, int *warn, kiln_status *st)
{
    kiln_image img;
    *st = kiln_png_read_mem(buf, len, &img, warn);
    return img;
}

static uint8_t px(const kiln_image *im, int x, int y, int c)
{
    return im->rgb[((size_t)y * im->w + x) * 3 + c];
}

/* ---- tests ---- */

TEST(rgb8_roundtrip_mem_and_file)
{
    unsigned seed = 7;
    kiln_image a, b, c;
    CHECK_OK(kiln_image_alloc(&a, 31, 17));
    for (size_t i = 0; i < (size_t)31 * 17 * 3; i++) a.rgb[i] = (uint8_t)kiln_test_rand(&seed);
    void *buf;
    size_t len;
    CHECK_OK(kiln_png_write_mem(&a, &buf, &len));
    CHECK(len > 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0);
    int warn = -1;
    CHECK_OK(kiln_png_read_mem(buf, len, &b, &warn));
    CHECK_EQ_INT(warn, 0);
    CHECK_EQ_INT(b.w, 31);
    CHECK_EQ_INT(b.h, 17);
    CHECK(b.rgb && memcmp(a.rgb, b.rgb, (size_t)31 * 17 * 3) == 0);
    free(buf);

    char path[512];
    snprintf(path, sizeof path, "%s/rt.png", kiln_test_tmpdir());
    CHECK_OK(kiln_png_write(path, &a));
    CHECK_OK(kiln_png_read(path, &c, NULL));
    CHECK(c.rgb && c.w == 31 && c.h == 17 && memcmp(a.rgb, c.rgb, (size_t)31 * 17 * 3) == 0);
    remove(path);
    kiln_image_free(&a);
    kiln_image_free(&b);
    kiln_image_free(&c);
}

TEST(real_b100_file)
{
    kiln_image img;
    int warn = -1;
    CHECK_OK(kiln_png_read(kiln_test_data("B100/HR/101085.png"), &img, &warn));
    CHECK_EQ_INT(img.w, 321);
    CHECK_EQ_INT(img.h, 481);
    CHECK_EQ_INT(warn, 0);
    kiln_image_free(&img);
}

TEST(gray8_expanded)
{
    uint8_t rows[5 * 3];
    for (int i = 0; i < 15; i++) rows[i] = (uint8_t)(i * 17);
    size_t len;
    uint8_t *p = encode_png(5, 3, PNG_COLOR_TYPE_GRAY, 8, 0, rows, 5, NULL, 0, NULL, 0, NULL, &len);
    int warn;
    kiln_status st;
    kiln_image im = decode(p, len, &warn, &st);
    CHECK_OK(st);
    CHECK_EQ_INT(warn, 0);
    int bad = 0;
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 5; x++)
            for (int c = 0; c < 3; c++) bad += px(&im, x, y, c) != rows[y * 5 + x];
    CHECK_EQ_INT(bad, 0);
    kiln_image_free(&im);
    free(p);
}

TEST(gray_low_bit_depths)
{
    /* 1-bit: 0 -> 0, 1 -> 255; 2-bit: v*85; 4-bit: v*17 (PNG sample scaling) */
    int depths[3] = {1, 2, 4};
    for (int d = 0; d < 3; d++) {
        int depth = depths[d], w = 9, h = 2, maxv = (1 << depth) - 1;
        size_t rowbytes = ((size_t)w * depth + 7) / 8;
        uint8_t rows[2 * 8] = {0};
        int vals[18];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int v = (x + y * 3) % (maxv + 1);
                vals[y * w + x] = v;
                int bit = x * depth;
                rows[y * rowbytes + bit / 8] |= (uint8_t)(v << (8 - depth - bit % 8));
            }
        size_t len;
        uint8_t *p = encode_png(w, h, PNG_COLOR_TYPE_GRAY, depth, 0, rows, rowbytes, NULL, 0, NULL,
                                0, NULL, &len);
        kiln_status st;
        int warn;
        kiln_image im = decode(p, len, &warn, &st);
        CHECK_OK(st);
        int bad = 0;
        for (int y = 0; y < h && im.rgb; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++) bad += px(&im, x, y, c) != vals[y * w + x] * 255 / maxv;
        CHECK_MSG(bad == 0, "depth %d: %d wrong", depth, bad);
        kiln_image_free(&im);
        free(p);
    }
}

TEST(palette_expanded_and_trns_flagged)
{
    png_color plte[4] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}};
    /* 4-bit palette, 3x2 */
    uint8_t rows[2 * 2] = {0x01, 0x20, 0x33, 0x10};
    int idx[6] = {0, 1, 2, 3, 3, 1};
    for (int t = 0; t < 2; t++) {
        uint8_t trns[1] = {128};
        size_t len;
        uint8_t *p = encode_png(3, 2, PNG_COLOR_TYPE_PALETTE, 4, 0, rows, 2, plte, 4,
                                t ? trns : NULL, t ? 1 : 0, NULL, &len);
        kiln_status st;
        int warn;
        kiln_image im = decode(p, len, &warn, &st);
        CHECK_OK(st);
        CHECK_EQ_INT(warn, t ? KILN_PNG_WARN_ALPHA_DROPPED : 0);
        int bad = 0;
        for (int i = 0; i < 6 && im.rgb; i++) {
            bad += im.rgb[i * 3] != plte[idx[i]].red;
            bad += im.rgb[i * 3 + 1] != plte[idx[i]].green;
            bad += im.rgb[i * 3 + 2] != plte[idx[i]].blue;
        }
        CHECK_EQ_INT(bad, 0);
        kiln_image_free(&im);
        free(p);
    }
}

TEST(rgba_and_gray_alpha_dropped)
{
    uint8_t rgba[2 * 2 * 4] = {1, 2, 3, 0, 4, 5, 6, 255, 7, 8, 9, 100, 250, 251, 252, 1};
    size_t len;
    uint8_t *p = encode_png(2, 2, PNG_COLOR_TYPE_RGB_ALPHA, 8, 0, rgba, 8, NULL, 0, NULL, 0, NULL, &len);
    kiln_status st;
    int warn;
    kiln_image im = decode(p, len, &warn, &st);
    CHECK_OK(st);
    CHECK_EQ_INT(warn, KILN_PNG_WARN_ALPHA_DROPPED);
    int bad = 0;
    for (int i = 0; i < 4 && im.rgb; i++)
        for (int c = 0; c < 3; c++) bad += im.rgb[i * 3 + c] != rgba[i * 4 + c]; /* not premultiplied */
    CHECK_EQ_INT(bad, 0);
    kiln_image_free(&im);
    free(p);

    uint8_t ga[3 * 2] = {10, 0, 20, 128, 30, 255};
    p = encode_png(3, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, ga, 6, NULL, 0, NULL, 0, NULL, &len);
    im = decode(p, len, &warn, &st);
    CHECK_OK(st);
    CHECK_EQ_INT(warn, KILN_PNG_WARN_ALPHA_DROPPED);
    CHECK(im.rgb && px(&im, 0, 0, 0) == 10 && px(&im, 1, 0, 1) == 20 && px(&im, 2, 0, 2) == 30);
    kiln_image_free(&im);
    free(p);

    /* RGB with a tRNS colour key */
    uint8_t rgb[3] = {9, 8, 7};
    png_color_16 key = {0, 9, 8, 7, 0};
    p = encode_png(1, 1, PNG_COLOR_TYPE_RGB, 8, 0, rgb, 3, NULL, 0, NULL, 0, &key, &len);
    im = decode(p, len, &warn, &st);
    CHECK_OK(st);
    CHECK_EQ_INT(warn, KILN_PNG_WARN_ALPHA_DROPPED);
    CHECK(im.rgb && im.rgb[0] == 9 && im.rgb[1] == 8 && im.rgb[2] == 7);
    kiln_image_free(&im);
    free(p);
}

/* 16-bit: (v*255 + 32767) / 65535; v/257 never lands on .5, so this is
 * nearest rounding, checked with lround as an independent formula. */
TEST(rgb16_converted_with_documented_rounding)
{
    enum { W = 64, H = 3 };
    uint8_t rows[H * W * 6];
    unsigned vals[H * W * 3];
    unsigned seed = 99;
    unsigned edge[] = {0, 1, 128, 129, 256, 257, 385, 386, 32767, 32768, 65278, 65279, 65534, 65535};
    for (int i = 0; i < H * W * 3; i++) {
        unsigned v = i < (int)(sizeof edge / sizeof *edge) ? edge[i] : kiln_test_rand(&seed) & 0xffff;
        vals[i] = v;
        rows[2 * i] = (uint8_t)(v >> 8);
        rows[2 * i + 1] = (uint8_t)v;
    }
    for (int inter = 0; inter < 2; inter++) {
        size_t len;
        uint8_t *p = encode_png(W, H, PNG_COLOR_TYPE_RGB, 16, inter, rows, W * 6, NULL, 0, NULL, 0,
                                NULL, &len);
        kiln_status st;
        int warn;
        kiln_image im = decode(p, len, &warn, &st);
        CHECK_OK(st);
        CHECK_EQ_INT(warn, KILN_PNG_WARN_16BIT_CONVERTED);
        int bad = 0;
        for (int i = 0; i < H * W * 3 && im.rgb; i++) {
            bad += im.rgb[i] != (uint8_t)lround(vals[i] / 257.0);
            bad += im.rgb[i] != (uint8_t)((vals[i] * 255u + 32767u) / 65535u);
        }
        CHECK_MSG(bad == 0, "interlace %d: %d wrong", inter, bad);
        kiln_image_free(&im);
        free(p);
    }
}

TEST(gray16_alpha_interlaced)
{
    enum { W = 11, H = 9 };
    uint8_t rows[H * W * 4];
    for (int i = 0; i < H * W; i++) {
        unsigned v = (unsigned)(i * 661) & 0xffff;
        rows[4 * i] = (uint8_t)(v >> 8);
        rows[4 * i + 1] = (uint8_t)v;
        rows[4 * i + 2] = 0x12;
        rows[4 * i + 3] = 0x34;
    }
    size_t len;
    uint8_t *p = encode_png(W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 16, 1, rows, W * 4, NULL, 0, NULL, 0,
                            NULL, &len);
    kiln_status st;
    int warn;
    kiln_image im = decode(p, len, &warn, &st);
    CHECK_OK(st);
    CHECK_EQ_INT(warn, KILN_PNG_WARN_16BIT_CONVERTED | KILN_PNG_WARN_ALPHA_DROPPED);
    int bad = 0;
    for (int i = 0; i < H * W && im.rgb; i++) {
        unsigned v = (unsigned)(i * 661) & 0xffff;
        for (int c = 0; c < 3; c++) bad += im.rgb[3 * i + c] != (uint8_t)lround(v / 257.0);
    }
    CHECK_EQ_INT(bad, 0);
    kiln_image_free(&im);
    free(p);
}

TEST(interlaced_rgb8_matches_progressive)
{
    enum { W = 13, H = 7 };
    uint8_t rows[H * W * 3];
    unsigned seed = 5;
    for (int i = 0; i < H * W * 3; i++) rows[i] = (uint8_t)kiln_test_rand(&seed);
    size_t len;
    uint8_t *p = encode_png(W, H, PNG_COLOR_TYPE_RGB, 8, 1, rows, W * 3, NULL, 0, NULL, 0, NULL, &len);
    CHECK(p[28] == 1); /* IHDR interlace byte: Adam7 really used */
    kiln_status st;
    int warn;
    kiln_image im = decode(p, len, &warn, &st);
    CHECK_OK(st);
    CHECK_EQ_INT(warn, 0);
    CHECK(im.rgb && memcmp(im.rgb, rows, sizeof rows) == 0);
    kiln_image_free(&im);
    free(p);
}

static uint8_t *valid_png(size_t *len)
{
    kiln_image a;
    kiln_image_alloc(&a, 40, 30);
    for (size_t i = 0; i < (size_t)40 * 30 * 3; i++) a.rgb[i] = (uint8_t)(i * 31 + i / 7);
    void *buf;
    kiln_png_write_mem(&a, &buf, len);
    kiln_image_free(&a);
    return buf;
}

TEST(truncated_and_corrupt_are_format_errors)
{
    size_t len;
    uint8_t *p = valid_png(&len);
    CHECK(p != NULL);
    if (!p) return;
    /* every truncation point fails cleanly (no leak, no crash) with FORMAT */
    int wrong = 0;
    for (size_t cut = 0; cut < len; cut += (cut < 64 ? 1 : 7)) {
        kiln_image im;
        kiln_status st = kiln_png_read_mem(p, cut, &im, NULL);
        if (st != KILN_ERR_FORMAT || im.rgb != NULL || strncmp(kiln_errmsg(), "png: ", 5) != 0) {
            wrong++;
            fprintf(stderr, "\n    cut %zu: status %d msg %s", cut, st, kiln_errmsg());
        }
    }
    CHECK_EQ_INT(wrong, 0);
    kiln_image im;
    CHECK_EQ_INT(kiln_png_read_mem(p, len - 12, &im, NULL), KILN_ERR_FORMAT); /* no IEND */
    CHECK(strstr(kiln_errmsg(), "truncated") != NULL);

    /* a flipped byte inside IDAT's deflate stream */
    uint8_t *q = malloc(len);
    memcpy(q, p, len);
    q[len - 12 - 10] ^= 0x55;
    CHECK_EQ_INT(kiln_png_read_mem(q, len, &im, NULL), KILN_ERR_FORMAT);
    CHECK_MSG(strstr(kiln_errmsg(), "IDAT") != NULL, "%s", kiln_errmsg());
    /* a flipped bit in IHDR: CRC error on a critical chunk */
    memcpy(q, p, len);
    q[8 + 8 + 12] ^= 0x01;
    CHECK_EQ_INT(kiln_png_read_mem(q, len, &im, NULL), KILN_ERR_FORMAT);
    CHECK_MSG(strstr(kiln_errmsg(), "CRC") != NULL, "%s", kiln_errmsg());
    /* a bad signature */
    memcpy(q, p, len);
    q[1] = 'X';
    CHECK_EQ_INT(kiln_png_read_mem(q, len, &im, NULL), KILN_ERR_FORMAT);
    CHECK(strlen(kiln_errmsg()) > 10);
    CHECK_EQ_INT(kiln_png_read_mem("", 0, &im, NULL), KILN_ERR_FORMAT);
    free(q);
    free(p);

    char path[512];
    snprintf(path, sizeof path, "%s/does-not-exist.png", kiln_test_tmpdir());
    CHECK_EQ_INT(kiln_png_read(path, &im, NULL), KILN_ERR_NOT_FOUND);
    CHECK(strstr(kiln_errmsg(), "does-not-exist.png") != NULL);
}

/* PNG chunk CRC (ISO 3309 / zlib crc32), bit by bit. */
static uint32_t crc_of(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

/* A signature + IHDR + IEND file for any claimed size (no pixel data at all). */
static size_t header_only_png(uint8_t *out, uint32_t w, uint32_t h)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(out, sig, 8);
    uint8_t *c = out + 8;
    c[0] = 0; c[1] = 0; c[2] = 0; c[3] = 13;
    memcpy(c + 4, "IHDR", 4);
    uint8_t *d = c + 8;
    d[0] = (uint8_t)(w >> 24); d[1] = (uint8_t)(w >> 16); d[2] = (uint8_t)(w >> 8); d[3] = (uint8_t)w;
    d[4] = (uint8_t)(h >> 24); d[5] = (uint8_t)(h >> 16); d[6] = (uint8_t)(h >> 8); d[7] = (uint8_t)h;
    d[8] = 8; d[9] = 2; d[10] = 0; d[11] = 0; d[12] = 0;
    uint32_t crc = crc_of(c + 4, 17);
    d[13] = (uint8_t)(crc >> 24); d[14] = (uint8_t)(crc >> 16); d[15] = (uint8_t)(crc >> 8); d[16] = (uint8_t)crc;
    uint8_t *e = d + 17;
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    memcpy(e, iend, 12);
    return (size_t)(e + 12 - out);
}

TEST(huge_ihdr_is_limit_before_decoding)
{
    uint8_t buf[64];
    kiln_image im;
    struct { uint32_t w, h; } big[] = {{100000, 100000}, {16385, 1}, {1, 16385}, {16384, 16384},
                                        {0x7fffffff, 2}};
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        size_t len = header_only_png(buf, big[i].w, big[i].h);
        /* Without the early check this would be a truncation (FORMAT) or an
         * allocation failure (NOMEM); LIMIT shows the size was refused first. */
        kiln_status st = kiln_png_read_mem(buf, len, &im, NULL);
        CHECK_MSG(st == KILN_ERR_LIMIT, "%ux%u -> %d (%s)", big[i].w, big[i].h, st, kiln_errmsg());
        CHECK(im.rgb == NULL);
        CHECK(strstr(kiln_errmsg(), "IHDR") != NULL);
    }
    size_t len = header_only_png(buf, 100000, 100000);
    CHECK(strstr((kiln_png_read_mem(buf, len, &im, NULL), kiln_errmsg()), "100000x100000") != NULL);
    /* within limits but no IDAT: a format error, not a limit */
    len = header_only_png(buf, 64, 64);
    CHECK_EQ_INT(kiln_png_read_mem(buf, len, &im, NULL), KILN_ERR_FORMAT);
    /* same through the file reader */
    char path[512];
    snprintf(path, sizeof path, "%s/huge.png", kiln_test_tmpdir());
    len = header_only_png(buf, 100000, 100000);
    FILE *f = fopen(path, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    CHECK_EQ_INT(kiln_png_read(path, &im, NULL), KILN_ERR_LIMIT);
    CHECK(strstr(kiln_errmsg(), "huge.png") != NULL);
    remove(path);
}

/* libpng treats an over-long ancillary chunk as a benign error and would
 * allocate it: a 60-byte file claiming a 1.7 GB tEXt must be refused
 * (FORMAT as it is truncated), and a real 32 MB tEXt too (LIMIT). */
TEST(huge_ancillary_chunk_is_limit)
{
    uint8_t buf[128];
    size_t len = header_only_png(buf, 4, 3);
    size_t iend = len - 12;
    uint8_t *t = buf + iend;
    t[0] = 0x6a; t[1] = 0x6a; t[2] = 0x6a; t[3] = 0x6a;
    memcpy(t + 4, "tEXtkey", 7);
    len = iend + 16;
    kiln_image im;
    /* the claimed length runs past the end: damage */
    CHECK_EQ_INT(kiln_png_read_mem(buf, len, &im, NULL), KILN_ERR_FORMAT);
    CHECK_MSG(strstr(kiln_errmsg(), "tEXt") != NULL && strstr(kiln_errmsg(), "truncated"), "%s",
              kiln_errmsg());
    CHECK(im.rgb == NULL);
    /* the same length with that many bytes really present: over the limit */
    size_t big = iend + 8 + 0x2000000; /* 32 MB chunk > 8 MB limit */
    uint8_t *p = calloc(1, big + 16);
    memcpy(p, buf, iend + 11);
    p[iend] = 0x02; p[iend + 1] = 0; p[iend + 2] = 0; p[iend + 3] = 0;
    CHECK_EQ_INT(kiln_png_read_mem(p, big + 16, &im, NULL), KILN_ERR_LIMIT);
    CHECK_MSG(strstr(kiln_errmsg(), "tEXt") != NULL && strstr(kiln_errmsg(), "limit"), "%s",
              kiln_errmsg());
    free(p);
}

TEST(write_refuses_empty)
{
    kiln_image e = {0, 0, NULL};
    void *buf;
    size_t len;
    CHECK_EQ_INT(kiln_png_write_mem(&e, &buf, &len), KILN_ERR_INVALID);
    CHECK(buf == NULL);
    kiln_image a;
    CHECK_OK(kiln_image_alloc(&a, 2, 2));
    CHECK_EQ_INT(kiln_png_write("/nonexistent-dir/x.png", &a), KILN_ERR_IO);
    CHECK(strstr(kiln_errmsg(), "/nonexistent-dir/x.png") != NULL);
    kiln_image_free(&a);
    CHECK_EQ_INT(kiln_image_alloc(&a, 0, 5), KILN_ERR_INVALID);
    CHECK_EQ_INT(kiln_image_alloc(&a, 20000, 5), KILN_ERR_LIMIT);
}

TEST(chw_conversions)
{
    kiln_image a, b;
    CHECK_OK(kiln_image_alloc(&a, 256, 2));
    for (int x = 0; x < 256; x++)
        for (int y = 0; y < 2; y++) {
            a.rgb[(y * 256 + x) * 3 + 0] = (uint8_t)x;
            a.rgb[(y * 256 + x) * 3 + 1] = (uint8_t)(255 - x);
            a.rgb[(y * 256 + x) * 3 + 2] = (uint8_t)(x ^ 0x5a);
        }
    float *chw = malloc(sizeof(float) * 3 * 512);
    kiln_image_to_chw(&a, chw);
    /* planar layout: plane c, then row, then column */
    CHECK_NEAR(chw[0 * 512 + 256 + 10], 10 / 255.0, 1e-7);
    CHECK_NEAR(chw[1 * 512 + 3], 252 / 255.0, 1e-7);
    CHECK_NEAR(chw[2 * 512 + 255], (255 ^ 0x5a) / 255.0, 1e-7);
    CHECK_OK(kiln_image_from_chw(&b, chw, 256, 2));
    CHECK(b.rgb && memcmp(a.rgb, b.rgb, 256 * 2 * 3) == 0);
    kiln_image_free(&b);

    float v[3 * 4] = {-0.5f, 1.5f, NAN, 0.5f, /* R */
                      0.6f / 255.0f, 1.4f / 255, 1.0f, 0.0f, /* G */
                      INFINITY, -INFINITY, 254.6f / 255.0f, 0.2f}; /* B */
    CHECK_OK(kiln_image_from_chw(&b, v, 4, 1));
    if (b.rgb) {
        CHECK_EQ_INT(b.rgb[0], 0);   /* clamped low */
        CHECK_EQ_INT(b.rgb[3], 255); /* clamped high */
        CHECK_EQ_INT(b.rgb[6], 0);   /* NaN */
        CHECK_EQ_INT(b.rgb[9], 128); /* 127.5 rounds away from zero */
        CHECK_EQ_INT(b.rgb[1], 1);
        CHECK_EQ_INT(b.rgb[4], 1);
        CHECK_EQ_INT(b.rgb[2], 255);
        CHECK_EQ_INT(b.rgb[8], 255);
        CHECK_EQ_INT(b.rgb[5], 0);
        CHECK_EQ_INT(b.rgb[11], 51);
    }
    kiln_image_free(&b);
    kiln_image_free(&a);
    free(chw);
}

int main(void)
{
    RUN(rgb8_roundtrip_mem_and_file);
    RUN(real_b100_file);
    RUN(gray8_expanded);
    RUN(gray_low_bit_depths);
    RUN(palette_expanded_and_trns_flagged);
    RUN(rgba_and_gray_alpha_dropped);
    RUN(rgb16_converted_with_documented_rounding);
    RUN(gray16_alpha_interlaced);
    RUN(interlaced_rgb8_matches_progressive);
    RUN(truncated_and_corrupt_are_format_errors);
    RUN(huge_ihdr_is_limit_before_decoding);
    RUN(huge_ancillary_chunk_is_limit);
    RUN(write_refuses_empty);
    RUN(chw_conversions);
    int rc = check_summary();
    if (rc == 0) rmdir(kiln_test_tmpdir()); /* emptied by the tests above */
    return rc;
}

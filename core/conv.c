/*
 * conv.c — feature maps, the reference convolution, and dispatch to kernels.
 *
 * Feature maps are padded planar (see conv.h): the zero border doubles as the
 * convolution padding, so kernels never branch on edges in y, and every
 * kernel writes only interior pixels, so the border stays zero forever.
 * kiln_fmap owns its 64-byte aligned buffer; `capacity` remembers how many
 * floats it holds so kiln_fmap_reshape can reuse it.
 *
 * A kiln_conv owns copies of the weights: the OIHW original (used by the
 * reference path) and, for the SIMD paths, the kernel's packed layout, built
 * once at create time. The kernel family (AVX2 or AVX-512) is fixed at
 * create time too (the best the CPU has, capped by KILN_CONV_ISA): the
 * packed layout belongs to it. The direct kernels share one layout; the two
 * Winograd kernels have their own block sizes. kiln_conv_run allocates only
 * the Winograd path's per-thread scratch (freed before it returns).
 *
 * Reference: plain C, per output element the sum over ci, ky, kx in that
 * order, accumulated in float, then + bias, ReLU, * res_scale + residual, each
 * rounded to float — the oracle the SIMD kernels are tested against. It is
 * written row-wise (one weight times a whole input row into a row of
 * accumulators) so it runs at a usable speed without changing that order.
 *
 * Threading: work is cut into items that depend only on the shape (never on
 * the thread count), and within a kernel each output element is computed by
 * the same instructions whichever item holds it, so outputs are bit-identical
 * for any pool size.
 */
#include "conv.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "quant.h"

#define KILN_FMAP_MAX_DIM (1 << 20)
#define KILN_CONV_MAX_CH (1 << 16)

/* Instruction set of a conv's kernel, chosen at create time (see conv.h:
 * KILN_CONV_ISA). */
typedef enum conv_isa { ISA_SCALAR, ISA_AVX2, ISA_AVX512 } conv_isa;

struct kiln_conv {
    int cout, cin, k;
    kiln_impl impl;    /* resolved: REFERENCE, AVX2 or WINOGRAD */
    conv_isa isa;      /* kernel family of `packed` */
    float *w;          /* OIHW copy [cout][cin][k][k] */
    float *bias;       /* cout rounded up to the larger OB, zero past cout */
    float *packed;     /* kernel layout, NULL for REFERENCE */
    int nblocks;       /* output-channel blocks of the kernel's OB */
};

/* ---- feature maps ------------------------------------------------------- */

static kiln_status fmap_geometry(int c, int h, int w, size_t *stride, size_t *plane, size_t *total)
{
    if (c < 1 || h < 1 || w < 1)
        return kiln_fail(KILN_ERR_INVALID, "fmap: dimensions c=%d h=%d w=%d must be >= 1", c, h, w);
    if (c > KILN_FMAP_MAX_DIM || h > KILN_FMAP_MAX_DIM || w > KILN_FMAP_MAX_DIM)
        return kiln_fail(KILN_ERR_LIMIT, "fmap: dimensions c=%d h=%d w=%d exceed %d", c, h, w,
                         KILN_FMAP_MAX_DIM);
    size_t s = ((size_t)w + 2 + 7) / 8 * 8;
    size_t p = ((size_t)h + 2) * s;
    if (p > SIZE_MAX / sizeof(float) / (size_t)c)
        return kiln_fail(KILN_ERR_LIMIT, "fmap: %d x %d x %d floats overflow size_t", c, h, w);
    *stride = s;
    *plane = p;
    *total = p * (size_t)c;
    return KILN_OK;
}

static float *fmap_buffer(size_t floats)
{
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    float *d = aligned_alloc(64, bytes);
    if (d) memset(d, 0, bytes);
    return d;
}

kiln_status kiln_fmap_alloc(kiln_fmap *m, int c, int h, int w)
{
    memset(m, 0, sizeof *m);
    size_t stride, plane, total;
    kiln_status st = fmap_geometry(c, h, w, &stride, &plane, &total);
    if (st) return st;
    float *d = fmap_buffer(total);
    if (!d)
        return kiln_fail(KILN_ERR_NOMEM, "fmap: cannot allocate %d x %d x %d map (%zu bytes)", c, h, w,
                         total * sizeof(float));
    m->c = c;
    m->h = h;
    m->w = w;
    m->stride = stride;
    m->plane = plane;
    m->data = d;
    m->capacity = total;
    return KILN_OK;
}

kiln_status kiln_fmap_reshape(kiln_fmap *m, int c, int h, int w)
{
    size_t stride, plane, total;
    kiln_status st = fmap_geometry(c, h, w, &stride, &plane, &total);
    if (st) return st;
    if (!m->data || total > m->capacity) {
        kiln_fmap fresh;
        st = kiln_fmap_alloc(&fresh, c, h, w);
        if (st) return st;
        kiln_fmap_free(m);
        *m = fresh;
        return KILN_OK;
    }
    memset(m->data, 0, total * sizeof(float));
    m->c = c;
    m->h = h;
    m->w = w;
    m->stride = stride;
    m->plane = plane;
    return KILN_OK;
}

kiln_status kiln_fmap_reshape_output(kiln_fmap *m, int c, int h, int w)
{
    size_t stride, plane, total;
    kiln_status st = fmap_geometry(c, h, w, &stride, &plane, &total);
    if (st) return st;
    if (!m->data || total > m->capacity) return kiln_fmap_reshape(m, c, h, w);
    /* Same geometry as before: the padding is still zero, since every
     * writer of a map keeps it so (the layout contract in conv.h). */
    if (m->c == c && m->h == h && m->w == w && m->stride == stride) return KILN_OK;
    m->c = c;
    m->h = h;
    m->w = w;
    m->stride = stride;
    m->plane = plane;
    /* The old contents may have had another geometry, so any float can sit
     * where the new padding is: zero all of it, leave the interior. */
    const size_t tail = stride - (size_t)w - 1; /* right border + spare columns */
    for (int ch = 0; ch < c; ch++) {
        float *p = m->data + (size_t)ch * plane;
        memset(p, 0, (stride + 1) * sizeof(float)); /* top row + left border of row 1 */
        for (int y = 1; y <= h; y++) {
            float *r = p + (size_t)y * stride;
            /* right padding of row y and left border of row y + 1 */
            memset(r + 1 + w, 0, (tail + 1) * sizeof(float));
        }
        /* bottom row: its first float was zeroed above (left border of row h + 1) */
        memset(p + (size_t)(h + 1) * stride, 0, stride * sizeof(float));
    }
    return KILN_OK;
}

void kiln_fmap_free(kiln_fmap *m)
{
    if (!m) return;
    free(m->data);
    memset(m, 0, sizeof *m);
}

void kiln_fmap_from_chw(kiln_fmap *m, const float *chw)
{
    for (int c = 0; c < m->c; c++)
        for (int y = 0; y < m->h; y++)
            memcpy(kiln_fmap_at(m, c, y, 0), chw + ((size_t)c * m->h + y) * m->w,
                   (size_t)m->w * sizeof(float));
}

void kiln_fmap_to_chw(const kiln_fmap *m, float *chw)
{
    for (int c = 0; c < m->c; c++)
        for (int y = 0; y < m->h; y++)
            memcpy(chw + ((size_t)c * m->h + y) * m->w, kiln_fmap_at(m, c, y, 0),
                   (size_t)m->w * sizeof(float));
}

/* ---- implementations ---------------------------------------------------- */

static int cpu_has_avx2_fma(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* AVX-512 F/DQ/BW/VL, and not ruled out by KILN_NO_AVX512=1 (quant.c's
 * probe, shared by every AVX-512 path of the library). */
static int cpu_has_avx512(void) { return cpu_has_avx2_fma() && kiln__cpu_avx512(); }

/* The SIMD instruction set a new conv may use: the best the CPU has, capped
 * by KILN_CONV_ISA (read at every create, so tests can switch it). */
static kiln_status simd_isa(conv_isa *isa)
{
    const char *e = getenv("KILN_CONV_ISA");
    int has512 = cpu_has_avx512();
    if (!e || !*e || strcmp(e, "auto") == 0) {
        *isa = has512 ? ISA_AVX512 : ISA_AVX2;
    } else if (strcmp(e, "avx2") == 0) {
        *isa = ISA_AVX2;
    } else if (strcmp(e, "avx512") == 0) {
        if (!has512)
            return kiln_fail(KILN_ERR_UNSUPPORTED,
                             "conv: KILN_CONV_ISA=avx512 but this CPU lacks AVX-512F/DQ/BW/VL");
        *isa = ISA_AVX512;
    } else {
        return kiln_fail(KILN_ERR_INVALID, "conv: KILN_CONV_ISA='%s' is not one of auto, avx2, avx512", e);
    }
    return KILN_OK;
}

kiln_impl kiln_impl_resolve(kiln_impl impl)
{
    if (impl != KILN_IMPL_AUTO) return impl;
    return cpu_has_avx2_fma() ? KILN_IMPL_AVX2 : KILN_IMPL_REFERENCE;
}

const char *kiln_impl_name(kiln_impl impl)
{
    switch (impl) {
    case KILN_IMPL_AUTO: return "auto";
    case KILN_IMPL_REFERENCE: return "reference";
    case KILN_IMPL_AVX2: return "avx2";
    case KILN_IMPL_WINOGRAD: return "winograd";
    }
    return "unknown";
}

/* ---- create / destroy --------------------------------------------------- */

kiln_status kiln_conv_create(int cout, int cin, int k, const float *weights, const float *bias,
                             kiln_impl impl, kiln_conv **out)
{
    *out = NULL;
    if (cout < 1 || cin < 1)
        return kiln_fail(KILN_ERR_INVALID, "conv: cout=%d cin=%d must be >= 1", cout, cin);
    if (cout > KILN_CONV_MAX_CH || cin > KILN_CONV_MAX_CH)
        return kiln_fail(KILN_ERR_LIMIT, "conv: cout=%d cin=%d exceed %d channels", cout, cin,
                         KILN_CONV_MAX_CH);
    if (k != 1 && k != 3)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "conv: kernel size k=%d (only 1 and 3)", k);
    if (!weights) return kiln_fail(KILN_ERR_INVALID, "conv: weights is NULL");
    kiln_impl r = kiln_impl_resolve(impl);
    if (r != KILN_IMPL_REFERENCE && r != KILN_IMPL_AVX2 && r != KILN_IMPL_WINOGRAD)
        return kiln_fail(KILN_ERR_INVALID, "conv: unknown implementation %d", (int)impl);
    if (r != KILN_IMPL_REFERENCE && !cpu_has_avx2_fma())
        return kiln_fail(KILN_ERR_UNSUPPORTED, "conv: implementation %s needs AVX2+FMA, which this CPU lacks",
                         kiln_impl_name(r));
    /* AUTO takes Winograd where it wins: 3x3 with enough channels on both
     * sides that the GEMM, not the tile transforms, dominates (bench_conv:
     * ~2x on 64->64 and 64->256; slower on EDSR's 3->64 head and 64->3
     * tail). Its error stays within the bound tests/test_conv.c states. */
    if (impl == KILN_IMPL_AUTO && r == KILN_IMPL_AVX2 && k == 3 && cin >= 16 && cout >= 16)
        r = KILN_IMPL_WINOGRAD;
    if (r == KILN_IMPL_WINOGRAD && k != 3) r = KILN_IMPL_AVX2; /* Winograd is 3x3 only */
    conv_isa isa = ISA_SCALAR;
    if (r != KILN_IMPL_REFERENCE) {
        kiln_status st = simd_isa(&isa);
        if (st) return st;
    }

    kiln_conv *c = calloc(1, sizeof *c);
    if (!c) return kiln_fail(KILN_ERR_NOMEM, "conv: out of memory");
    c->cout = cout;
    c->cin = cin;
    c->k = k;
    c->impl = r;
    c->isa = isa;
    c->nblocks = r == KILN_IMPL_WINOGRAD && isa == ISA_AVX512 ? kiln__wino512_nblocks(cout)
                                                             : (cout + KILN__AVX2_OB - 1) / KILN__AVX2_OB;
    size_t nw = (size_t)cout * cin * k * k;
    c->w = malloc(nw * sizeof(float));
    /* Bias padded to whole blocks of the larger OB, zeros past cout. */
    const int ob_max = KILN__W512_OB > KILN__AVX2_OB ? KILN__W512_OB : KILN__AVX2_OB;
    c->bias = calloc((size_t)(cout + ob_max - 1) / ob_max * ob_max, sizeof(float));
    if (!c->w || !c->bias) goto nomem;
    memcpy(c->w, weights, nw * sizeof(float));
    if (bias) memcpy(c->bias, bias, (size_t)cout * sizeof(float));
    if (r == KILN_IMPL_AVX2) {
        size_t np = kiln__conv_avx2_packed_floats(cout, cin, k);
        c->packed = aligned_alloc(64, (np * sizeof(float) + 63) / 64 * 64);
        if (!c->packed) goto nomem;
        kiln__conv_avx2_pack(cout, cin, k, c->w, c->packed);
    } else if (r == KILN_IMPL_WINOGRAD && isa == ISA_AVX512) {
        size_t np = kiln__wino512_packed_floats(cout, cin);
        c->packed = aligned_alloc(64, (np * sizeof(float) + 63) / 64 * 64);
        if (!c->packed) goto nomem;
        kiln__wino512_pack(cout, cin, c->w, c->packed);
    } else if (r == KILN_IMPL_WINOGRAD) {
        size_t np = kiln__wino_packed_floats(cout, cin);
        c->packed = aligned_alloc(64, (np * sizeof(float) + 63) / 64 * 64);
        if (!c->packed) goto nomem;
        kiln__wino_pack(cout, cin, c->w, c->packed);
    }
    *out = c;
    return KILN_OK;
nomem:
    kiln_conv_destroy(c);
    return kiln_fail(KILN_ERR_NOMEM, "conv: out of memory for %d x %d x %d x %d weights", cout, cin, k, k);
}

void kiln_conv_destroy(kiln_conv *c)
{
    if (!c) return;
    free(c->w);
    free(c->bias);
    free(c->packed);
    free(c);
}

double kiln_conv_flops(const kiln_conv *c, int h, int w)
{
    return 2.0 * c->cout * c->cin * c->k * c->k * (double)h * (double)w;
}

kiln_impl kiln_conv_impl(const kiln_conv *c) { return c->impl; }

const char *kiln_conv_isa(const kiln_conv *c)
{
    switch (c->isa) {
    case ISA_SCALAR: return "scalar";
    case ISA_AVX2: return "avx2";
    case ISA_AVX512: return "avx512";
    }
    return "unknown";
}

/* ---- reference ---------------------------------------------------------- */

typedef struct ref_ctx {
    const kiln_conv *conv;
    const kiln_fmap *in;
    kiln_fmap *out;
    const kiln_conv_epilogue *ep;
} ref_ctx;

/* Item = one output channel. Row-wise loops keep the per-element order
 * ci, ky, kx while letting the compiler vectorize across x. */
static void ref_channel(void *vctx, int co)
{
    const ref_ctx *r = vctx;
    const kiln_conv *c = r->conv;
    const kiln_fmap *in = r->in;
    kiln_fmap *out = r->out;
    const int k = c->k, w = in->w, kk = k * k;
    /* 3x3 taps start one pixel up-left of the output pixel; 1x1 at it. */
    const int off = k == 3 ? -1 : 0;
    /* Chunks of x bound the stack; each element's order is unchanged. */
    enum { CHUNK = 256 };
    float acc[CHUNK];
    for (int y = 0; y < in->h; y++)
        for (int x0 = 0; x0 < w; x0 += CHUNK) {
            const int n = w - x0 < CHUNK ? w - x0 : CHUNK;
            memset(acc, 0, sizeof acc);
            for (int ci = 0; ci < c->cin; ci++) {
                const float *wk = c->w + ((size_t)co * c->cin + ci) * kk;
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++) {
                        const float wv = wk[ky * k + kx];
                        const float *ip = kiln_fmap_at(in, ci, y + ky + off, x0 + kx + off);
                        for (int x = 0; x < n; x++) acc[x] += wv * ip[x];
                    }
            }
            float *op = kiln_fmap_at(out, co, y, x0);
            const float *rp =
                r->ep && r->ep->residual ? kiln_fmap_at(r->ep->residual, co, y, x0) : NULL;
            const int relu = r->ep && r->ep->relu;
            const float rs = rp ? r->ep->res_scale : 1.0f;
            const float b = c->bias[co];
            for (int x = 0; x < n; x++) {
                float v = acc[x] + b;
                if (relu) v = v > 0.0f ? v : 0.0f;
                if (rp) {
                    v = v * rs;
                    v = v + rp[x];
                }
                op[x] = v;
            }
        }
}

/* ---- AVX2 --------------------------------------------------------------- */

/* The epilogue's fake-quantization stages on output rows [y0, y1), for
 * kernels that do not fuse them: the kernel stored act(conv + bias) and no
 * residual. Per channel the padded rows y0+1 .. y1 are one range; their
 * border columns are zeros, which every stage keeps zero. */
static void fq_band(const kiln_conv_epilogue *ep, kiln_fmap *out, int y0, int y1)
{
    const kiln_fmap *res = ep->residual;
    const size_t lo = (size_t)(y0 + 1) * out->stride, n = (size_t)(y1 - y0) * out->stride;
    for (int c = 0; c < out->c; c++) {
        float *d = out->data + (size_t)c * out->plane + lo;
        const kiln_conv_fq *q = &ep->fq_out;
        if (q->on) kiln_fake_quant(d, n, q->scale, q->zp, q->qmin, q->qmax, 0);
        if (!res) continue;
        const float *r = res->data + (size_t)c * res->plane + lo, rs = ep->res_scale;
        for (size_t k = 0; k < n; k++) d[k] = d[k] * rs;
        q = &ep->fq_scaled;
        if (q->on) kiln_fake_quant(d, n, q->scale, q->zp, q->qmin, q->qmax, 0);
        for (size_t k = 0; k < n; k++) d[k] = d[k] + r[k];
        q = &ep->fq_sum;
        if (q->on) kiln_fake_quant(d, n, q->scale, q->zp, q->qmin, q->qmax, 0);
    }
}

static int fq_any(const kiln_conv_epilogue *ep)
{
    return ep && (ep->fq_out.on || ep->fq_scaled.on || ep->fq_sum.on);
}

/* Work per finished band of output rows: the fake-quantization stages when
 * the kernel does not fuse them, then kiln_conv_epilogue.rows_done. A band
 * is covered by `parts` work items; the item that completes the count does
 * the work (acq_rel on the counter: it sees the other items' stores). */
typedef struct band_done {
    const kiln_conv_epilogue *ep; /* NULL: nothing to do per band */
    kiln_fmap *out;
    int post_fq;      /* run fq_band here */
    atomic_int *left; /* [nbands] items still running, or NULL (parts == 1) */
    int parts, rows, h;  /* items per band, rows per band, map height */
} band_done;

static kiln_status band_done_init(band_done *d, const kiln_conv_epilogue *ep, kiln_fmap *out, int post_fq,
                                  int nbands, int parts, int rows, int h)
{
    d->ep = ep && (ep->rows_done || post_fq) ? ep : NULL;
    d->out = out;
    d->post_fq = post_fq;
    d->left = NULL;
    d->parts = parts;
    d->rows = rows;
    d->h = h;
    if (d->ep && parts > 1) {
        d->left = malloc((size_t)nbands * sizeof *d->left);
        if (!d->left) return kiln_fail(KILN_ERR_NOMEM, "conv: out of memory for %d band counters", nbands);
        for (int b = 0; b < nbands; b++) atomic_init(&d->left[b], parts);
    }
    return KILN_OK;
}

static void band_complete(const band_done *d, int y0, int y1)
{
    if (d->post_fq) fq_band(d->ep, d->out, y0, y1);
    if (d->ep->rows_done) d->ep->rows_done(d->ep->rows_ctx, y0, y1);
}

static void band_finished_part(const band_done *d, int band)
{
    if (!d->ep) return;
    if (d->left && atomic_fetch_sub_explicit(&d->left[band], 1, memory_order_acq_rel) != 1) return;
    const int y0 = band * d->rows, y1 = y0 + d->rows < d->h ? y0 + d->rows : d->h;
    band_complete(d, y0, y1);
}

typedef struct avx2_ctx {
    kiln__conv_job job;
    int groups;       /* output-channel block groups per row */
    int group_blocks; /* blocks per group */
    band_done done;   /* bands of 1 row, `groups` items each */
} avx2_ctx;

/* Item i = (row y, block group g), on the AVX2 or the AVX-512 direct
 * kernel (same packed weights). */
static void direct_item(const avx2_ctx *a, int i,
                        void (*rows)(const kiln__conv_job *, int, int, int))
{
    int y = i / a->groups, g = i % a->groups;
    int b0 = g * a->group_blocks;
    int b1 = b0 + a->group_blocks < a->job.nblocks ? b0 + a->group_blocks : a->job.nblocks;
    rows(&a->job, y, b0, b1);
    band_finished_part(&a->done, y);
}

static void avx2_item(void *vctx, int i) { direct_item(vctx, i, kiln__conv_avx2_rows); }
static void avx512_item(void *vctx, int i) { direct_item(vctx, i, kiln__conv_avx512_rows); }

/* ---- Winograd ----------------------------------------------------------- */

typedef struct wino_ctx {
    kiln__conv_job job;
    int chunks;         /* tile chunks per band */
    float *scratch;     /* nthreads slices */
    size_t slice;       /* floats per slice, multiple of 16 */
    band_done done;     /* bands of 4 rows, `chunks` items each */
} wino_ctx;

static void wino_item(void *vctx, int i, int tid)
{
    const wino_ctx *a = vctx;
    kiln__wino_item(&a->job, i / a->chunks, i % a->chunks, a->scratch + (size_t)tid * a->slice);
    band_finished_part(&a->done, i / a->chunks);
}

static void wino512_item(void *vctx, int i, int tid)
{
    const wino_ctx *a = vctx;
    kiln__wino512_item(&a->job, i / a->chunks, i % a->chunks, a->scratch + (size_t)tid * a->slice);
    band_finished_part(&a->done, i / a->chunks);
}

/* ---- run ---------------------------------------------------------------- */

static kiln_status check_map(const kiln_fmap *m, const char *name)
{
    if (!m || !m->data) return kiln_fail(KILN_ERR_INVALID, "conv: %s map is NULL or unallocated", name);
    if (m->c < 1 || m->h < 1 || m->w < 1 || m->stride < (size_t)m->w + 2 || m->stride % 8 != 0 ||
        m->plane != ((size_t)m->h + 2) * m->stride)
        return kiln_fail(KILN_ERR_INVALID,
                         "conv: %s map geometry c=%d h=%d w=%d stride=%zu plane=%zu is not padded planar",
                         name, m->c, m->h, m->w, m->stride, m->plane);
    return KILN_OK;
}

kiln_status kiln_conv_run(const kiln_conv *c, const kiln_fmap *in, kiln_fmap *out,
                          const kiln_conv_epilogue *ep, kiln_pool *pool)
{
    kiln_status st;
    if (!c) return kiln_fail(KILN_ERR_INVALID, "conv: conv is NULL");
    if ((st = check_map(in, "input")) || (st = check_map(out, "output"))) return st;
    if (in->c != c->cin)
        return kiln_fail(KILN_ERR_INVALID, "conv: input has %d channels, conv expects cin=%d", in->c, c->cin);
    if (out->c != c->cout || out->h != in->h || out->w != in->w)
        return kiln_fail(KILN_ERR_INVALID, "conv: output is %dx%dx%d, expected %dx%dx%d (cout x h x w)",
                         out->c, out->h, out->w, c->cout, in->h, in->w);
    if (in->data == out->data) return kiln_fail(KILN_ERR_INVALID, "conv: input and output alias");
    const kiln_fmap *res = ep ? ep->residual : NULL;
    if (res) {
        if ((st = check_map(res, "residual"))) return st;
        if (res->c != out->c || res->h != out->h || res->w != out->w)
            return kiln_fail(KILN_ERR_INVALID, "conv: residual is %dx%dx%d, output is %dx%dx%d", res->c,
                             res->h, res->w, out->c, out->h, out->w);
        if (res->data == out->data) return kiln_fail(KILN_ERR_INVALID, "conv: residual and output alias");
    }

    /* Fake-quantization stages: fused by the AVX-512 Winograd kernel; for
     * every other kernel, the kernel stores act(conv + bias) only and
     * fq_band finishes each band (residual included). */
    const int fused_fq = c->impl == KILN_IMPL_WINOGRAD && c->isa == ISA_AVX512;
    const int post_fq = fq_any(ep) && !fused_fq;
    const kiln_conv_fq fqs[3] = {ep ? ep->fq_out : (kiln_conv_fq){0}, ep ? ep->fq_scaled : (kiln_conv_fq){0},
                                 ep ? ep->fq_sum : (kiln_conv_fq){0}};

    if (c->impl == KILN_IMPL_REFERENCE) {
        kiln_conv_epilogue kep = ep ? *ep : (kiln_conv_epilogue){0};
        if (post_fq) kep.residual = NULL;
        ref_ctx r = {c, in, out, &kep};
        kiln_pool_run(pool, c->cout, ref_channel, &r);
        band_done d;
        if ((st = band_done_init(&d, ep, out, post_fq, 1, 1, in->h, in->h)) != KILN_OK) return st;
        if (d.ep) band_complete(&d, 0, in->h); /* one band: all rows */
        return KILN_OK;
    }

    const kiln__conv_job job = {
        .packed = c->packed, .bias = c->bias, .in = in, .out = out, .res = post_fq ? NULL : res,
        .cin = c->cin, .cout = c->cout, .k = c->k, .nblocks = c->nblocks,
        .relu = ep ? ep->relu : 0, .res_scale = res && !post_fq ? ep->res_scale : 1.0f,
        .fq = fq_any(ep) && fused_fq ? fqs : NULL,
    };
    if (c->impl == KILN_IMPL_WINOGRAD) {
        /* Scratch per thread and per run: the conv stays immutable and
         * shareable; the allocation is small next to the convolution. */
        const int w512 = c->isa == ISA_AVX512;
        wino_ctx a = {.job = job, .chunks = w512 ? kiln__wino512_chunks(in->w) : kiln__wino_chunks(in->w)};
        a.slice = ((w512 ? kiln__wino512_scratch_floats(c->cin) : kiln__wino_scratch_floats(c->cin)) + 15) / 16 * 16;
        int nt = kiln_pool_threads(pool);
        const int nbands = (in->h + 3) / 4;
        if ((st = band_done_init(&a.done, ep, out, post_fq, nbands, a.chunks, 4, in->h)) != KILN_OK) return st;
        a.scratch = aligned_alloc(64, (size_t)nt * a.slice * sizeof(float));
        if (!a.scratch) {
            free(a.done.left);
            return kiln_fail(KILN_ERR_NOMEM, "conv: out of memory for Winograd scratch (%d threads x %zu floats)",
                             nt, a.slice);
        }
        kiln_pool_run_tid(pool, nbands * a.chunks, w512 ? wino512_item : wino_item, &a);
        free(a.scratch);
        free(a.done.left);
        return KILN_OK;
    }

    avx2_ctx a;
    a.job = job;
    /* Whole rows per item keep a row's input hot in cache across all output
     * blocks; short maps are also split by channel blocks so both threads
     * get work. Depends on the shape only. */
    a.group_blocks = in->h >= 16 ? c->nblocks : 4;
    a.groups = (c->nblocks + a.group_blocks - 1) / a.group_blocks;
    if ((st = band_done_init(&a.done, ep, out, post_fq, in->h, a.groups, 1, in->h)) != KILN_OK) return st;
    kiln_pool_run(pool, in->h * a.groups, c->isa == ISA_AVX512 ? avx512_item : avx2_item, &a);
    free(a.done.left);
    return KILN_OK;
}

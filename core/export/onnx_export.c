/*
 * onnx_export.c — writes a kiln graph or artifact as an ONNX ModelProto
 * (export.h, docs/export.md), with the protobuf-c code generated from the
 * vendored schema (loader/onnx/onnx.proto) that the importer also uses.
 *
 * Mapping. Tensors keep their graph names; a node's inputs are the values
 * consumers see: the tensor itself, or, at an enabled activation site,
 * "<tensor>:dq", the output of QuantizeLinear -> DequantizeLinear with the
 * site's scale and zero point. Every conv weight is one set of
 * initializers (shared by all convs that use it) that ends in a float
 * value "<weight>:w": a float initializer, DequantizeLinear of int8/uint8
 * (or int4/uint4) codes, or Gather from the int8 LUT by the palette indices
 * followed by DequantizeLinear with the LUT's scale per output channel.
 * Biases are float, except where the conv reads a quantized value and its
 * weight is dequantized: then they are int32 at scale x_scale * w_scale[c]
 * through DequantizeLinear, the form ONNX Runtime's QDQ fusion requires.
 *
 * A ReLU fused into the conv (or add) before it (SPEC §3.6: one site after
 * the ReLU, none between) is written as Q/DQ of the conv output with the
 * ReLU site's qparams, the ReLU, and the site's own Q/DQ: with a whole-range
 * QuantizeLinear, max(clamp(rint(x/s)+zp), zp) = clamp(rint(max(x,0)/s)+zp),
 * so the values are the ones kiln computes, and the conv keeps a Q on its
 * output (DQ -> Conv -> Q fuses into QLinearConv).
 *
 * Memory: every message, string and array is malloc'ed and owned by the
 * ModelProto, which protobuf_c_message_free_unpacked releases in one call
 * once the buffer is packed. Allocation failures are sticky in the builder
 * (b->st) and reported once at the end.
 */
#include "export.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/onnx/onnx.pb-c.h"
#include "quant.h"

/* Element types (onnx.proto TensorProto.DataType; 21/22 are newer than the
 * vendored schema, whose enum protobuf-c does not check when packing). */
enum {
    DT_FLOAT = 1,
    DT_UINT8 = 2,
    DT_INT8 = 3,
    DT_INT32 = 6,
    DT_INT64 = 7,
    DT_UINT4 = 21,
    DT_INT4 = 22,
};

typedef struct builder {
    Onnx__GraphProto *g;
    size_t cap_node, cap_init;
    int opset;
    const kiln_artifact *a;
    unsigned char *site_made; /* [a->n_sites]: the site's scale and zero point exist */
    int index_scale_made;     /* the palettes' shared index scale exists          */
    kiln_status st;
} builder;

static void *nomem(builder *b)
{
    if (b->st == KILN_OK) b->st = kiln_fail(KILN_ERR_NOMEM, "onnx export: out of memory");
    return NULL;
}

static char *sdup(builder *b, const char *s)
{
    char *p = strdup(s);
    return p ? p : nomem(b);
}

static char *sfmt(builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *sfmt(builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    if (vasprintf(&p, fmt, ap) < 0) p = NULL;
    va_end(ap);
    return p ? p : nomem(b);
}

static int grow(builder *b, void ***arr, size_t n, size_t *cap)
{
    if (n < *cap) return 1;
    size_t nc = *cap ? *cap * 2 : 64;
    void **p = realloc(*arr, nc * sizeof *p);
    if (!p) return nomem(b), 0;
    *arr = p;
    *cap = nc;
    return 1;
}

/* A node with inputs/outputs given as strings (NULL-terminated lists; an
 * empty string is an omitted optional input). */
static Onnx__NodeProto *node(builder *b, const char *op, const char *name, const char *const *in,
                             const char *const *out)
{
    if (b->st != KILN_OK) return NULL;
    Onnx__NodeProto *n = malloc(sizeof *n);
    if (!n) return nomem(b);
    onnx__node_proto__init(n);
    if (!grow(b, (void ***)&b->g->node, b->g->n_node, &b->cap_node)) {
        free(n);
        return NULL;
    }
    b->g->node[b->g->n_node++] = n;
    size_t ni = 0, no = 0;
    while (in[ni]) ni++;
    while (out[no]) no++;
    n->input = calloc(ni ? ni : 1, sizeof *n->input);
    n->output = calloc(no ? no : 1, sizeof *n->output);
    if (!n->input || !n->output) return nomem(b);
    for (size_t i = 0; i < ni; i++)
        if ((n->input[n->n_input] = sdup(b, in[i]))) n->n_input++;
    for (size_t i = 0; i < no; i++)
        if ((n->output[n->n_output] = sdup(b, out[i]))) n->n_output++;
    n->op_type = sdup(b, op);
    if (name) n->name = sdup(b, name);
    return n;
}

static Onnx__AttributeProto *attr(builder *b, Onnx__NodeProto *n, const char *name,
                                  Onnx__AttributeProto__AttributeType type)
{
    if (!n || b->st != KILN_OK) return NULL;
    Onnx__AttributeProto *a = malloc(sizeof *a);
    if (!a) return nomem(b);
    onnx__attribute_proto__init(a);
    Onnx__AttributeProto **p = realloc(n->attribute, (n->n_attribute + 1) * sizeof *p);
    if (!p) {
        free(a);
        return nomem(b);
    }
    n->attribute = p;
    p[n->n_attribute++] = a;
    a->name = sdup(b, name);
    a->has_type = 1;
    a->type = type;
    return a;
}

static void attr_i(builder *b, Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (a) a->has_i = 1, a->i = v;
}

static void attr_f(builder *b, Onnx__NodeProto *n, const char *name, float v)
{
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (a) a->has_f = 1, a->f = v;
}

static void attr_s(builder *b, Onnx__NodeProto *n, const char *name, const char *v)
{
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    if (!a) return;
    a->s.data = (uint8_t *)sdup(b, v);
    a->s.len = a->s.data ? strlen(v) : 0;
    a->has_s = 1;
}

static void attr_ints(builder *b, Onnx__NodeProto *n, const char *name, const int64_t *v, size_t nv)
{
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    if (!a) return;
    a->ints = malloc(nv * sizeof *a->ints);
    if (!a->ints) return (void)nomem(b);
    memcpy(a->ints, v, nv * sizeof *v);
    a->n_ints = nv;
}

/* An initializer whose raw bytes the caller fills in (returned, len bytes,
 * zeroed), or NULL after an error. */
static uint8_t *init(builder *b, const char *name, int dt, const int64_t *dims, size_t ndims, size_t len)
{
    if (b->st != KILN_OK) return NULL;
    Onnx__TensorProto *t = malloc(sizeof *t);
    if (!t) return nomem(b);
    onnx__tensor_proto__init(t);
    if (!grow(b, (void ***)&b->g->initializer, b->g->n_initializer, &b->cap_init)) {
        free(t);
        return NULL;
    }
    b->g->initializer[b->g->n_initializer++] = t;
    t->name = sdup(b, name);
    t->has_data_type = 1;
    t->data_type = dt;
    if (ndims) {
        t->dims = malloc(ndims * sizeof *t->dims);
        if (!t->dims) return nomem(b);
        memcpy(t->dims, dims, ndims * sizeof *dims);
        t->n_dims = ndims;
    }
    t->raw_data.data = calloc(len ? len : 1, 1);
    if (!t->raw_data.data) return nomem(b);
    t->raw_data.len = len;
    t->has_raw_data = 1;
    return t->raw_data.data;
}

static void wr_f32(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
}

static void wr_i32(uint8_t *p, int32_t v)
{
    uint32_t u = (uint32_t)v;
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
}

static void init_floats(builder *b, const char *name, const int64_t *dims, size_t ndims, const float *v, size_t n)
{
    uint8_t *p = init(b, name, DT_FLOAT, dims, ndims, 4 * n);
    if (p)
        for (size_t i = 0; i < n; i++) wr_f32(p + 4 * i, v[i]);
}

static void init_scalar(builder *b, const char *name, float v) { init_floats(b, name, NULL, 0, &v, 1); }

/* Codes of an 8- or 4-bit element type; 4-bit ones packed two per byte,
 * the first element in the low nibble (ONNX's int4 layout). */
static void init_codes(builder *b, const char *name, int dt, const int64_t *dims, size_t ndims, const int32_t *v,
                       size_t n)
{
    int four = dt == DT_INT4 || dt == DT_UINT4;
    uint8_t *p = init(b, name, dt, dims, ndims, four ? (n + 1) / 2 : n);
    if (!p) return;
    for (size_t i = 0; i < n; i++) {
        uint8_t u = (uint8_t)v[i];
        if (four) p[i / 2] |= (uint8_t)((u & 0x0f) << (4 * (i & 1)));
        else p[i] = u;
    }
}

/* ---- values ----------------------------------------------------------------- */

typedef struct qtype {
    int dt, qmin, qmax;
} qtype;

/* The element type whose whole range is [qmin, qmax], or 0. */
static int code_type(int qmin, int qmax, int opset)
{
    if (qmin == -128 && qmax == 127) return DT_INT8;
    if (qmin == 0 && qmax == 255) return DT_UINT8;
    if (opset >= 21 && qmin == -8 && qmax == 7) return DT_INT4;
    if (opset >= 21 && qmin == 0 && qmax == 15) return DT_UINT4;
    return 0;
}

/* Q -> DQ of value `x` with a site's qparams; returns the DQ output name
 * (owned by the caller) or NULL. `tag` makes the value names unique; the
 * scale and zero point are one pair of initializers per site, "<site>:s"
 * and "<site>:z", shared by every Q/DQ of that site. */
static char *qdq(builder *b, const char *x, const char *tag, const kiln_art_site *s)
{
    /* Signed codes are written unsigned with the zero point shifted by
     * 2^(bits-1): clamp(rint(x/s) + zp + 128, 0, 255) is the int8 code plus
     * 128, so the dequantized values are the same; ONNX Runtime's x86
     * integer kernels take uint8 activations (it would convert a Q/DQ pair
     * itself, but not one whose Q feeds several consumers). */
    int dt = code_type(s->qmin, s->qmax, b->opset);
    int32_t z = s->zero_point;
    if (dt == DT_INT8) dt = DT_UINT8, z += 128;
    else if (dt == DT_INT4) dt = DT_UINT4, z += 8;
    char *sc = sfmt(b, "%s:s", s->name), *zp = sfmt(b, "%s:z", s->name);
    char *q = sfmt(b, "%s:q", tag), *dq = sfmt(b, "%s:dq", tag);
    const size_t si = (size_t)(s - b->a->sites);
    if (b->st == KILN_OK && !b->site_made[si]) {
        b->site_made[si] = 1;
        init_scalar(b, sc, s->scale);
        init_codes(b, zp, dt, NULL, 0, &z, 1);
    }
    if (b->st == KILN_OK) {
        node(b, "QuantizeLinear", NULL, (const char *[]){x, sc, zp, NULL}, (const char *[]){q, NULL});
        node(b, "DequantizeLinear", NULL, (const char *[]){q, sc, zp, NULL}, (const char *[]){dq, NULL});
    }
    free(sc);
    free(zp);
    free(q);
    if (b->st != KILN_OK) {
        free(dq);
        return NULL;
    }
    return dq;
}

/* ---- weights ------------------------------------------------------------------ */

typedef struct wval {
    char *w;      /* the float weight value                              */
    int quant;    /* the weight is DequantizeLinear output                */
    float *scale; /* [cout] its per-channel scale (quant only)          */
    int per_tensor; /* every channel has the same scale (and zero point) */
    const float *fbias; /* [cout] float bias, or NULL                     */
    int cout;
    char *bias;   /* its float initializer, made by the first conv that reads it */
} wval;

/* The float bias initializer of weight value v (made once), or NULL. */
static const char *float_bias(builder *b, wval *v, const char *wname)
{
    if (!v->fbias || v->bias || b->st != KILN_OK) return v->bias;
    v->bias = sfmt(b, "%s.bias", wname);
    if (v->bias) init_floats(b, v->bias, (const int64_t[]){v->cout}, 1, v->fbias, (size_t)v->cout);
    return v->bias;
}

/* Whether the n values of v are all the same (a per-channel vector that
 * can be written as one scalar, per-tensor). */
static int uniform(const float *v, size_t n)
{
    for (size_t i = 1; i < n; i++)
        if (v[i] != v[0]) return 0;
    return 1;
}

static int int4_fits(const kiln_art_conv *c)
{
    return c->kind == KILN_WK_INT ? c->bits <= 4 : c->kind == KILN_WK_PALETTE ? c->n_bits <= 4 : 0;
}

/* Whether conv c keeps 4-bit storage under these options. */
static int packed4(const kiln_art_conv *c, const kiln_export_opts *o, int opset)
{
    return int4_fits(c) && o->weights != KILN_EXPORT_WEIGHTS_INT8 && opset >= 21;
}

static void export_weight(builder *b, const kiln_art_conv *c, const kiln_export_opts *o, const float *fw,
                          wval *v)
{
    const int gi = c->cin / c->groups;
    const int64_t dims[4] = {c->cout, gi, c->k, c->k};
    const size_t numel = kiln_art_conv_numel(c), per_out = numel / (size_t)c->cout;
    v->w = sfmt(b, "%s:w", c->name);
    char *codes = sfmt(b, "%s.codes", c->name), *sc = sfmt(b, "%s.scale", c->name);
    char *zp = sfmt(b, "%s.zero_point", c->name);
    int32_t *tmp = NULL;
    if (b->st != KILN_OK) goto out;
    if (c->kind == KILN_WK_F32 || fw) {
        init_floats(b, v->w, dims, 4, fw ? fw : c->weight, numel);
        goto out;
    }
    v->scale = malloc((size_t)c->cout * sizeof *v->scale);
    /* Scratch for codes, indices, LUT entries and per-channel offsets. */
    size_t ntmp = numel;
    if (c->kind == KILN_WK_PALETTE && ((size_t)c->n_luts << c->n_bits) > ntmp) ntmp = (size_t)c->n_luts << c->n_bits;
    if ((size_t)c->cout > ntmp) ntmp = (size_t)c->cout;
    tmp = malloc(ntmp * sizeof *tmp);
    int32_t *zps = malloc((size_t)c->cout * sizeof *zps);
    if (!v->scale || !tmp || !zps) {
        free(zps);
        nomem(b);
        goto out;
    }
    const int four = packed4(c, o, b->opset);
    int dt;
    if (c->kind == KILN_WK_INT) {
        dt = c->is_signed ? (four ? DT_INT4 : DT_INT8) : (four ? DT_UINT4 : DT_UINT8);
        for (size_t j = 0; j < numel; j++) tmp[j] = c->codes[j];
        init_codes(b, codes, dt, dims, 4, tmp, numel);
        for (int ch = 0; ch < c->cout; ch++) {
            size_t k = c->granularity == KILN_QG_PER_CHANNEL ? (size_t)ch : 0;
            v->scale[ch] = c->scales[k];
            zps[ch] = c->zero_points[k];
        }
        int zero = 1, same_zp = 1;
        for (int ch = 0; ch < c->cout; ch++) zero &= zps[ch] == 0, same_zp &= zps[ch] == zps[0];
        v->per_tensor = c->granularity == KILN_QG_PER_TENSOR || (same_zp && uniform(v->scale, (size_t)c->cout));
        if (v->per_tensor) {
            init_scalar(b, sc, v->scale[0]);
            if (!zero) init_codes(b, zp, dt, NULL, 0, zps, 1);
        } else {
            init_floats(b, sc, dims, 1, v->scale, (size_t)c->cout);
            if (!zero) init_codes(b, zp, dt, dims, 1, zps, (size_t)c->cout);
        }
        /* A zero point of 0 is DequantizeLinear's default: left out. */
        Onnx__NodeProto *n = node(b, "DequantizeLinear", NULL, (const char *[]){codes, sc, zero ? NULL : zp, NULL},
                                  (const char *[]){v->w, NULL});
        if (!v->per_tensor) attr_i(b, n, "axis", 0);
    } else {
        /* Palette with an int8 LUT: int8 codes lut_q[group][index], scale
         * the LUT's (times the channel scale). */
        for (int ch = 0; ch < c->cout; ch++) {
            size_t g = (size_t)(ch / c->group_size);
            v->scale[ch] = c->channel_scales ? c->lut_scales[g] * c->channel_scales[ch] : c->lut_scales[g];
            zps[ch] = 0;
        }
        v->per_tensor = uniform(v->scale, (size_t)c->cout);
        if (v->per_tensor) init_scalar(b, sc, v->scale[0]);
        else init_floats(b, sc, dims, 1, v->scale, (size_t)c->cout);
        if (!four && c->n_bits <= 8 && o->weights == KILN_EXPORT_WEIGHTS_INT8) {
            for (size_t j = 0; j < numel; j++) {
                size_t g = j / per_out / (size_t)c->group_size;
                tmp[j] = c->lut_q[(g << c->n_bits) + c->indices[j]];
            }
            init_codes(b, codes, DT_INT8, dims, 4, tmp, numel);
        } else {
            /* indices (uint4 or uint8) -> int32 (+ the group's LUT offset)
             * -> Gather from all LUTs, concatenated. */
            char *idx = sfmt(b, "%s.indices", c->name), *i32 = sfmt(b, "%s:idx_i", c->name);
            char *off = sfmt(b, "%s.lut_offset", c->name), *io = sfmt(b, "%s:idx_l", c->name);
            char *lut = sfmt(b, "%s.lut", c->name);
            if (b->st == KILN_OK) {
                for (size_t j = 0; j < numel; j++) tmp[j] = c->indices[j];
                init_codes(b, idx, four ? DT_UINT4 : DT_UINT8, dims, 4, tmp, numel);
                /* uint4 -> float by DequantizeLinear (scale 1, which every
                 * opset-21 runtime implements for uint4; Cast from uint4 is
                 * not), then float -> int32. */
                char *fidx = sfmt(b, "%s:idx_f", c->name);
                const char *one = "palette:index_scale"; /* one scalar 1 for every palette */
                if (b->st == KILN_OK && !b->index_scale_made) {
                    b->index_scale_made = 1;
                    init_scalar(b, one, 1.0f);
                }
                node(b, "DequantizeLinear", NULL, (const char *[]){idx, one, NULL}, (const char *[]){fidx, NULL});
                Onnx__NodeProto *n = node(b, "Cast", NULL, (const char *[]){fidx, NULL}, (const char *[]){i32, NULL});
                attr_i(b, n, "to", DT_INT32);
                free(fidx);
                const char *gidx = i32;
                if (c->n_luts > 1) {
                    for (int ch = 0; ch < c->cout; ch++) tmp[ch] = (ch / c->group_size) << c->n_bits;
                    uint8_t *p = init(b, off, DT_INT32, (const int64_t[]){c->cout, 1, 1, 1}, 4, 4 * (size_t)c->cout);
                    if (p)
                        for (int ch = 0; ch < c->cout; ch++) wr_i32(p + 4 * ch, tmp[ch]);
                    node(b, "Add", NULL, (const char *[]){i32, off, NULL}, (const char *[]){io, NULL});
                    gidx = io;
                }
                const size_t nl = (size_t)c->n_luts << c->n_bits;
                for (size_t j = 0; j < nl; j++) tmp[j] = c->lut_q[j];
                init_codes(b, lut, DT_INT8, (const int64_t[]){(int64_t)nl}, 1, tmp, nl);
                n = node(b, "Gather", NULL, (const char *[]){lut, gidx, NULL}, (const char *[]){codes, NULL});
                attr_i(b, n, "axis", 0);
            }
            free(idx), free(i32), free(off), free(io), free(lut);
        }
        Onnx__NodeProto *n = node(b, "DequantizeLinear", NULL, (const char *[]){codes, sc, NULL},
                                  (const char *[]){v->w, NULL});
        if (!v->per_tensor) attr_i(b, n, "axis", 0);
    }
    free(zps);
    v->quant = 1;
out:
    v->fbias = c->bias;
    v->cout = c->cout;
    free(tmp);
    free(codes);
    free(sc);
    free(zp);
}

/* Whether the artifact's representation of conv c can be exported, and
 * which opset it needs (0 when it cannot, with the reason in kiln_errmsg). */
static kiln_status check_conv(const kiln_art_conv *c, const kiln_export_opts *o, int opset)
{
    if (c->kind == KILN_WK_INT) {
        if (c->granularity == KILN_QG_PER_BLOCK)
            return kiln_fail(KILN_ERR_UNSUPPORTED,
                             "conv %s: per-block weight scales are not exported to ONNX (per-channel and per-tensor are)",
                             c->name);
        if (c->bits != 8 && c->bits != 4)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "conv %s: %d-bit weight codes are not exported", c->name, c->bits);
    }
    if (c->kind == KILN_WK_PALETTE && !c->lut_q)
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "conv %s: a palette with a float LUT has no integer form in ONNX; export it with an int8 LUT",
                         c->name);
    if (int4_fits(c) && o->weights == KILN_EXPORT_WEIGHTS_INT4 && opset < 21)
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "conv %s: --weights int4 needs opset 21 (4-bit tensors), not %d; use --opset 21 or --weights int8",
                         c->name, opset);
    return KILN_OK;
}

int kiln_export_opset(const kiln_artifact *a, const kiln_export_opts *o)
{
    if (o->opset) return o->opset;
    if (a && o->weights != KILN_EXPORT_WEIGHTS_INT8)
        for (size_t i = 0; i < a->n_convs; i++)
            if (int4_fits(&a->convs[i])) return 21;
    if (a)
        for (size_t i = 0; i < a->n_sites; i++)
            if (a->sites[i].enabled && !code_type(a->sites[i].qmin, a->sites[i].qmax, 17) &&
                code_type(a->sites[i].qmin, a->sites[i].qmax, 21))
                return 21;
    return 17;
}

/* ---- the graph ------------------------------------------------------------------ */

static Onnx__ValueInfoProto *value_info(builder *b, const char *name, const char *h, const char *w)
{
    Onnx__ValueInfoProto *v = malloc(sizeof *v);
    Onnx__TypeProto *t = malloc(sizeof *t);
    Onnx__TypeProto__Tensor *tt = malloc(sizeof *tt);
    Onnx__TensorShapeProto *sh = malloc(sizeof *sh);
    Onnx__TensorShapeProto__Dimension **d = calloc(4, sizeof *d);
    if (!v || !t || !tt || !sh || !d) {
        free(v), free(t), free(tt), free(sh), free(d);
        return nomem(b);
    }
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(t);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    v->type = t;
    t->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    t->tensor_type = tt;
    tt->has_elem_type = 1;
    tt->elem_type = DT_FLOAT;
    tt->shape = sh;
    sh->dim = d;
    v->name = sdup(b, name);
    const char *params[4] = {NULL, NULL, h, w};
    const int64_t vals[2] = {1, 3};
    for (int i = 0; i < 4; i++) {
        d[i] = malloc(sizeof *d[i]);
        if (!d[i]) return nomem(b), v;
        onnx__tensor_shape_proto__dimension__init(d[i]);
        sh->n_dim++;
        if (i < 2) {
            d[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d[i]->dim_value = vals[i];
        } else {
            d[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d[i]->dim_param = sdup(b, params[i]);
        }
    }
    return v;
}

static const kiln_art_site *site_of(const kiln_artifact *a, const kiln_graph *g, int t)
{
    const kiln_gtensor *gt = kiln_graph_tensor(g, (size_t)t);
    if (!a || gt->site < 0 || (size_t)gt->site >= a->n_sites) return NULL;
    const kiln_art_site *s = &a->sites[gt->site];
    return s->enabled ? s : NULL;
}

static kiln_status build(builder *b, const kiln_graph *g, const kiln_artifact *a, const kiln_export_opts *o)
{
    const size_t nt = kiln_graph_tensor_count(g), nn = kiln_graph_node_count(g), nw = kiln_graph_weight_count(g);
    char **val = calloc(nt, sizeof *val);   /* the value consumers of tensor t read  */
    const kiln_art_site **vsite = calloc(nt, sizeof *vsite); /* its qparams when quantized */
    wval *wv = calloc(nw ? nw : 1, sizeof *wv);
    kiln_status st = KILN_OK;
    if (!val || !vsite || !wv) {
        st = kiln_fail(KILN_ERR_NOMEM, "onnx export: out of memory");
        goto out;
    }
    for (size_t i = 0; a && i < a->n_sites; i++) {
        const kiln_art_site *s = &a->sites[i];
        if (s->enabled && !code_type(s->qmin, s->qmax, b->opset)) {
            st = kiln_fail(KILN_ERR_UNSUPPORTED,
                           "site %s: activation codes [%d, %d] are not the whole range of an ONNX integer type at "
                           "opset %d (QuantizeLinear clamps to int8/uint8%s)",
                           s->name, s->qmin, s->qmax, b->opset, b->opset >= 21 ? " or int4/uint4" : "");
            goto out;
        }
    }
    for (size_t w = 0; w < nw; w++) {
        const kiln_gweight *gw = kiln_graph_weight(g, w);
        kiln_art_conv fc = {0};
        const kiln_art_conv *c = a ? &a->convs[w] : &fc;
        if (!a) {
            snprintf(fc.name, sizeof fc.name, "%s", gw->name);
            fc.cout = gw->cout, fc.cin = gw->cin, fc.k = gw->k, fc.groups = gw->groups;
            fc.kind = KILN_WK_F32;
            fc.weight = gw->w;
            fc.bias = gw->has_bias ? gw->b : NULL;
        }
        if (a && (st = check_conv(c, o, b->opset)) != KILN_OK) goto out;
        export_weight(b, c, o, NULL, &wv[w]);
    }

    /* The input. */
    val[0] = sdup(b, "input");
    if (b->st == KILN_OK) {
        if ((vsite[0] = site_of(a, g, 0))) {
            char *dq = qdq(b, val[0], val[0], vsite[0]);
            free(val[0]);
            val[0] = dq;
        }
    }

    for (size_t i = 0; i < nn && b->st == KILN_OK; i++) {
        const kiln_gnode *n = kiln_graph_node(g, i);
        const kiln_gtensor *ot = kiln_graph_tensor(g, (size_t)n->out);
        const char *x = val[n->in[0]];
        /* ONNX node names must be unique; graph node names need not be
         * (CARN-M's shared convs), tensor names are. */
        const char *nm = ot->name;
        char *extra = NULL, *rq = NULL, *c1 = NULL;
        switch (n->op) {
        case KILN_OP_CONV: {
            const kiln_gweight *gw = kiln_graph_weight(g, (size_t)n->weight);
            wval *v = &wv[n->weight];
            const char *bias = NULL;
            if (v->fbias && v->quant && vsite[n->in[0]]) {
                /* int32 bias at x_scale * w_scale[c] (QDQ fusion wants it). */
                const float sx = vsite[n->in[0]]->scale;
                const float *bf = v->fbias;
                float *bs = malloc((size_t)gw->cout * sizeof *bs);
                if (!bs) {
                    nomem(b);
                    st = b->st;
                    goto out;
                }
                char *bq = sfmt(b, "%s:bias_q", nm), *bsn = sfmt(b, "%s:bias_s", nm);

                extra = sfmt(b, "%s:bias", nm);
                uint8_t *p = b->st == KILN_OK ? init(b, bq, DT_INT32, (const int64_t[]){gw->cout}, 1, 4 * (size_t)gw->cout) : NULL;
                for (int ch = 0; p && ch < gw->cout; ch++) {
                    bs[ch] = sx * v->scale[ch];
                    double q = nearbyint((double)bf[ch] / (double)bs[ch]);
                    if (!(fabs(q) < 2147483647.0)) {
                        st = kiln_fail(KILN_ERR_UNSUPPORTED, "conv %s: bias %g does not fit int32 at scale %g", n->name,
                                       (double)bf[ch], (double)bs[ch]);
                        break;
                    }
                    wr_i32(p + 4 * ch, (int32_t)q);
                }
                /* One scalar when the weight's scale is one (x_scale is). */
                if (v->per_tensor) init_scalar(b, bsn, bs[0]);
                else init_floats(b, bsn, (const int64_t[]){gw->cout}, 1, bs, (size_t)gw->cout);
                Onnx__NodeProto *dn = node(b, "DequantizeLinear", NULL, (const char *[]){bq, bsn, NULL},
                                           (const char *[]){extra, NULL});
                if (!v->per_tensor) attr_i(b, dn, "axis", 0);
                free(bs), free(bq), free(bsn);
                if (st != KILN_OK) {
                    free(extra);
                    goto out;
                }
                bias = extra;
            } else if (v->fbias) {
                bias = float_bias(b, v, gw->name);
            }
            Onnx__NodeProto *cn = node(b, "Conv", nm, (const char *[]){x, v->w, bias, NULL},
                                       (const char *[]){ot->name, NULL});
            const int64_t p = gw->k / 2;
            attr_ints(b, cn, "kernel_shape", (const int64_t[]){gw->k, gw->k}, 2);
            attr_ints(b, cn, "pads", (const int64_t[]){p, p, p, p}, 4);
            /* strides, dilations and group 1 are ONNX's defaults */
            if (gw->groups != 1) attr_i(b, cn, "group", gw->groups);
            break;
        }
        case KILN_OP_RELU: {
            /* A fused ReLU (its input is no site, its output is): quantize
             * the input with the output's qparams first (see the top). */
            const kiln_art_site *s = site_of(a, g, n->out);
            const kiln_gtensor *it = kiln_graph_tensor(g, (size_t)n->in[0]);
            if (s && !vsite[n->in[0]] && it->producer >= 0) {
                kiln_op pop = kiln_graph_node(g, (size_t)it->producer)->op;
                if (pop == KILN_OP_CONV || pop == KILN_OP_ADD) {
                    char *tag = sfmt(b, "%s:pre", it->name);
                    if (tag) rq = qdq(b, x, tag, s);
                    free(tag);
                    x = rq;
                }
            }
            node(b, "Relu", nm, (const char *[]){x, NULL}, (const char *[]){ot->name, NULL});
            break;
        }
        case KILN_OP_LEAKY_RELU: {
            Onnx__NodeProto *r = node(b, "LeakyRelu", nm, (const char *[]){x, NULL}, (const char *[]){ot->name, NULL});
            attr_f(b, r, "alpha", n->alpha);
            break;
        }
        case KILN_OP_PRELU:
            c1 = sfmt(b, "%s.slope", nm);
            if (c1) {
                const int64_t d[3] = {n->nslope, 1, 1};
                init_floats(b, c1, d, n->nslope > 1 ? 3 : 1, n->slope, (size_t)n->nslope);
            }
            node(b, "PRelu", nm, (const char *[]){x, c1, NULL}, (const char *[]){ot->name, NULL});
            break;
        case KILN_OP_ADD:
            node(b, "Add", nm, (const char *[]){x, val[n->in[1]], NULL}, (const char *[]){ot->name, NULL});
            break;
        case KILN_OP_CHANNEL_MUL:
            node(b, "Mul", nm, (const char *[]){x, val[n->in[1]], NULL}, (const char *[]){ot->name, NULL});
            break;
        case KILN_OP_MUL:
            c1 = sfmt(b, "%s.constant", nm);
            if (c1) init_scalar(b, c1, n->alpha);
            node(b, n->div ? "Div" : "Mul", nm, (const char *[]){x, c1, NULL}, (const char *[]){ot->name, NULL});
            break;
        case KILN_OP_CONCAT: {
            const char *in[KILN_GRAPH_MAX_IN + 1] = {0};
            for (int k = 0; k < n->nin; k++) in[k] = val[n->in[k]];
            Onnx__NodeProto *cn = node(b, "Concat", nm, in, (const char *[]){ot->name, NULL});
            attr_i(b, cn, "axis", 1);
            break;
        }
        case KILN_OP_PIXEL_SHUFFLE: {
            Onnx__NodeProto *d = node(b, "DepthToSpace", nm, (const char *[]){x, NULL}, (const char *[]){ot->name, NULL});
            attr_i(b, d, "blocksize", n->factor);
            attr_s(b, d, "mode", "CRD");
            break;
        }
        case KILN_OP_GAP:
            node(b, "GlobalAveragePool", nm, (const char *[]){x, NULL}, (const char *[]){ot->name, NULL});
            break;
        case KILN_OP_SIGMOID:
            node(b, "Sigmoid", nm, (const char *[]){x, NULL}, (const char *[]){ot->name, NULL});
            break;
        case KILN_OP_UPSAMPLE: {
            c1 = sfmt(b, "%s.scales", nm);
            const float sc[4] = {1, 1, (float)n->factor, (float)n->factor};
            if (c1) init_floats(b, c1, (const int64_t[]){4}, 1, sc, 4);
            Onnx__NodeProto *r = node(b, "Resize", nm, (const char *[]){x, "", c1, NULL},
                                      (const char *[]){ot->name, NULL});
            attr_s(b, r, "mode", "nearest");
            attr_s(b, r, "coordinate_transformation_mode", "asymmetric");
            attr_s(b, r, "nearest_mode", "floor");
            break;
        }
        default:
            st = kiln_fail(KILN_ERR_INTERNAL, "onnx export: node %s: op %s has no ONNX form", n->name, kiln_op_name(n->op));
            goto out;
        }
        free(extra), free(rq), free(c1);
        val[n->out] = sdup(b, ot->name);
        if (b->st == KILN_OK && (vsite[n->out] = site_of(a, g, n->out))) {
            char *dq = qdq(b, val[n->out], ot->name, vsite[n->out]);
            free(val[n->out]);
            val[n->out] = dq;
        }
    }

    /* The output: the graph output divided by out_div. */
    if (b->st == KILN_OK) {
        const float div = kiln_graph_out_div(g);
        const char *y = val[kiln_graph_output(g)];
        if (div != 1.0f) {
            init_scalar(b, "output:divisor", div);
            node(b, "Div", "output/Div", (const char *[]){y, "output:divisor", NULL}, (const char *[]){"output", NULL});
        } else {
            node(b, "Identity", "output/Identity", (const char *[]){y, NULL}, (const char *[]){"output", NULL});
        }
        b->g->input = calloc(1, sizeof *b->g->input);
        b->g->output = calloc(1, sizeof *b->g->output);
        if (!b->g->input || !b->g->output) {
            nomem(b);
        } else {
            if ((b->g->input[0] = value_info(b, "input", "height", "width"))) b->g->n_input = 1;
            if ((b->g->output[0] = value_info(b, "output", "out_height", "out_width"))) b->g->n_output = 1;
        }
    }
    st = b->st != KILN_OK ? b->st : st;
out:
    for (size_t t = 0; val && t < nt; t++) free(val[t]);
    for (size_t w = 0; wv && w < nw; w++) free(wv[w].w), free(wv[w].scale), free(wv[w].bias);
    free(val);
    free(vsite);
    free(wv);
    return st != KILN_OK ? st : b->st;
}

static kiln_status export_any(const kiln_graph *g, const kiln_artifact *a, const kiln_export_opts *opts, void **buf,
                              size_t *len)
{
    *buf = NULL;
    *len = 0;
    kiln_export_opts o = opts ? *opts : (kiln_export_opts){0};
    if (o.weights < KILN_EXPORT_WEIGHTS_AUTO || o.weights > KILN_EXPORT_WEIGHTS_INT8)
        return kiln_fail(KILN_ERR_INVALID, "onnx export: weights: unknown mode %d", (int)o.weights);
    const int opset = kiln_export_opset(a, &o);
    if (opset < KILN_EXPORT_OPSET_MIN || opset > KILN_EXPORT_OPSET_MAX)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx export: opset %d: kiln writes opsets %d to %d", opset,
                         KILN_EXPORT_OPSET_MIN, KILN_EXPORT_OPSET_MAX);
    if (!g) return kiln_fail(KILN_ERR_INVALID, "onnx export: no graph");
    if (a && (a->n_convs != kiln_graph_weight_count(g) || a->n_sites != kiln_graph_site_count(g)))
        return kiln_fail(KILN_ERR_INVALID, "onnx export: the artifact's convs/sites do not match its graph");

    Onnx__ModelProto *m = malloc(sizeof *m);
    Onnx__GraphProto *gp = malloc(sizeof *gp);
    Onnx__OperatorSetIdProto *os = malloc(sizeof *os);
    Onnx__OperatorSetIdProto **osl = malloc(sizeof *osl);
    if (!m || !gp || !os || !osl) {
        free(m), free(gp), free(os), free(osl);
        return kiln_fail(KILN_ERR_NOMEM, "onnx export: out of memory");
    }
    onnx__model_proto__init(m);
    onnx__graph_proto__init(gp);
    onnx__operator_set_id_proto__init(os);
    m->graph = gp;
    osl[0] = os;
    m->opset_import = osl;
    m->n_opset_import = 1;
    os->has_version = 1;
    os->version = opset;
    m->has_ir_version = 1;
    m->ir_version = opset >= 21 ? 10 : 8;
    builder b = {.g = gp, .opset = opset, .a = a};
    if (a && a->n_sites && !(b.site_made = calloc(a->n_sites, 1)))
        b.st = kiln_fail(KILN_ERR_NOMEM, "onnx export: out of memory");
    os->domain = sdup(&b, "");
    m->producer_name = sdup(&b, "kiln");
    m->producer_version = sdup(&b, kiln_version());
    const char *desc = kiln_graph_desc(g);
    gp->name = sdup(&b, desc && *desc ? desc : kiln_graph_arch(g));
    if (a && a->recipe) m->doc_string = sfmt(&b, "kiln artifact, recipe %s, config %s", a->recipe, a->config_hash);
    kiln_status st = b.st == KILN_OK ? build(&b, g, a, &o) : b.st;
    if (st == KILN_OK) {
        size_t n = protobuf_c_message_get_packed_size(&m->base);
        uint8_t *p = malloc(n ? n : 1);
        if (!p) {
            st = kiln_fail(KILN_ERR_NOMEM, "onnx export: out of memory (%zu bytes)", n);
        } else {
            protobuf_c_message_pack(&m->base, p);
            *buf = p;
            *len = n;
        }
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
    free(b.site_made);
    return st;
}

kiln_status kiln_export_onnx(const kiln_artifact *a, const kiln_export_opts *opts, void **buf, size_t *len)
{
    if (!a) return kiln_fail(KILN_ERR_INVALID, "onnx export: no artifact");
    return export_any(a->graph, a, opts, buf, len);
}

kiln_status kiln_export_onnx_graph(const kiln_graph *g, const kiln_export_opts *opts, void **buf, size_t *len)
{
    for (size_t w = 0; g && w < kiln_graph_weight_count(g); w++)
        if (!kiln_graph_weight(g, w)->w)
            return kiln_fail(KILN_ERR_INVALID, "onnx export: weight %s has no data (a topology-only graph)",
                             kiln_graph_weight(g, w)->name);
    return export_any(g, NULL, opts, buf, len);
}

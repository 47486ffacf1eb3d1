/*
 * artifact.c — the .kiln file: a finalized, compressed network (SPEC §5).
 *
 * Layout (all integers little-endian; version 2, which reads version 1 too):
 *
 *   [0, 128)                 header (kiln__art_header, pinned below)
 *   [128, 128 + M)           manifest: compact UTF-8 JSON, keys in a fixed order
 *   zero padding up to a multiple of 64
 *   [blob_offset, +B)        tensor blobs, each starting at a multiple of 64
 *                            from blob_offset, zero padding between them
 *
 *   header   off size field
 *              0    8 magic "KILNART\0"
 *              8    4 version (2); a newer version is refused (unsupported)
 *             12    4 flags (0; no flag is defined in versions 1 and 2)
 *             16    4 header_size (128)
 *             20    4 reserved, 0
 *             24    8 manifest_offset (128)
 *             32    8 manifest_length M
 *             40    8 blob_offset (= align64(128 + M))
 *             48    8 blob_length B
 *             56    8 file_length (= blob_offset + B, the whole file)
 *             64   32 sha256 of bytes [128, file_length)
 *             96   32 reserved, 0
 *
 * The manifest holds the network's topology ("graph": kiln_graph_to_json's
 * object, graph.h) and, per weight of that graph (a "conv"), its kind and a
 * tensor table {name: {dtype, offset, length, shape}} with offsets relative
 * to blob_offset; then the qparams of every activation site of the graph.
 * Version 1 files (EDSR only) have an "arch" object (resblocks, features,
 * scale, res_scale) instead of the graph; the reader rebuilds EDSR's graph
 * from it (kiln_arch_edsr_topology), so they load as version 2 artifacts. Tensors are laid out canonically: in conv order, in the
 * per-kind order given by art_conv_tensors(), each at the next multiple of 64
 * after the previous one. The reader recomputes that layout from the
 * manifest's shapes and requires every offset and length to equal it, so a
 * file has exactly one valid encoding of its contents and tensors can never
 * overlap or point outside the file. Element encodings:
 *   float32/int32  4 bytes little-endian per element
 *   int8/uint8     1 byte per element
 *   int4/uint4/uint1/uint2/uint3/uint6   packed LSB-first: element i occupies
 *                  stream bits [i*n, i*n+n), stream bit j is bit j%8 of byte
 *                  j/8 (4 bits: low nibble first); signed values are n-bit
 *                  two's complement; unused bits of the last byte are 0.
 * Floats in the manifest (scales, ranges; version 1's res_scale) are C99
 * hex strings ("%a", e.g. "0x1.7c85acp-10") so they round-trip bit-exactly;
 * the graph's few constants (mul factors, slopes) are decimal numbers with
 * 17 significant digits, which round-trip exactly too.
 * docs/artifact-format.md has the full manifest schema.
 *
 * Trust: decode treats its input as hostile (files are uploaded and
 * downloaded). It checks the header, the checksum, then every manifest field
 * (types, ranges, counts, name lengths, tensor offsets/lengths/dtypes against
 * shapes and bits); an array is allocated only once its length has been
 * checked against the bytes present in the file. The graph goes through
 * kiln_graph_from_json, which applies every check of the graph builder;
 * then every conv and site must match the graph's weights and sites. Finally
 * it runs the same whole-artifact validation (art_check) the writer runs, so
 * encode never writes what decode would refuse.
 *
 * Determinism: the same kiln_artifact always gives the same bytes (fixed key
 * order, canonical layout, zeroed padding, no timestamps).
 *
 * Memory: decode returns a new artifact the caller frees with
 * kiln_artifact_free; encode returns a malloc'ed buffer the caller frees.
 * Nothing in this file keeps state between calls.
 */
#include "artifact.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch.h"
#include "file.h"
#include "hash.h"
#include "quant.h"

#define ART_VERSION 2u
#define ART_HEADER_SIZE 128u
#define ART_ALIGN 64u

/* Bounds that keep a hostile manifest from asking for absurd allocations or
 * work; EDSR (full: F=256, R=32, x4), CARN and RCAN are far inside all of
 * them. */
#define ART_MAX_CONVS 4096
#define ART_MAX_SITES 65536
#define ART_MAX_DIM 16384
#define ART_MAX_K 15
#define ART_MAX_NUMEL (1ull << 28)
#define ART_MAX_RESBLOCKS 1024   /* version 1 "arch" */
#define ART_MAX_NODES 8192       /* graph nodes (the graph parser's name
                                  * lookups are linear: keep it bounded)  */
#define ART_MAX_STR 256          /* recipe, kiln_version */
#define ART_MAX_CONFIG (1u << 20) /* canonical config JSON */
#define ART_MAX_FILE (1ull << 32)

static const uint8_t kMagic[8] = {'K', 'I', 'L', 'N', 'A', 'R', 'T', '\0'};

/* The header as it sits on disk. Serialized field by field (little-endian
 * whatever the host), so the struct documents and pins the layout. */
typedef struct kiln__art_header {
    uint8_t magic[8];
    uint32_t version;
    uint32_t flags;
    uint32_t header_size;
    uint32_t reserved0;
    uint64_t manifest_offset;
    uint64_t manifest_length;
    uint64_t blob_offset;
    uint64_t blob_length;
    uint64_t file_length;
    uint8_t sha256[32];
    uint8_t reserved[32];
} kiln__art_header;

static_assert(sizeof(kiln__art_header) == ART_HEADER_SIZE, "header is 128 bytes");
static_assert(offsetof(kiln__art_header, magic) == 0, "magic at 0");
static_assert(offsetof(kiln__art_header, version) == 8, "version at 8");
static_assert(offsetof(kiln__art_header, flags) == 12, "flags at 12");
static_assert(offsetof(kiln__art_header, header_size) == 16, "header_size at 16");
static_assert(offsetof(kiln__art_header, reserved0) == 20, "reserved0 at 20");
static_assert(offsetof(kiln__art_header, manifest_offset) == 24, "manifest_offset at 24");
static_assert(offsetof(kiln__art_header, manifest_length) == 32, "manifest_length at 32");
static_assert(offsetof(kiln__art_header, blob_offset) == 40, "blob_offset at 40");
static_assert(offsetof(kiln__art_header, blob_length) == 48, "blob_length at 48");
static_assert(offsetof(kiln__art_header, file_length) == 56, "file_length at 56");
static_assert(offsetof(kiln__art_header, sha256) == 64, "sha256 at 64");
static_assert(offsetof(kiln__art_header, reserved) == 96, "reserved at 96");
static_assert(sizeof(float) == 4 && sizeof(uint32_t) == 4, "float32 is 4 bytes");

/* ---------------------------------------------------------------- helpers */

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint64_t align64(uint64_t x) { return (x + ART_ALIGN - 1) & ~(uint64_t)(ART_ALIGN - 1); }
static uint64_t packed_bytes(uint64_t n, int bits) { return (n * (uint64_t)bits + 7) / 8; }

static void header_store(const kiln__art_header *h, uint8_t *p)
{
    memcpy(p + offsetof(kiln__art_header, magic), h->magic, 8);
    put_le32(p + offsetof(kiln__art_header, version), h->version);
    put_le32(p + offsetof(kiln__art_header, flags), h->flags);
    put_le32(p + offsetof(kiln__art_header, header_size), h->header_size);
    put_le32(p + offsetof(kiln__art_header, reserved0), h->reserved0);
    put_le64(p + offsetof(kiln__art_header, manifest_offset), h->manifest_offset);
    put_le64(p + offsetof(kiln__art_header, manifest_length), h->manifest_length);
    put_le64(p + offsetof(kiln__art_header, blob_offset), h->blob_offset);
    put_le64(p + offsetof(kiln__art_header, blob_length), h->blob_length);
    put_le64(p + offsetof(kiln__art_header, file_length), h->file_length);
    memcpy(p + offsetof(kiln__art_header, sha256), h->sha256, 32);
    memcpy(p + offsetof(kiln__art_header, reserved), h->reserved, 32);
}

static void header_load(const uint8_t *p, kiln__art_header *h)
{
    memcpy(h->magic, p + offsetof(kiln__art_header, magic), 8);
    h->version = get_le32(p + offsetof(kiln__art_header, version));
    h->flags = get_le32(p + offsetof(kiln__art_header, flags));
    h->header_size = get_le32(p + offsetof(kiln__art_header, header_size));
    h->reserved0 = get_le32(p + offsetof(kiln__art_header, reserved0));
    h->manifest_offset = get_le64(p + offsetof(kiln__art_header, manifest_offset));
    h->manifest_length = get_le64(p + offsetof(kiln__art_header, manifest_length));
    h->blob_offset = get_le64(p + offsetof(kiln__art_header, blob_offset));
    h->blob_length = get_le64(p + offsetof(kiln__art_header, blob_length));
    h->file_length = get_le64(p + offsetof(kiln__art_header, file_length));
    memcpy(h->sha256, p + offsetof(kiln__art_header, sha256), 32);
    memcpy(h->reserved, p + offsetof(kiln__art_header, reserved), 32);
}

/* Bit stream writer/reader for the packed dtypes (LSB-first). */
typedef struct bitw {
    uint8_t *p;
    uint64_t acc;
    int n;
} bitw;
static void bitw_put(bitw *w, uint32_t v, int bits)
{
    w->acc |= (uint64_t)(v & ((1u << bits) - 1u)) << w->n;
    w->n += bits;
    while (w->n >= 8) {
        *w->p++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->n -= 8;
    }
}
static void bitw_flush(bitw *w)
{
    if (w->n > 0) *w->p++ = (uint8_t)w->acc;
    w->acc = 0;
    w->n = 0;
}
typedef struct bitr {
    const uint8_t *p;
    uint64_t acc;
    int n;
} bitr;
static uint32_t bitr_get(bitr *r, int bits)
{
    while (r->n < bits) {
        r->acc |= (uint64_t)*r->p++ << r->n;
        r->n += 8;
    }
    uint32_t v = (uint32_t)(r->acc & ((1u << bits) - 1u));
    r->acc >>= bits;
    r->n -= bits;
    return v;
}

/* ------------------------------------------------------------- tensors */

/* One entry of a conv's tensor table. */
typedef struct art_tensor {
    const char *name;
    const char *dtype;
    int bits;      /* bits per element in the file */
    int is_signed; /* packed integer sign          */
    int ndim;
    int64_t shape[4];
    uint64_t numel, length, offset;
} art_tensor;

#define ART_MAX_TENSORS 6

static const char *packed_dtype(int bits, int is_signed)
{
    switch (bits) {
    case 1: return is_signed ? NULL : "uint1";
    case 2: return is_signed ? NULL : "uint2";
    case 3: return is_signed ? NULL : "uint3";
    case 4: return is_signed ? "int4" : "uint4";
    case 6: return is_signed ? NULL : "uint6";
    case 8: return is_signed ? "int8" : "uint8";
    }
    return NULL;
}

static void tensor_set(art_tensor *t, const char *name, const char *dtype, int bits,
                       int is_signed, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    t->name = name;
    t->dtype = dtype;
    t->bits = bits;
    t->is_signed = is_signed;
    t->ndim = ndim;
    int64_t d[4] = {d0, d1, d2, d3};
    t->numel = 1;
    for (int i = 0; i < 4; i++) {
        t->shape[i] = i < ndim ? d[i] : 0;
        if (i < ndim) t->numel *= (uint64_t)d[i];
    }
    t->length = packed_bytes(t->numel, bits);
    t->offset = 0;
}

/* The tensor table of a conv whose scalar fields are already validated
 * (art_check_conv_shape): names, dtypes, shapes and lengths, in file order.
 * has_lut_q/has_cs/has_bias say whether the optional tensors exist (the
 * reader knows this from the manifest and the graph before the arrays
 * exist). */
static int art_conv_tensors(const kiln_art_conv *c, int has_lut_q, int has_cs, int has_bias, art_tensor *t)
{
    int n = 0;
    int64_t co = c->cout, ci = c->cin / c->groups, k = c->k;
    switch (c->kind) {
    case KILN_WK_F32:
        tensor_set(&t[n++], "weight", "float32", 32, 0, 4, co, ci, k, k);
        break;
    case KILN_WK_INT:
        tensor_set(&t[n++], "codes", packed_dtype(c->bits, c->is_signed), c->bits,
                   c->is_signed, 4, co, ci, k, k);
        tensor_set(&t[n++], "scales", "float32", 32, 0, 1, (int64_t)c->n_scales, 0, 0, 0);
        tensor_set(&t[n++], "zero_points", "int32", 32, 1, 1, (int64_t)c->n_scales, 0, 0, 0);
        break;
    case KILN_WK_PALETTE: {
        int64_t entries = (int64_t)1 << c->n_bits;
        tensor_set(&t[n++], "indices", packed_dtype(c->n_bits, 0), c->n_bits, 0, 4, co, ci, k, k);
        if (has_lut_q) {
            tensor_set(&t[n++], "lut_int8", "int8", 8, 1, 2, c->n_luts, entries, 0, 0);
            tensor_set(&t[n++], "lut_scales", "float32", 32, 0, 1, c->n_luts, 0, 0, 0);
        } else {
            tensor_set(&t[n++], "lut", "float32", 32, 0, 2, c->n_luts, entries, 0, 0);
        }
        if (has_cs)
            tensor_set(&t[n++], "channel_scales", "float32", 32, 0, 1, co, 0, 0, 0);
        break;
    }
    }
    if (has_bias) tensor_set(&t[n++], "bias", "float32", 32, 0, 1, co, 0, 0, 0);
    return n;
}

/* ------------------------------------------------------------ validation */

static int name_ok(const char *name)
{
    const char *end = memchr(name, '\0', KILN_ART_NAME_MAX);
    if (!end || end == name) return 0;
    for (const char *p = name; p < end; p++)
        if (*p < 0x21 || *p > 0x7e) return 0;
    return 1;
}

static int hex64_ok(const char *s)
{
    if (strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int valid_nbits(int n) { return n == 1 || n == 2 || n == 3 || n == 4 || n == 6 || n == 8; }

/* n_scales an INT conv must have for its granularity, or 0 if invalid. */
static size_t int_expected_scales(const kiln_art_conv *c)
{
    switch (c->granularity) {
    case KILN_QG_PER_TENSOR: return 1;
    case KILN_QG_PER_CHANNEL: return (size_t)c->cout;
    case KILN_QG_PER_BLOCK: {
        /* Blocks run along each output channel's flattened
         * (cin/groups)*k*k row, as kiln_quant_weight lays them out. */
        int inner = c->cin / c->groups * c->k * c->k;
        if (c->block_size < 1 || c->block_size > inner) return 0;
        return (size_t)c->cout * (size_t)((inner + c->block_size - 1) / c->block_size);
    }
    }
    return 0;
}

/* Scalar fields of a conv: everything art_conv_tensors relies on. */
static kiln_status art_check_conv_shape(const kiln_art_conv *c, size_t i, kiln_status st)
{
    if (!name_ok(c->name))
        return kiln_fail(st, "artifact: convs[%zu]: name is empty, not NUL-terminated within "
                         "%d bytes, or has non-printable characters", i, KILN_ART_NAME_MAX);
    const char *nm = c->name;
    if (c->cout < 1 || c->cin < 1 || c->k < 1 || c->groups < 1)
        return kiln_fail(st, "artifact: conv %s: shape [%d,%d,%d,%d] or groups %d has a dimension "
                         "< 1", nm, c->cout, c->cin, c->k, c->k, c->groups);
    if (c->cout > ART_MAX_DIM || c->cin > ART_MAX_DIM || c->k > ART_MAX_K)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: conv %s: shape [%d,%d,%d,%d] exceeds the "
                         "limits (channels <= %d, kernel <= %d)", nm, c->cout, c->cin, c->k,
                         c->k, ART_MAX_DIM, ART_MAX_K);
    if (c->cin % c->groups || c->cout % c->groups)
        return kiln_fail(st, "artifact: conv %s: %d groups do not divide %d input and %d output "
                         "channels", nm, c->groups, c->cin, c->cout);
    uint64_t numel = kiln_art_conv_numel(c);
    if (numel > ART_MAX_NUMEL)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: conv %s: %llu weights exceed the limit %llu",
                         nm, (unsigned long long)numel, (unsigned long long)ART_MAX_NUMEL);
    switch (c->kind) {
    case KILN_WK_F32: return KILN_OK;
    case KILN_WK_INT:
        if (c->bits != 8 && c->bits != 4)
            return kiln_fail(st, "artifact: conv %s: bits %d is not 4 or 8", nm, c->bits);
        if (c->is_signed != 0 && c->is_signed != 1)
            return kiln_fail(st, "artifact: conv %s: is_signed %d is not 0 or 1", nm, c->is_signed);
        if (c->granularity == KILN_QG_PER_BLOCK &&
            (c->block_size < 1 || c->block_size > c->cin / c->groups * c->k * c->k))
            return kiln_fail(st, "artifact: conv %s: block_size %d not in [1, cin/groups*k*k=%d]",
                             nm, c->block_size, c->cin / c->groups * c->k * c->k);
        if (int_expected_scales(c) == 0)
            return kiln_fail(st, "artifact: conv %s: granularity %d is not per_tensor, "
                             "per_channel or per_block", nm, c->granularity);
        if (c->n_scales != int_expected_scales(c))
            return kiln_fail(st, "artifact: conv %s: n_scales %zu, expected %zu for its "
                             "granularity", nm, c->n_scales, int_expected_scales(c));
        return KILN_OK;
    case KILN_WK_PALETTE:
        if (!valid_nbits(c->n_bits))
            return kiln_fail(st, "artifact: conv %s: n_bits %d is not 1, 2, 3, 4, 6 or 8", nm,
                             c->n_bits);
        /* Groups of group_size output channels; the last one may be smaller. */
        if (c->n_luts < 1 || c->group_size < 1 || c->group_size > c->cout || c->n_luts > c->cout ||
            (int64_t)c->n_luts != ((int64_t)c->cout + c->group_size - 1) / c->group_size)
            return kiln_fail(st, "artifact: conv %s: n_luts %d is not ceil(cout %d / group_size %d)", nm,
                             c->n_luts, c->cout, c->group_size);
        return KILN_OK;
    }
    return kiln_fail(st, "artifact: conv %s: kind %d is not f32, int or palette", nm, (int)c->kind);
}

/* Everything about a conv, arrays included. */
static kiln_status art_check_conv(const kiln_art_conv *c, size_t i, kiln_status st)
{
    kiln_status s = art_check_conv_shape(c, i, st);
    if (s != KILN_OK) return s;
    const char *nm = c->name;
    size_t numel = kiln_art_conv_numel(c);
    switch (c->kind) {
    case KILN_WK_F32:
        if (!c->weight) return kiln_fail(st, "artifact: conv %s: weight is missing", nm);
        break;
    case KILN_WK_INT: {
        if (!c->codes || !c->scales || !c->zero_points)
            return kiln_fail(st, "artifact: conv %s: codes, scales or zero_points missing", nm);
        int lo = c->is_signed ? -(1 << (c->bits - 1)) : 0;
        int hi = c->is_signed ? (1 << (c->bits - 1)) - 1 : (1 << c->bits) - 1;
        for (size_t j = 0; j < numel; j++)
            if (c->codes[j] < lo || c->codes[j] > hi)
                return kiln_fail(st, "artifact: conv %s: codes[%zu] = %d outside [%d, %d]", nm, j,
                                 c->codes[j], lo, hi);
        for (size_t j = 0; j < c->n_scales; j++) {
            if (!isfinite(c->scales[j]) || !(c->scales[j] > 0))
                return kiln_fail(st, "artifact: conv %s: scales[%zu] = %g is not finite and > 0",
                                 nm, j, (double)c->scales[j]);
            if (c->zero_points[j] < lo || c->zero_points[j] > hi)
                return kiln_fail(st, "artifact: conv %s: zero_points[%zu] = %d outside [%d, %d]",
                                 nm, j, (int)c->zero_points[j], lo, hi);
        }
        break;
    }
    case KILN_WK_PALETTE: {
        if (!c->indices || !c->lut)
            return kiln_fail(st, "artifact: conv %s: indices or lut missing", nm);
        unsigned entries = 1u << c->n_bits;
        for (size_t j = 0; j < numel; j++)
            if (c->indices[j] >= entries)
                return kiln_fail(st, "artifact: conv %s: indices[%zu] = %u >= 2^n_bits = %u", nm,
                                 j, c->indices[j], entries);
        if (c->lut_q) {
            if (!c->lut_scales)
                return kiln_fail(st, "artifact: conv %s: lut_q without lut_scales", nm);
            for (int g = 0; g < c->n_luts; g++) {
                float sc = c->lut_scales[g];
                if (!isfinite(sc) || sc < 0)
                    return kiln_fail(st, "artifact: conv %s: lut_scales[%d] = %g is not finite "
                                     "and >= 0", nm, g, (double)sc);
                /* The file stores only the int8 codes and the scale, so the
                 * float LUT must be exactly what the reader rebuilds. */
                for (unsigned e = 0; e < entries; e++) {
                    size_t j = (size_t)g * entries + e;
                    float want = (float)c->lut_q[j] * sc;
                    if (f2u(c->lut[j]) != f2u(want))
                        return kiln_fail(st, "artifact: conv %s: lut[%zu] = %a is not "
                                         "lut_q*lut_scale = %a", nm, j, (double)c->lut[j],
                                         (double)want);
                }
            }
        }
        if (c->channel_scales)
            for (int o = 0; o < c->cout; o++)
                if (!isfinite(c->channel_scales[o]))
                    return kiln_fail(st, "artifact: conv %s: channel_scales[%d] is not finite", nm,
                                     o);
        break;
    }
    }
    return KILN_OK;
}

static kiln_status art_check_site(const kiln_art_site *s, size_t i, kiln_status st)
{
    if (!name_ok(s->name))
        return kiln_fail(st, "artifact: sites[%zu]: name is empty, not NUL-terminated within "
                         "%d bytes, or has non-printable characters", i, KILN_ART_NAME_MAX);
    const char *nm = s->name;
    if (s->enabled != 0 && s->enabled != 1)
        return kiln_fail(st, "artifact: site %s: enabled %d is not 0 or 1", nm, s->enabled);
    if (!isfinite(s->scale) || !isfinite(s->range_min) || !isfinite(s->range_max))
        return kiln_fail(st, "artifact: site %s: scale or range is not finite", nm);
    if (!s->enabled) return KILN_OK;
    if (!(s->scale > 0))
        return kiln_fail(st, "artifact: site %s: scale %g is not > 0", nm, (double)s->scale);
    if (s->qmin >= s->qmax)
        return kiln_fail(st, "artifact: site %s: qmin %d >= qmax %d", nm, s->qmin, s->qmax);
    if (s->zero_point < s->qmin || s->zero_point > s->qmax)
        return kiln_fail(st, "artifact: site %s: zero_point %d outside [%d, %d]", nm,
                         (int)s->zero_point, s->qmin, s->qmax);
    if (s->range_min > s->range_max)
        return kiln_fail(st, "artifact: site %s: range [%g, %g] has min > max", nm,
                         (double)s->range_min, (double)s->range_max);
    return KILN_OK;
}

/* Site i's name in the graph: its tensor's. */
static const char *graph_site_name(const kiln_graph *g, size_t i)
{
    return kiln_graph_tensor(g, (size_t)kiln_graph_site_tensor(g, i))->name;
}

/* convs[i] is weight i and sites[i] is site i of the graph. */
static kiln_status art_check_graph(const kiln_artifact *a, kiln_status st)
{
    const kiln_graph *g = a->graph;
    if (!g) return kiln_fail(st, "artifact: no graph (the network topology is missing)");
    if (kiln_graph_output(g) < 0) return kiln_fail(st, "artifact: the graph is not finished");
    if (kiln_graph_node_count(g) > ART_MAX_NODES)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: graph of %zu nodes exceeds the limit %d",
                         kiln_graph_node_count(g), ART_MAX_NODES);
    if (a->n_convs != kiln_graph_weight_count(g))
        return kiln_fail(st, "artifact: %zu convs, the graph has %zu weights", a->n_convs,
                         kiln_graph_weight_count(g));
    if (a->n_sites != kiln_graph_site_count(g))
        return kiln_fail(st, "artifact: %zu sites, the graph has %zu activation sites", a->n_sites,
                         kiln_graph_site_count(g));
    for (size_t i = 0; i < a->n_convs; i++) {
        const kiln_art_conv *c = &a->convs[i];
        const kiln_gweight *w = kiln_graph_weight(g, i);
        if (strcmp(c->name, w->name) != 0)
            return kiln_fail(st, "artifact: convs[%zu] is %s, graph weight %zu is %s", i, c->name, i,
                             w->name);
        if (c->cout != w->cout || c->cin != w->cin || c->k != w->k || c->groups != w->groups)
            return kiln_fail(st, "artifact: conv %s: shape [%d,%d,%d,%d] groups %d, the graph's "
                             "weight is [%d,%d,%d,%d] groups %d", c->name, c->cout, c->cin, c->k,
                             c->k, c->groups, w->cout, w->cin, w->k, w->k, w->groups);
        if ((c->bias != NULL) != (w->has_bias != 0))
            return kiln_fail(st, "artifact: conv %s: %s, the graph's weight %s", c->name,
                             c->bias ? "has a bias" : "has no bias",
                             w->has_bias ? "has one" : "has none");
    }
    for (size_t i = 0; i < a->n_sites; i++)
        if (strcmp(a->sites[i].name, graph_site_name(g, i)) != 0)
            return kiln_fail(st, "artifact: sites[%zu] is %s, graph site %zu is %s", i,
                             a->sites[i].name, i, graph_site_name(g, i));
    return KILN_OK;
}

/* The whole artifact; st is KILN_ERR_INVALID for the writer (caller's data)
 * and KILN_ERR_FORMAT for the reader (file content). */
static kiln_status art_check(const kiln_artifact *a, kiln_status st)
{
    if (a->n_convs > ART_MAX_CONVS || a->n_sites > ART_MAX_SITES)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: %zu convs / %zu sites exceed the limits "
                         "%d / %d", a->n_convs, a->n_sites, ART_MAX_CONVS, ART_MAX_SITES);
    if ((a->n_convs && !a->convs) || (a->n_sites && !a->sites))
        return kiln_fail(st, "artifact: convs or sites array missing");
    if (a->recipe && strlen(a->recipe) > ART_MAX_STR)
        return kiln_fail(st, "artifact: recipe longer than %d bytes", ART_MAX_STR);
    if (a->kiln_version && strlen(a->kiln_version) > ART_MAX_STR)
        return kiln_fail(st, "artifact: kiln_version longer than %d bytes", ART_MAX_STR);
    if (a->config_json && strlen(a->config_json) > ART_MAX_CONFIG)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: config JSON longer than %u bytes",
                         ART_MAX_CONFIG);
    if (!memchr(a->config_hash, '\0', sizeof a->config_hash) ||
        (a->config_hash[0] && !hex64_ok(a->config_hash)))
        return kiln_fail(st, "artifact: config_sha256 is neither empty nor 64 lower-case hex "
                         "digits");
    if (a->source_sha256 && !hex64_ok(a->source_sha256))
        return kiln_fail(st, "artifact: source_sha256 is not 64 lower-case hex digits");
    for (size_t i = 0; i < a->n_convs; i++) {
        kiln_status s = art_check_conv(&a->convs[i], i, st);
        if (s != KILN_OK) return s;
    }
    for (size_t i = 0; i < a->n_sites; i++) {
        kiln_status s = art_check_site(&a->sites[i], i, st);
        if (s != KILN_OK) return s;
    }
    return art_check_graph(a, st);
}

/* ------------------------------------------------------ create / free */

kiln_status kiln_artifact_create(size_t n_convs, size_t n_sites, kiln_artifact **out)
{
    *out = NULL;
    if (n_convs > ART_MAX_CONVS || n_sites > ART_MAX_SITES)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: %zu convs / %zu sites exceed the limits "
                         "%d / %d", n_convs, n_sites, ART_MAX_CONVS, ART_MAX_SITES);
    kiln_artifact *a = calloc(1, sizeof *a);
    if (!a) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory");
    a->convs = calloc(n_convs ? n_convs : 1, sizeof *a->convs);
    a->sites = calloc(n_sites ? n_sites : 1, sizeof *a->sites);
    if (!a->convs || !a->sites) {
        kiln_artifact_free(a);
        return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %zu convs, %zu sites",
                         n_convs, n_sites);
    }
    a->n_convs = n_convs;
    a->n_sites = n_sites;
    *out = a;
    return KILN_OK;
}

/* A topology-only copy: the JSON form carries no weight data. */
static kiln_status graph_topology(const kiln_graph *g, kiln_graph **out)
{
    *out = NULL;
    if (!g || kiln_graph_output(g) < 0) return kiln_fail(KILN_ERR_INVALID, "artifact: the graph is missing or not finished");
    char *text = kiln_graph_to_json(g);
    if (!text) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory serializing the graph");
    kiln_status st = kiln_graph_from_json(text, out);
    free(text);
    return st;
}

kiln_status kiln_artifact_set_graph(kiln_artifact *a, const kiln_graph *g)
{
    kiln_graph *t;
    kiln_status st = graph_topology(g, &t);
    if (st != KILN_OK) return st;
    kiln_graph_destroy(a->graph);
    a->graph = t;
    return KILN_OK;
}

kiln_status kiln_artifact_from_graph(const kiln_graph *g, kiln_artifact **out)
{
    *out = NULL;
    if (!g || kiln_graph_output(g) < 0) return kiln_fail(KILN_ERR_INVALID, "artifact: the graph is missing or not finished");
    kiln_artifact *a;
    kiln_status st = kiln_artifact_create(kiln_graph_weight_count(g), kiln_graph_site_count(g), &a);
    if (st != KILN_OK) return st;
    if ((st = kiln_artifact_set_graph(a, g)) != KILN_OK) {
        kiln_artifact_free(a);
        return st;
    }
    for (size_t i = 0; i < a->n_convs; i++) {
        const kiln_gweight *w = kiln_graph_weight(g, i);
        kiln_art_conv *c = &a->convs[i];
        snprintf(c->name, sizeof c->name, "%s", w->name);
        c->cout = w->cout;
        c->cin = w->cin;
        c->k = w->k;
        c->groups = w->groups;
        c->kind = KILN_WK_F32;
    }
    for (size_t i = 0; i < a->n_sites; i++)
        snprintf(a->sites[i].name, sizeof a->sites[i].name, "%s", graph_site_name(g, i));
    *out = a;
    return KILN_OK;
}

int kiln_artifact_scale(const kiln_artifact *a) { return a && a->graph ? kiln_graph_scale(a->graph) : 0; }

size_t kiln_art_conv_numel(const kiln_art_conv *c)
{
    int g = c->groups > 0 ? c->groups : 1;
    return (size_t)c->cout * (size_t)(c->cin / g) * (size_t)c->k * (size_t)c->k;
}

void kiln_artifact_free(kiln_artifact *a)
{
    if (!a) return;
    kiln_graph_destroy(a->graph);
    for (size_t i = 0; a->convs && i < a->n_convs; i++) {
        kiln_art_conv *c = &a->convs[i];
        free(c->bias);
        free(c->weight);
        free(c->codes);
        free(c->scales);
        free(c->zero_points);
        free(c->indices);
        free(c->lut);
        free(c->lut_q);
        free(c->lut_scales);
        free(c->channel_scales);
    }
    free(a->convs);
    free(a->sites);
    free(a->recipe);
    free(a->config_json);
    free(a->kiln_version);
    free(a->source_sha256);
    free(a);
}

/* ----------------------------------------------------------------- sizes */

size_t kiln_art_conv_bias_bytes(const kiln_art_conv *c) { return c->bias ? 4 * (size_t)c->cout : 0; }

size_t kiln_art_conv_weight_bytes(const kiln_art_conv *c)
{
    uint64_t numel = kiln_art_conv_numel(c);
    uint64_t n = 0;
    switch (c->kind) {
    case KILN_WK_F32: n = 4 * numel; break;
    case KILN_WK_INT: n = packed_bytes(numel, c->bits) + 4 * (uint64_t)c->n_scales; break;
    case KILN_WK_PALETTE: {
        uint64_t entries = (uint64_t)c->n_luts << c->n_bits;
        n = packed_bytes(numel, c->n_bits);
        n += c->lut_q ? entries + 4 * (uint64_t)c->n_luts : 4 * entries;
        if (c->channel_scales) n += 4 * (uint64_t)c->cout;
        break;
    }
    }
    return (size_t)n + kiln_art_conv_bias_bytes(c);
}

size_t kiln_artifact_weight_bytes(const kiln_artifact *a)
{
    size_t n = 0;
    for (size_t i = 0; i < a->n_convs; i++) n += kiln_art_conv_weight_bytes(&a->convs[i]);
    return n;
}

size_t kiln_artifact_bias_bytes(const kiln_artifact *a)
{
    size_t n = 0;
    for (size_t i = 0; i < a->n_convs; i++) n += kiln_art_conv_bias_bytes(&a->convs[i]);
    return n;
}

/* ------------------------------------------------------------ dequantize */

kiln_status kiln_art_conv_dequantize(const kiln_art_conv *c, float *out)
{
    kiln_status st = art_check_conv(c, 0, KILN_ERR_INVALID);
    if (st != KILN_OK) return st;
    size_t per_out = (size_t)(c->cin / c->groups) * (size_t)c->k * (size_t)c->k;
    size_t numel = (size_t)c->cout * per_out;
    switch (c->kind) {
    case KILN_WK_F32:
        memcpy(out, c->weight, numel * sizeof *out);
        break;
    case KILN_WK_INT: {
        size_t bs = c->granularity == KILN_QG_PER_BLOCK ? (size_t)c->block_size : 1;
        size_t nb = (per_out + bs - 1) / bs;
        for (size_t j = 0; j < numel; j++) {
            size_t o = j / per_out, b = 0;
            if (c->granularity == KILN_QG_PER_CHANNEL) b = o;
            else if (c->granularity == KILN_QG_PER_BLOCK) b = o * nb + (j % per_out) / bs;
            out[j] = (float)(c->codes[j] - c->zero_points[b]) * c->scales[b];
        }
        break;
    }
    case KILN_WK_PALETTE:
        for (size_t j = 0; j < numel; j++) {
            size_t o = j / per_out, g = o / (size_t)c->group_size;
            float v = c->lut[(g << c->n_bits) + c->indices[j]];
            out[j] = c->channel_scales ? v * c->channel_scales[o] : v;
        }
        break;
    }
    return KILN_OK;
}

/* -------------------------------------------------------------- encode */

static json_t *jhexf(float f)
{
    char buf[48];
    snprintf(buf, sizeof buf, "%a", (double)f);
    return json_string(buf);
}

static json_t *jstr_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static const char *int_gran_name(int g)
{
    return g == KILN_QG_PER_TENSOR ? "per_tensor" : g == KILN_QG_PER_CHANNEL ? "per_channel"
                                                                             : "per_block";
}
static const char *kind_name(kiln_wkind k)
{
    return k == KILN_WK_F32 ? "f32" : k == KILN_WK_INT ? "int" : "palette";
}

/* json_object_set_new that remembers an allocation failure. */
static void jset(json_t *o, const char *key, json_t *v, int *oom)
{
    if (!o || !v || json_object_set_new(o, key, v) != 0) *oom = 1;
}
static void jappend(json_t *arr, json_t *v, int *oom)
{
    if (!arr || !v || json_array_append_new(arr, v) != 0) *oom = 1;
}

static json_t *conv_manifest(const kiln_art_conv *c, const art_tensor *t, int nt, int *oom)
{
    json_t *o = json_object();
    jset(o, "name", json_string(c->name), oom);
    json_t *shape = json_array();
    jappend(shape, json_integer(c->cout), oom);
    jappend(shape, json_integer(c->cin / c->groups), oom);
    jappend(shape, json_integer(c->k), oom);
    jappend(shape, json_integer(c->k), oom);
    jset(o, "shape", shape, oom);
    jset(o, "groups", json_integer(c->groups), oom);
    jset(o, "kind", json_string(kind_name(c->kind)), oom);
    if (c->kind == KILN_WK_INT) {
        jset(o, "bits", json_integer(c->bits), oom);
        jset(o, "signed", json_boolean(c->is_signed), oom);
        jset(o, "granularity", json_string(int_gran_name(c->granularity)), oom);
        if (c->granularity == KILN_QG_PER_BLOCK)
            jset(o, "block_size", json_integer(c->block_size), oom);
        jset(o, "n_scales", json_integer((json_int_t)c->n_scales), oom);
    } else if (c->kind == KILN_WK_PALETTE) {
        jset(o, "n_bits", json_integer(c->n_bits), oom);
        jset(o, "granularity",
             json_string(c->n_luts == 1 ? "per_tensor" : "per_grouped_channel"), oom);
        jset(o, "group_size", json_integer(c->group_size), oom);
        jset(o, "n_luts", json_integer(c->n_luts), oom);
        jset(o, "lut_dtype", json_string(c->lut_q ? "int8" : "float32"), oom);
        jset(o, "channel_scales", json_boolean(c->channel_scales != NULL), oom);
    }
    json_t *tensors = json_object();
    for (int i = 0; i < nt; i++) {
        json_t *e = json_object();
        jset(e, "dtype", json_string(t[i].dtype), oom);
        jset(e, "offset", json_integer((json_int_t)t[i].offset), oom);
        jset(e, "length", json_integer((json_int_t)t[i].length), oom);
        json_t *sh = json_array();
        for (int d = 0; d < t[i].ndim; d++) jappend(sh, json_integer(t[i].shape[d]), oom);
        jset(e, "shape", sh, oom);
        jset(tensors, t[i].name, e, oom);
    }
    jset(o, "tensors", tensors, oom);
    return o;
}

static json_t *site_manifest(const kiln_art_site *s, int *oom)
{
    json_t *o = json_object();
    jset(o, "name", json_string(s->name), oom);
    jset(o, "enabled", json_boolean(s->enabled), oom);
    jset(o, "scale", jhexf(s->scale), oom);
    jset(o, "zero_point", json_integer(s->zero_point), oom);
    jset(o, "qmin", json_integer(s->qmin), oom);
    jset(o, "qmax", json_integer(s->qmax), oom);
    json_t *r = json_array();
    jappend(r, jhexf(s->range_min), oom);
    jappend(r, jhexf(s->range_max), oom);
    jset(o, "range", r, oom);
    return o;
}

static void write_f32(uint8_t *p, const float *v, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) put_le32(p + 4 * i, f2u(v[i]));
}

/* Writes one tensor's elements at p (zeroed, t->length bytes). */
static void write_tensor(const kiln_art_conv *c, const art_tensor *t, uint8_t *p)
{
    const char *nm = t->name;
    if (!strcmp(nm, "weight")) write_f32(p, c->weight, t->numel);
    else if (!strcmp(nm, "bias")) write_f32(p, c->bias, t->numel);
    else if (!strcmp(nm, "scales")) write_f32(p, c->scales, t->numel);
    else if (!strcmp(nm, "lut")) write_f32(p, c->lut, t->numel);
    else if (!strcmp(nm, "lut_scales")) write_f32(p, c->lut_scales, t->numel);
    else if (!strcmp(nm, "channel_scales")) write_f32(p, c->channel_scales, t->numel);
    else if (!strcmp(nm, "zero_points")) {
        for (uint64_t i = 0; i < t->numel; i++) put_le32(p + 4 * i, (uint32_t)c->zero_points[i]);
    } else if (!strcmp(nm, "lut_int8")) {
        for (uint64_t i = 0; i < t->numel; i++) p[i] = (uint8_t)c->lut_q[i];
    } else if (!strcmp(nm, "codes")) {
        bitw w = {p, 0, 0};
        for (uint64_t i = 0; i < t->numel; i++) bitw_put(&w, (uint32_t)(int32_t)c->codes[i], t->bits);
        bitw_flush(&w);
    } else if (!strcmp(nm, "indices")) {
        bitw w = {p, 0, 0};
        for (uint64_t i = 0; i < t->numel; i++) bitw_put(&w, c->indices[i], t->bits);
        bitw_flush(&w);
    }
}

kiln_status kiln_artifact_encode(const kiln_artifact *a, void **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (!a) return kiln_fail(KILN_ERR_INVALID, "artifact: encode of a NULL artifact");
    kiln_status st = art_check(a, KILN_ERR_INVALID);
    if (st != KILN_OK) return st;

    art_tensor *tabs = calloc(a->n_convs ? a->n_convs : 1, ART_MAX_TENSORS * sizeof *tabs);
    int *counts = calloc(a->n_convs ? a->n_convs : 1, sizeof *counts);
    if (!tabs || !counts) {
        free(tabs);
        free(counts);
        return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for the tensor table");
    }
    /* Canonical layout: consecutive, each tensor 64-aligned within the blob. */
    uint64_t blob_len = 0;
    for (size_t i = 0; i < a->n_convs; i++) {
        art_tensor *t = tabs + i * ART_MAX_TENSORS;
        const kiln_art_conv *c = &a->convs[i];
        counts[i] = art_conv_tensors(c, c->lut_q != NULL, c->channel_scales != NULL, c->bias != NULL, t);
        for (int j = 0; j < counts[i]; j++) {
            t[j].offset = align64(blob_len);
            blob_len = t[j].offset + t[j].length;
        }
    }

    int oom = 0;
    json_t *m = json_object();
    jset(m, "format", json_integer(ART_VERSION), &oom);
    jset(m, "kiln_version", jstr_or_null(a->kiln_version), &oom);
    jset(m, "recipe", jstr_or_null(a->recipe), &oom);
    jset(m, "config_sha256", json_string(a->config_hash), &oom);
    jset(m, "config", jstr_or_null(a->config_json), &oom);
    char *gtext = kiln_graph_to_json(a->graph);
    json_error_t gerr;
    jset(m, "graph", gtext ? json_loads(gtext, 0, &gerr) : NULL, &oom);
    free(gtext);
    jset(m, "source_sha256", jstr_or_null(a->source_sha256), &oom);
    json_t *convs = json_array();
    for (size_t i = 0; i < a->n_convs && !oom; i++)
        jappend(convs, conv_manifest(&a->convs[i], tabs + i * ART_MAX_TENSORS, counts[i], &oom),
                &oom);
    jset(m, "convs", convs, &oom);
    json_t *sites = json_array();
    for (size_t i = 0; i < a->n_sites && !oom; i++)
        jappend(sites, site_manifest(&a->sites[i], &oom), &oom);
    jset(m, "sites", sites, &oom);
    char *text = oom ? NULL : json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(m);
    if (!text) {
        free(tabs);
        free(counts);
        return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory building the manifest");
    }

    uint64_t mlen = strlen(text);
    uint64_t blob_off = align64(ART_HEADER_SIZE + mlen);
    uint64_t total = blob_off + blob_len;
    uint8_t *out = calloc(1, (size_t)total);
    if (!out) {
        free(text);
        free(tabs);
        free(counts);
        return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %llu bytes",
                         (unsigned long long)total);
    }
    memcpy(out + ART_HEADER_SIZE, text, (size_t)mlen);
    free(text);
    for (size_t i = 0; i < a->n_convs; i++) {
        art_tensor *t = tabs + i * ART_MAX_TENSORS;
        for (int j = 0; j < counts[i]; j++)
            write_tensor(&a->convs[i], &t[j], out + blob_off + t[j].offset);
    }
    free(tabs);
    free(counts);

    kiln__art_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, kMagic, 8);
    h.version = ART_VERSION;
    h.header_size = ART_HEADER_SIZE;
    h.manifest_offset = ART_HEADER_SIZE;
    h.manifest_length = mlen;
    h.blob_offset = blob_off;
    h.blob_length = blob_len;
    h.file_length = total;
    kiln_sha256(out + ART_HEADER_SIZE, (size_t)(total - ART_HEADER_SIZE), h.sha256);
    header_store(&h, out);
    *buf = out;
    *len = (size_t)total;
    return KILN_OK;
}

/* -------------------------------------------------------------- decode */

/* Manifest accessors: each names the JSON path of what it rejects. */
static kiln_status jget(json_t *o, const char *ctx, const char *key, json_type type,
                        json_t **out)
{
    json_t *v = json_object_get(o, key);
    if (!v) return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: key \"%s\" missing", ctx, key);
    if (json_typeof(v) != type && !(type == JSON_TRUE && json_is_boolean(v)))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: key \"%s\" has the wrong type",
                         ctx, key);
    *out = v;
    return KILN_OK;
}

static kiln_status jget_int(json_t *o, const char *ctx, const char *key, long long lo,
                            long long hi, long long *out)
{
    json_t *v = NULL;
    kiln_status st = jget(o, ctx, key, JSON_INTEGER, &v);
    if (st != KILN_OK) return st;
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: \"%s\" = %lld not in [%lld, "
                         "%lld]", ctx, key, x, lo, hi);
    *out = x;
    return KILN_OK;
}

static kiln_status jget_bool(json_t *o, const char *ctx, const char *key, int *out)
{
    json_t *v = NULL;
    kiln_status st = jget(o, ctx, key, JSON_TRUE, &v);
    if (st == KILN_OK) *out = json_is_true(v);
    return st;
}

/* A string without embedded NULs, at most max bytes. */
static kiln_status jstring_ok(json_t *v, const char *ctx, const char *key, size_t max)
{
    size_t n = json_string_length(v);
    if (strlen(json_string_value(v)) != n || n > max)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: \"%s\" contains NUL or is "
                         "longer than %zu bytes", ctx, key, max);
    return KILN_OK;
}

static kiln_status jget_str(json_t *o, const char *ctx, const char *key, size_t max,
                            const char **out)
{
    json_t *v = NULL;
    kiln_status st = jget(o, ctx, key, JSON_STRING, &v);
    if (st == KILN_OK) st = jstring_ok(v, ctx, key, max);
    if (st == KILN_OK) *out = json_string_value(v);
    return st;
}

/* Optional string: JSON null → NULL, else a malloc'ed copy. */
static kiln_status jget_strdup_or_null(json_t *o, const char *ctx, const char *key, size_t max,
                                       char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v) return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: key \"%s\" missing", ctx, key);
    *out = NULL;
    if (json_is_null(v)) return KILN_OK;
    if (!json_is_string(v))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: \"%s\" is neither a string nor "
                         "null", ctx, key);
    kiln_status st = jstring_ok(v, ctx, key, max);
    if (st != KILN_OK) return st;
    *out = strdup(json_string_value(v));
    if (!*out) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory");
    return KILN_OK;
}

/* A float written as a C99 hex string that is exactly a float32. */
static kiln_status parse_hexf(json_t *v, const char *ctx, const char *key, float *out)
{
    if (!json_is_string(v))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: \"%s\" is not a hex-float "
                         "string", ctx, key);
    const char *s = json_string_value(v), *p = s;
    if (*p == '-') p++;
    char *end = NULL;
    double d = 0;
    int ok = json_string_length(v) < 48 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
    if (ok) {
        errno = 0;
        d = strtod(s, &end);
        ok = end != s && *end == '\0' && isfinite(d) && (double)(float)d == d;
    }
    if (!ok)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: \"%s\" = \"%.48s\" is not a "
                         "finite float32 in hex (\"%%a\") form", ctx, key, s);
    *out = (float)d;
    return KILN_OK;
}

static kiln_status jget_hexf(json_t *o, const char *ctx, const char *key, float *out)
{
    json_t *v = json_object_get(o, key);
    if (!v) return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: key \"%s\" missing", ctx, key);
    return parse_hexf(v, ctx, key, out);
}

static kiln_status jget_name(json_t *o, const char *ctx, char name[KILN_ART_NAME_MAX])
{
    const char *s;
    kiln_status st = jget_str(o, ctx, "name", KILN_ART_NAME_MAX - 1, &s);
    if (st != KILN_OK) return st;
    memset(name, 0, KILN_ART_NAME_MAX);
    memcpy(name, s, strlen(s));
    if (!name_ok(name))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: \"name\" is empty or has "
                         "non-printable characters", ctx);
    return KILN_OK;
}

static void *xcalloc(uint64_t n, size_t size)
{
    return calloc(n ? (size_t)n : 1, size);
}

/* Checks one tensor-table entry against what the conv's fields imply and
 * copies its elements into the conv's freshly allocated array. */
static kiln_status read_tensor(kiln_art_conv *c, json_t *tensors, const char *ctx,
                               const art_tensor *t, const uint8_t *blob)
{
    char tctx[160];
    snprintf(tctx, sizeof tctx, "%s tensor \"%s\"", ctx, t->name);
    json_t *e;
    kiln_status st = jget(tensors, ctx, t->name, JSON_OBJECT, &e);
    if (st != KILN_OK) return st;
    const char *dtype;
    long long off, len;
    json_t *shape;
    if ((st = jget_str(e, tctx, "dtype", 16, &dtype)) != KILN_OK) return st;
    if (strcmp(dtype, t->dtype) != 0)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: dtype \"%s\", expected \"%s\"",
                         tctx, dtype, t->dtype);
    if ((st = jget_int(e, tctx, "offset", 0, INT64_MAX, &off)) != KILN_OK) return st;
    if ((st = jget_int(e, tctx, "length", 0, INT64_MAX, &len)) != KILN_OK) return st;
    if ((uint64_t)off != t->offset)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: offset %lld, expected %llu "
                         "(64-aligned, right after the previous tensor)", tctx, off,
                         (unsigned long long)t->offset);
    if ((uint64_t)len != t->length)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: length %lld, expected %llu for "
                         "%llu elements of %s", tctx, len, (unsigned long long)t->length,
                         (unsigned long long)t->numel, t->dtype);
    if ((st = jget(e, tctx, "shape", JSON_ARRAY, &shape)) != KILN_OK) return st;
    if ((int)json_array_size(shape) != t->ndim)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: shape has %zu dimensions, "
                         "expected %d", tctx, json_array_size(shape), t->ndim);
    for (int d = 0; d < t->ndim; d++) {
        json_t *x = json_array_get(shape, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) != t->shape[d])
            return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: shape[%d] is not %lld",
                             tctx, d, (long long)t->shape[d]);
    }

    const uint8_t *p = blob + t->offset;
    uint64_t n = t->numel;
    float **fdst = NULL;
    const char *nm = t->name;
    if (!strcmp(nm, "weight")) fdst = &c->weight;
    else if (!strcmp(nm, "bias")) fdst = &c->bias;
    else if (!strcmp(nm, "scales")) fdst = &c->scales;
    else if (!strcmp(nm, "lut")) fdst = &c->lut;
    else if (!strcmp(nm, "lut_scales")) fdst = &c->lut_scales;
    else if (!strcmp(nm, "channel_scales")) fdst = &c->channel_scales;
    if (fdst) {
        float *v = xcalloc(n, sizeof *v);
        if (!v) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s", tctx);
        for (uint64_t i = 0; i < n; i++) v[i] = u2f(get_le32(p + 4 * i));
        *fdst = v;
        return KILN_OK;
    }
    if (!strcmp(nm, "zero_points")) {
        c->zero_points = xcalloc(n, sizeof *c->zero_points);
        if (!c->zero_points) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s", tctx);
        for (uint64_t i = 0; i < n; i++) c->zero_points[i] = (int32_t)get_le32(p + 4 * i);
        return KILN_OK;
    }
    if (!strcmp(nm, "lut_int8")) {
        c->lut_q = xcalloc(n, 1);
        if (!c->lut_q) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s", tctx);
        for (uint64_t i = 0; i < n; i++) c->lut_q[i] = (int8_t)p[i];
        return KILN_OK;
    }
    bitr r = {p, 0, 0};
    if (!strcmp(nm, "codes")) {
        c->codes = xcalloc(n, sizeof *c->codes);
        if (!c->codes) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s", tctx);
        for (uint64_t i = 0; i < n; i++) {
            uint32_t u = bitr_get(&r, t->bits);
            int v = (int)u;
            if (t->is_signed && (u >> (t->bits - 1))) v -= 1 << t->bits;
            c->codes[i] = (int16_t)v;
        }
    } else { /* indices */
        c->indices = xcalloc(n, 1);
        if (!c->indices) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s", tctx);
        for (uint64_t i = 0; i < n; i++) c->indices[i] = (uint8_t)bitr_get(&r, t->bits);
    }
    if (r.acc != 0)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: %s: unused bits of its last byte (blob "
                         "offset %llu) are not zero", tctx,
                         (unsigned long long)(t->offset + t->length - 1));
    return KILN_OK;
}

/* Reads convs[i]: scalar fields first (validated), then the tensors.
 * Version 1 convs have no "groups" (1) and always a bias; from version 2 the
 * graph's weight says whether there is one. */
static kiln_status read_conv(kiln_art_conv *c, json_t *o, size_t i, uint32_t version, int has_bias,
                             const uint8_t *blob, uint64_t blob_len, uint64_t *cursor)
{
    char ctx[128];
    snprintf(ctx, sizeof ctx, "convs[%zu]", i);
    if (!json_is_object(o))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s is not an object", ctx);
    kiln_status st = jget_name(o, ctx, c->name);
    if (st != KILN_OK) return st;
    snprintf(ctx, sizeof ctx, "convs[%zu] (%s)", i, c->name);

    json_t *shape;
    if ((st = jget(o, ctx, "shape", JSON_ARRAY, &shape)) != KILN_OK) return st;
    long long d[4];
    if (json_array_size(shape) != 4)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: shape must have 4 dimensions",
                         ctx);
    for (int j = 0; j < 4; j++) {
        json_t *x = json_array_get(shape, (size_t)j);
        if (!json_is_integer(x) || json_integer_value(x) < 1 ||
            json_integer_value(x) > ART_MAX_DIM)
            return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: shape[%d] is not an "
                             "integer in [1, %d]", ctx, j, ART_MAX_DIM);
        d[j] = json_integer_value(x);
    }
    if (d[2] != d[3])
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: kernel %lldx%lld is not square",
                         ctx, d[2], d[3]);
    c->cout = (int)d[0];
    c->cin = (int)d[1];
    c->k = (int)d[2];
    c->groups = 1;
    long long v;
    if (version >= 2) {
        if ((st = jget_int(o, ctx, "groups", 1, ART_MAX_DIM, &v)) != KILN_OK) return st;
        if (d[1] * v > ART_MAX_DIM)
            return kiln_fail(KILN_ERR_LIMIT, "artifact: manifest %s: %lld groups of %lld input "
                             "channels exceed the limit %d", ctx, v, d[1], ART_MAX_DIM);
        c->groups = (int)v;
        c->cin = (int)(d[1] * v);
    }

    const char *kind;
    if ((st = jget_str(o, ctx, "kind", 16, &kind)) != KILN_OK) return st;
    int has_lut_q = 0, has_cs = 0;
    if (!strcmp(kind, "f32")) {
        c->kind = KILN_WK_F32;
    } else if (!strcmp(kind, "int")) {
        c->kind = KILN_WK_INT;
        const char *g;
        if ((st = jget_int(o, ctx, "bits", 1, 32, &v)) != KILN_OK) return st;
        c->bits = (int)v;
        if ((st = jget_bool(o, ctx, "signed", &c->is_signed)) != KILN_OK) return st;
        if ((st = jget_str(o, ctx, "granularity", 32, &g)) != KILN_OK) return st;
        if (!strcmp(g, "per_tensor")) c->granularity = KILN_QG_PER_TENSOR;
        else if (!strcmp(g, "per_channel")) c->granularity = KILN_QG_PER_CHANNEL;
        else if (!strcmp(g, "per_block")) c->granularity = KILN_QG_PER_BLOCK;
        else
            return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: granularity \"%s\" is not "
                             "per_tensor, per_channel or per_block", ctx, g);
        if (c->granularity == KILN_QG_PER_BLOCK) {
            if ((st = jget_int(o, ctx, "block_size", 1, (long long)d[1] * c->k * c->k, &v)) !=
                KILN_OK)
                return st;
            c->block_size = (int)v;
        }
        if ((st = jget_int(o, ctx, "n_scales", 1, (long long)ART_MAX_NUMEL, &v)) != KILN_OK)
            return st;
        c->n_scales = (size_t)v;
    } else if (!strcmp(kind, "palette")) {
        c->kind = KILN_WK_PALETTE;
        const char *g, *ld;
        if ((st = jget_int(o, ctx, "n_bits", 1, 8, &v)) != KILN_OK) return st;
        c->n_bits = (int)v;
        if ((st = jget_str(o, ctx, "granularity", 32, &g)) != KILN_OK) return st;
        if ((st = jget_int(o, ctx, "group_size", 1, ART_MAX_DIM, &v)) != KILN_OK) return st;
        c->group_size = (int)v;
        if ((st = jget_int(o, ctx, "n_luts", 1, ART_MAX_DIM, &v)) != KILN_OK) return st;
        c->n_luts = (int)v;
        if (strcmp(g, c->n_luts == 1 ? "per_tensor" : "per_grouped_channel") != 0)
            return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: granularity \"%s\" does "
                             "not match n_luts %d", ctx, g, c->n_luts);
        if ((st = jget_str(o, ctx, "lut_dtype", 16, &ld)) != KILN_OK) return st;
        if ((st = jget_bool(o, ctx, "channel_scales", &has_cs)) != KILN_OK) return st;
        if (strcmp(ld, "int8") != 0 && strcmp(ld, "float32") != 0)
            return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: lut_dtype \"%s\" is not "
                             "int8 or float32", ctx, ld);
        has_lut_q = !strcmp(ld, "int8");
    } else {
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: kind \"%s\" is not f32, int or "
                         "palette", ctx, kind);
    }
    if ((st = art_check_conv_shape(c, i, KILN_ERR_FORMAT)) != KILN_OK) return st;
    art_tensor t[ART_MAX_TENSORS];
    int nt = art_conv_tensors(c, has_lut_q, has_cs, has_bias, t);

    json_t *tensors;
    if ((st = jget(o, ctx, "tensors", JSON_OBJECT, &tensors)) != KILN_OK) return st;
    if ((int)json_object_size(tensors) != nt)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: %zu tensors, expected %d for "
                         "its kind", ctx, json_object_size(tensors), nt);
    for (int j = 0; j < nt; j++) {
        t[j].offset = align64(*cursor);
        if (t[j].offset > blob_len || t[j].length > blob_len - t[j].offset)
            return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s tensor \"%s\": [%llu, +%llu) "
                             "runs past the blob section (%llu bytes)", ctx, t[j].name,
                             (unsigned long long)t[j].offset, (unsigned long long)t[j].length,
                             (unsigned long long)blob_len);
        for (uint64_t z = *cursor; z < t[j].offset; z++)
            if (blob[z])
                return kiln_fail(KILN_ERR_FORMAT, "artifact: padding byte at blob offset %llu "
                                 "is not zero", (unsigned long long)z);
        *cursor = t[j].offset + t[j].length;
        if ((st = read_tensor(c, tensors, ctx, &t[j], blob)) != KILN_OK) return st;
    }
    if (c->lut_q) {
        /* The float LUT is derived, exactly as the writer required it. */
        unsigned entries = 1u << c->n_bits;
        c->lut = xcalloc((uint64_t)c->n_luts * entries, sizeof *c->lut);
        if (!c->lut) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for %s lut", ctx);
        for (size_t j = 0; j < (size_t)c->n_luts * entries; j++)
            c->lut[j] = (float)c->lut_q[j] * c->lut_scales[j / entries];
    }
    return KILN_OK;
}

static kiln_status read_site(kiln_art_site *s, json_t *o, size_t i)
{
    char ctx[128];
    snprintf(ctx, sizeof ctx, "sites[%zu]", i);
    if (!json_is_object(o))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s is not an object", ctx);
    kiln_status st = jget_name(o, ctx, s->name);
    if (st != KILN_OK) return st;
    snprintf(ctx, sizeof ctx, "sites[%zu] (%s)", i, s->name);
    long long v;
    json_t *r;
    if ((st = jget_bool(o, ctx, "enabled", &s->enabled)) != KILN_OK) return st;
    if ((st = jget_hexf(o, ctx, "scale", &s->scale)) != KILN_OK) return st;
    if ((st = jget_int(o, ctx, "zero_point", INT32_MIN, INT32_MAX, &v)) != KILN_OK) return st;
    s->zero_point = (int32_t)v;
    if ((st = jget_int(o, ctx, "qmin", INT32_MIN, INT32_MAX, &v)) != KILN_OK) return st;
    s->qmin = (int)v;
    if ((st = jget_int(o, ctx, "qmax", INT32_MIN, INT32_MAX, &v)) != KILN_OK) return st;
    s->qmax = (int)v;
    if ((st = jget(o, ctx, "range", JSON_ARRAY, &r)) != KILN_OK) return st;
    if (json_array_size(r) != 2)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest %s: range must be [min, max]", ctx);
    if ((st = parse_hexf(json_array_get(r, 0), ctx, "range[0]", &s->range_min)) != KILN_OK)
        return st;
    if ((st = parse_hexf(json_array_get(r, 1), ctx, "range[1]", &s->range_max)) != KILN_OK)
        return st;
    return KILN_OK;
}

/* A graph failure reported as a manifest failure: every status but the
 * limits and memory becomes format (the file is what is wrong). */
static kiln_status graph_fail(kiln_status st, const char *what)
{
    if (st != KILN_ERR_LIMIT && st != KILN_ERR_NOMEM) st = KILN_ERR_FORMAT;
    kiln_errmsg_prefix("artifact: manifest %s: ", what);
    return st;
}

/* The topology: version 2's "graph" object, or EDSR's graph rebuilt from
 * version 1's "arch" object. */
static kiln_status read_graph(json_t *m, uint32_t version, kiln_graph **out)
{
    kiln_status st;
    json_t *o;
    long long v;
    if (version == 1) {
        int R, F, scale;
        float rs;
        if ((st = jget(m, "", "arch", JSON_OBJECT, &o)) != KILN_OK) return st;
        if ((st = jget_int(o, "arch", "resblocks", 0, ART_MAX_RESBLOCKS, &v)) != KILN_OK) return st;
        R = (int)v;
        if ((st = jget_int(o, "arch", "features", 1, ART_MAX_DIM, &v)) != KILN_OK) return st;
        F = (int)v;
        if ((st = jget_int(o, "arch", "scale", 1, 8, &v)) != KILN_OK) return st;
        scale = (int)v;
        if ((st = jget_hexf(o, "arch", "res_scale", &rs)) != KILN_OK) return st;
        st = kiln_arch_edsr_topology(R, F, scale, rs, out);
        return st == KILN_OK ? st : graph_fail(st, "arch");
    }
    if ((st = jget(m, "", "graph", JSON_OBJECT, &o)) != KILN_OK) return st;
    json_t *nodes = json_object_get(o, "nodes"), *weights = json_object_get(o, "weights");
    if (json_array_size(nodes) > ART_MAX_NODES || json_array_size(weights) > ART_MAX_CONVS)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: manifest graph: %zu nodes / %zu weights exceed "
                         "the limits %d / %d", json_array_size(nodes), json_array_size(weights),
                         ART_MAX_NODES, ART_MAX_CONVS);
    char *text = json_dumps(o, JSON_COMPACT);
    if (!text) return kiln_fail(KILN_ERR_NOMEM, "artifact: out of memory for the graph");
    st = kiln_graph_from_json(text, out);
    free(text);
    return st == KILN_OK ? st : graph_fail(st, "graph");
}

static kiln_status read_manifest(json_t *m, uint32_t version, const uint8_t *blob,
                                 uint64_t blob_len, kiln_artifact **out)
{
    kiln_status st;
    json_t *convs, *sites;
    long long v;
    if (!json_is_object(m))
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest is not a JSON object");
    if ((st = jget_int(m, "", "format", version, version, &v)) != KILN_OK) return st;
    if ((st = jget(m, "", "convs", JSON_ARRAY, &convs)) != KILN_OK) return st;
    if ((st = jget(m, "", "sites", JSON_ARRAY, &sites)) != KILN_OK) return st;
    if (json_array_size(convs) > ART_MAX_CONVS || json_array_size(sites) > ART_MAX_SITES)
        return kiln_fail(KILN_ERR_LIMIT, "artifact: manifest: %zu convs / %zu sites exceed the "
                         "limits %d / %d", json_array_size(convs), json_array_size(sites),
                         ART_MAX_CONVS, ART_MAX_SITES);
    kiln_artifact *a;
    if ((st = kiln_artifact_create(json_array_size(convs), json_array_size(sites), &a)) != KILN_OK)
        return st;

    const char *hash;
    if ((st = jget_strdup_or_null(m, "", "kiln_version", ART_MAX_STR, &a->kiln_version))) goto fail;
    if ((st = jget_strdup_or_null(m, "", "recipe", ART_MAX_STR, &a->recipe))) goto fail;
    if ((st = jget_str(m, "", "config_sha256", 64, &hash))) goto fail;
    memcpy(a->config_hash, hash, strlen(hash) + 1);
    if ((st = jget_strdup_or_null(m, "", "config", ART_MAX_CONFIG, &a->config_json))) goto fail;
    if ((st = read_graph(m, version, &a->graph))) goto fail;
    if ((st = jget_strdup_or_null(m, "", "source_sha256", 64, &a->source_sha256))) goto fail;
    if (a->n_convs != kiln_graph_weight_count(a->graph) || a->n_sites != kiln_graph_site_count(a->graph)) {
        st = kiln_fail(KILN_ERR_FORMAT, "artifact: manifest: %zu convs and %zu sites, the graph has "
                       "%zu weights and %zu activation sites", a->n_convs, a->n_sites,
                       kiln_graph_weight_count(a->graph), kiln_graph_site_count(a->graph));
        goto fail;
    }

    uint64_t cursor = 0;
    for (size_t i = 0; i < a->n_convs; i++) {
        int has_bias = version == 1 || kiln_graph_weight(a->graph, i)->has_bias;
        if ((st = read_conv(&a->convs[i], json_array_get(convs, i), i, version, has_bias, blob,
                            blob_len, &cursor)))
            goto fail;
    }
    if (cursor != blob_len) {
        st = kiln_fail(KILN_ERR_FORMAT, "artifact: blob section is %llu bytes, the tensors end at "
                       "%llu", (unsigned long long)blob_len, (unsigned long long)cursor);
        goto fail;
    }
    for (size_t i = 0; i < a->n_sites; i++)
        if ((st = read_site(&a->sites[i], json_array_get(sites, i), i))) goto fail;
    /* Cross-field invariants, the same ones the writer enforced. */
    if ((st = art_check(a, KILN_ERR_FORMAT))) goto fail;
    *out = a;
    return KILN_OK;
fail:
    kiln_artifact_free(a);
    return st;
}

int kiln_artifact_sniff(const void *buf, size_t len)
{
    return buf && len >= sizeof kMagic && memcmp(buf, kMagic, sizeof kMagic) == 0;
}

kiln_status kiln_artifact_decode(const void *buf, size_t len, kiln_artifact **out)
{
    *out = NULL;
    const uint8_t *p = buf;
    if (!buf || len < ART_HEADER_SIZE)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: %zu bytes is shorter than the %u-byte header",
                         len, ART_HEADER_SIZE);
    kiln__art_header h;
    header_load(p, &h);
    if (memcmp(h.magic, kMagic, 8) != 0)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: bad magic at offset 0 (not a .kiln file)");
    if (h.version > ART_VERSION)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "artifact format version %u is newer than this "
                         "kiln (%u)", h.version, ART_VERSION);
    if (h.version == 0)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: header offset 8: version 0 is invalid");
    if (h.flags != 0)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "artifact: header offset 12: unknown flags 0x%x",
                         h.flags);
    if (h.header_size != ART_HEADER_SIZE || h.reserved0 != 0)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: header offset 16: header_size %u (expected "
                         "%u) or reserved word not zero", h.header_size, ART_HEADER_SIZE);
    for (int i = 0; i < 32; i++)
        if (h.reserved[i])
            return kiln_fail(KILN_ERR_FORMAT, "artifact: header offset %d: reserved byte not zero",
                             96 + i);
    if (h.file_length != len)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: header offset 56: file_length %llu but the "
                         "input is %zu bytes (truncated or extended)",
                         (unsigned long long)h.file_length, len);
    if (h.manifest_offset != ART_HEADER_SIZE || h.manifest_length > len - ART_HEADER_SIZE ||
        h.blob_offset != align64(ART_HEADER_SIZE + h.manifest_length) || h.blob_offset > len ||
        h.blob_length != len - h.blob_offset)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: header offsets 24-55: manifest [%llu, +%llu) "
                         "and blob [%llu, +%llu) do not tile a %zu-byte file",
                         (unsigned long long)h.manifest_offset,
                         (unsigned long long)h.manifest_length, (unsigned long long)h.blob_offset,
                         (unsigned long long)h.blob_length, len);
    uint8_t digest[32];
    kiln_sha256(p + ART_HEADER_SIZE, len - ART_HEADER_SIZE, digest);
    if (memcmp(digest, h.sha256, 32) != 0) {
        char want[65], got[65];
        kiln_hex(h.sha256, 32, want);
        kiln_hex(digest, 32, got);
        return kiln_fail(KILN_ERR_CHECKSUM, "artifact: sha256 of bytes [128, %zu) is %.16s..., "
                         "header offset 64 says %.16s... (corrupted file)", len, got, want);
    }
    for (uint64_t z = ART_HEADER_SIZE + h.manifest_length; z < h.blob_offset; z++)
        if (p[z])
            return kiln_fail(KILN_ERR_FORMAT, "artifact: padding byte at offset %llu is not zero",
                             (unsigned long long)z);

    json_error_t jerr;
    json_t *m = json_loadb((const char *)p + ART_HEADER_SIZE, (size_t)h.manifest_length,
                           JSON_REJECT_DUPLICATES, &jerr);
    if (!m)
        return kiln_fail(KILN_ERR_FORMAT, "artifact: manifest JSON at file offset %d+%d: %s",
                         (int)ART_HEADER_SIZE, jerr.position, jerr.text);
    kiln_status st = read_manifest(m, h.version, p + h.blob_offset, h.blob_length, out);
    json_decref(m);
    return st;
}

/* ------------------------------------------------------------ file I/O */

kiln_status kiln_artifact_write(const kiln_artifact *a, const char *path, size_t *bytes)
{
    if (bytes) *bytes = 0;
    void *buf;
    size_t len;
    kiln_status st = kiln_artifact_encode(a, &buf, &len);
    if (st != KILN_OK) return st;
    st = kiln_file_write_atomic(path, buf, len);
    free(buf);
    if (st == KILN_OK && bytes) *bytes = len;
    return st;
}

kiln_status kiln_artifact_read(const char *path, kiln_artifact **out)
{
    *out = NULL;
    void *buf;
    size_t len;
    kiln_status rs = kiln_file_read(path, ART_MAX_FILE, &buf, &len);
    if (rs != KILN_OK) return rs;
    kiln_status st = kiln_artifact_decode(buf, len, out);
    free(buf);
    if (st != KILN_OK) kiln_errmsg_prefix("%s: ", path);
    return st;
}

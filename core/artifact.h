/*
 * artifact.h — the finalized, compressed model: in memory (kiln_artifact)
 * and on disk (the .kiln file format, documented in artifact.c's header
 * comment and docs/artifact-format.md).
 *
 * The in-memory form is a plain description the compression pipeline fills
 * and the runner reads: the network's topology (a graph.h graph without
 * weight data), every weight of that graph in its stored representation
 * (float32, n-bit integer codes with scales/zero points, or n-bit palette
 * indices with a LUT that may itself be int8 with a scale), float32 biases
 * where the graph has them, and the frozen qparams of every activation site.
 *
 * Correspondence with the graph (checked by the writer and the reader):
 * convs[i] is graph weight i (same name, cout, cin, k, groups; a bias
 * exactly when the weight has_bias), sites[i] is graph site i (named after
 * its tensor). A weight shared by several conv nodes is one conv here.
 *
 * The artifact owns every pointer in it (kiln_artifact_free releases all).
 */
#ifndef KILN_ARTIFACT_H
#define KILN_ARTIFACT_H

#include <stddef.h>
#include <stdint.h>

#include "graph.h"
#include "status.h"

/* Names of convs and sites, NUL included: the graph's names. */
#define KILN_ART_NAME_MAX KILN_GRAPH_NAME_MAX

typedef enum kiln_wkind {
    KILN_WK_F32 = 0, /* weight[]                                              */
    KILN_WK_INT,     /* codes[] with scales[]/zero_points[] (per tensor/channel/block) */
    KILN_WK_PALETTE, /* indices[] into lut (per tensor or per group of channels) */
} kiln_wkind;

typedef struct kiln_art_conv {
    char name[KILN_ART_NAME_MAX]; /* "body.3.body.0" */
    int cout, cin, k, groups;     /* cin: all input channels; each output
                                   * channel sees cin / groups of them   */
    kiln_wkind kind;
    float *bias; /* [cout] float32, or NULL for a weight without bias */

    /* Every per-element array below has kiln_art_conv_numel(c) =
     * cout * (cin/groups) * k * k entries, in [cout][cin/groups][k][k]
     * order (PyTorch's grouped OIHW). */

    /* KILN_WK_F32 */
    float *weight;

    /* KILN_WK_INT: w = (codes - zp) * scale, block b covers the elements of
     * output channel c (per_channel, axis 0), or of the whole tensor
     * (per_tensor), or `block_size` consecutive elements of an output
     * channel's flattened (cin/groups)*k*k row (per_block along axis 1, as
     * kiln_quant_weight does it: n_scales = cout *
     * ceil((cin/groups)*k*k / block_size)). */
    int bits;            /* 8 or 4                                      */
    int is_signed;       /* codes in [-2^(bits-1), 2^(bits-1)-1] or [0, 2^bits-1] */
    int granularity;     /* kiln_qgranularity                            */
    int block_size;
    int16_t *codes;      /* [numel]                                      */
    size_t n_scales;
    float *scales;       /* [n_scales]                                   */
    int32_t *zero_points;/* [n_scales]                                   */

    /* KILN_WK_PALETTE: w = lut[group][indices[i]] (* channel_scales[c]) */
    int n_bits;          /* indices in [0, 2^n_bits)                     */
    int n_luts;          /* 1 (per tensor) or ceil(cout / group_size)    */
    int group_size;      /* output channels per LUT (cout for per tensor) */
    uint8_t *indices;    /* [numel]                                      */
    float *lut;          /* [n_luts << n_bits] float values (dequantized when lut_q) */
    int8_t *lut_q;       /* [n_luts << n_bits] int8 codes, or NULL        */
    float *lut_scales;   /* [n_luts] when lut_q                          */
    float *channel_scales; /* [cout] or NULL                             */
} kiln_art_conv;

typedef struct kiln_art_site {
    char name[KILN_ART_NAME_MAX]; /* "body.3.relu" */
    int enabled;                  /* 0: not quantized            */
    float scale;
    int32_t zero_point;
    int qmin, qmax;
    float range_min, range_max;   /* the calibrated range (for reports) */
} kiln_art_site;

typedef struct kiln_artifact {
    kiln_graph *graph;   /* topology only (no weight data), owned          */
    char *recipe;        /* preset name or "custom"          */
    char *config_json;   /* canonical config JSON             */
    char config_hash[65];
    char *kiln_version;
    char *source_sha256; /* checkpoint the artifact came from, or NULL */
    size_t n_convs;
    kiln_art_conv *convs;
    size_t n_sites;
    kiln_art_site *sites;
} kiln_artifact;

/* Allocate an empty artifact with n_convs/n_sites zeroed entries and no
 * graph (set one with kiln_artifact_set_graph before encoding). */
kiln_status kiln_artifact_create(size_t n_convs, size_t n_sites, kiln_artifact **out);
/* An artifact for graph g: one conv per weight (name, cout, cin, k, groups
 * filled in; kind f32 with no arrays yet) and one site per activation site
 * (name filled in, disabled), and a topology-only copy of g. The caller
 * fills in each conv's representation and bias and each site's qparams. */
kiln_status kiln_artifact_from_graph(const kiln_graph *g, kiln_artifact **out);
/* Replace a->graph with a topology-only copy of g (weight data dropped). */
kiln_status kiln_artifact_set_graph(kiln_artifact *a, const kiln_graph *g);
void kiln_artifact_free(kiln_artifact *a);

/* The overall upscaling factor (the graph's), 0 without a graph. */
int kiln_artifact_scale(const kiln_artifact *a);
/* Weights of one conv: cout * (cin / groups) * k * k. */
size_t kiln_art_conv_numel(const kiln_art_conv *c);

/* Write atomically (temporary file, fsync, rename); *bytes gets the file size. */
kiln_status kiln_artifact_write(const kiln_artifact *a, const char *path, size_t *bytes);
/* Serialize to a malloc'ed buffer (identical bytes to the file). */
kiln_status kiln_artifact_encode(const kiln_artifact *a, void **buf, size_t *len);
kiln_status kiln_artifact_read(const char *path, kiln_artifact **out);
kiln_status kiln_artifact_decode(const void *buf, size_t len, kiln_artifact **out);
/* 1 when the buffer starts with the .kiln magic. */
int kiln_artifact_sniff(const void *buf, size_t len);

/* Weight storage of SPEC §5 for one conv / all convs, as the golden
 * manifest's "choices" count it: payload (4 bytes per float weight, codes at
 * `bits` per weight, or indices packed per tensor at n_bits) + scales/LUTs
 * (4-byte floats; LUT entries 1 byte when int8, 4 when float; 4 per LUT scale
 * and per channel scale) + the float32 biases (4 bytes each, for the convs
 * that have one; every recipe keeps them). Zero points are not counted. Each
 * conv counts once, however many conv nodes share it. EDSR-baseline x2
 * FP32: 5,479,532. The bias share alone ("biases counted separately") is
 * *_bias_bytes. */
size_t kiln_art_conv_weight_bytes(const kiln_art_conv *c);
size_t kiln_artifact_weight_bytes(const kiln_artifact *a);
size_t kiln_art_conv_bias_bytes(const kiln_art_conv *c);
size_t kiln_artifact_bias_bytes(const kiln_artifact *a);

/* The float weights a conv represents (kiln_art_conv_numel(c) floats,
 * [cout][cin/groups][k][k]). */
kiln_status kiln_art_conv_dequantize(const kiln_art_conv *c, float *out);

#endif

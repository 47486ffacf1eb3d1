/*
 * arch.h — the state-dict importers: the super-resolution architectures
 * kiln knows by their PyTorch module layout, turned into graphs (graph.h).
 *
 * Known layouts (torchsr / EDSR-PyTorch / CARN-pytorch key names):
 *   edsr    head.0, body.{i}.body.{0,2}, body.{R}, tail.0.{2j}, tail.1, and
 *           optional sub_mean/add_mean (any R, F, res_scale; x2, x3, x4);
 *           input scaled by 255 (rgb_range 255), output divided by 255.
 *   carn    sub_mean.shifter, entry, b{1..3}.b{1..3}.body.{0,2},
 *           b{1..3}.c{1..3}.body.0, c{1..3}.body.0, upsample.up{2,3,4}.body.*,
 *           exit, add_mean.shifter (rgb_range 1).
 *   carn_m  as carn with one grouped unit b{1..3}.b1.body.{0,2,4} used
 *           three times per block (shared weights).
 * The importer is chosen from the key names; a state dict that fits none is
 * refused (KILN_ERR_ARCH) with a message that lists the known architectures
 * and, for the closest one, the first key that does not fit.
 */
#ifndef KILN_ARCH_H
#define KILN_ARCH_H

#include "graph.h"
#include "status.h"
#include "weights.h"

typedef struct kiln_arch_opts {
    float res_scale; /* EDSR: 0 = default (1.0 for F <= 64, 0.1 for F = 256) */
    int scale;       /* multi-scale files (CARN-M): 2, 3 or 4; 0 = the smallest present */
} kiln_arch_opts;

/* The graph (with weight data) of a state dict. */
kiln_status kiln_arch_import(const kiln_weights *w, const kiln_arch_opts *opts, kiln_graph **out);

/* The EDSR topology without weight data (old .kiln artifacts, whose
 * manifest stores only R, F, scale and res_scale). */
kiln_status kiln_arch_edsr_topology(int resblocks, int features, int scale, float res_scale,
                                    kiln_graph **out);

/* "edsr, carn, carn_m" — for messages. */
const char *kiln_arch_known(void);

#endif

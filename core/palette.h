/*
 * palette.h — weight palettization of SPEC §4: exact weighted 1-D k-means,
 * look-up tables (LUTs) of 2^n_bits entries per tensor or per group of output
 * channels, optional int8 quantization of each LUT, optional per-channel
 * scales.
 *
 * (Types below were fixed by the lead so the recipe and artifact modules can
 * use them; the palette module owns the functions.)
 */
#ifndef KILN_PALETTE_H
#define KILN_PALETTE_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"
#include "status.h"

typedef enum kiln_pgranularity {
    KILN_PG_PER_TENSOR = 0,
    KILN_PG_PER_GROUPED_CHANNEL, /* group_size output channels share a LUT */
} kiln_pgranularity;

typedef enum kiln_kmeans_weighting {
    KILN_KW_COUNTS = 0,     /* reference: unique values weighted by their counts    */
    KILN_KW_ACTIVATION,     /* kiln §7: diag(X X^T) per input column (needs data)    */
} kiln_kmeans_weighting;

typedef struct kiln_pspec {
    int n_bits;                  /* 1,2,3,4,6,8                                 */
    kiln_pgranularity granularity;
    int group_size;              /* per_grouped_channel                          */
    int lut_quantize;            /* quantize LUT entries                          */
    kiln_qspec lut_qspec;        /* int8 symmetric by default                     */
    int per_channel_scale;       /* divide each output channel by its max|w| first */
    kiln_kmeans_weighting weighting;
} kiln_pspec;

#endif

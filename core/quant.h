/*
 * quant.h — integer quantization of SPEC §3: specs, qparams, fake
 * quantization, observers (qparams calculators), weight quantization, and the
 * activation quantizer that hooks every site of a model.
 *
 * (Types below were fixed by the lead so the recipe and artifact modules can
 * use them; the quant module owns the functions.)
 */
#ifndef KILN_QUANT_H
#define KILN_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum kiln_qdtype {
    KILN_Q_INT8 = 0, /* [-128, 127] */
    KILN_Q_UINT8,    /* [0, 255]    */
    KILN_Q_INT4,     /* [-8, 7]     */
    KILN_Q_UINT4,    /* [0, 15]     */
} kiln_qdtype;

typedef enum kiln_qscheme {
    KILN_QS_SYMMETRIC = 0,
    KILN_QS_ASYMMETRIC,
    KILN_QS_SYMMETRIC_WITH_CLIPPING, /* int8 [-127, 127] */
} kiln_qscheme;

typedef enum kiln_qgranularity {
    KILN_QG_PER_TENSOR = 0,
    KILN_QG_PER_CHANNEL, /* axis */
    KILN_QG_PER_BLOCK,   /* axis, block_size */
} kiln_qgranularity;

typedef enum kiln_qcalc {
    KILN_QC_STATIC = 0,      /* min/max of the tensor itself (weights)           */
    KILN_QC_MOVING_AVERAGE,  /* running = c*x + (1-c)*running (SPEC §3.4)         */
    KILN_QC_GLOBAL_MINMAX,   /* min of mins, max of maxes over all observations   */
    KILN_QC_HIST_MSE,        /* kiln §7: histogram, MSE-optimal clipping range    */
    KILN_QC_HIST_PERCENTILE, /* kiln §7: histogram, percentile clipping           */
} kiln_qcalc;

typedef struct kiln_qspec {
    kiln_qdtype dtype;
    kiln_qscheme qscheme;
    kiln_qgranularity granularity;
    int axis;            /* per_channel / per_block */
    int block_size;      /* per_block               */
    kiln_qcalc calc;
    float ma_constant;   /* moving_average c (default 0.01)        */
    float percentile;    /* hist_percentile, e.g. 99.99            */
    int asymmetric_relu; /* ReLU outputs use the full unsigned range */
    int multiply_by_inverse; /* fake quant as x * (1/scale) (torch parity) instead of x / scale */
} kiln_qspec;

/* qmin/qmax of a dtype+scheme (symmetric_with_clipping int8 → -127..127). */
void kiln_qrange(kiln_qdtype dtype, kiln_qscheme scheme, int *qmin, int *qmax);

#endif

/*
 * export.h — a kiln network as an ONNX model (docs/export.md).
 *
 * The exported file computes what kiln computes: the graph's ops as plain
 * ONNX ops, every stored weight through DequantizeLinear from its integer
 * form (int8 codes with per-channel or per-tensor scales, or palette
 * indices gathered from the int8 LUT), and at every activation site kiln
 * quantizes a QuantizeLinear/DequantizeLinear pair with the site's frozen
 * scale and zero point, placed so that ONNX Runtime fuses DQ -> Conv -> Q
 * into integer convolutions. Sites kiln leaves in float stay float.
 *
 * Input "input" [1, 3, H, W] float32 RGB in [0, 1]; output "output"
 * [1, 3, sH, sW] (the graph output divided by its out_div; not clamped).
 *
 * Opsets: 13..21. Opset 21 stores 4-bit palette indices and 4-bit codes as
 * uint4/int4 tensors (the small storage); below 21 they are materialized as
 * int8 weights, which every runtime with QDQ support takes.
 */
#ifndef KILN_EXPORT_H
#define KILN_EXPORT_H

#include <stddef.h>

#include "artifact.h"
#include "graph.h"
#include "status.h"

#define KILN_EXPORT_OPSET_MIN 13
#define KILN_EXPORT_OPSET_MAX 21

typedef enum kiln_export_weights {
    KILN_EXPORT_WEIGHTS_AUTO = 0, /* 4-bit storage when the opset has it, else int8 */
    KILN_EXPORT_WEIGHTS_INT4,     /* 4-bit storage required (opset 21)               */
    KILN_EXPORT_WEIGHTS_INT8,     /* every quantized weight as int8 codes              */
} kiln_export_weights;

typedef struct kiln_export_opts {
    int opset;                   /* 0: 17, or 21 when a weight keeps 4-bit storage */
    kiln_export_weights weights;
} kiln_export_opts;

/* A serialized ModelProto of a finalized artifact, in a malloc'ed buffer.
 * KILN_ERR_UNSUPPORTED names the conv or site the requested opset cannot
 * express (4-bit storage below opset 21, per-block weight scales,
 * activation codes that are not a whole int8/uint8 (or, at 21, int4/uint4)
 * range). */
kiln_status kiln_export_onnx(const kiln_artifact *a, const kiln_export_opts *opts, void **buf, size_t *len);
/* The same for a graph with weight data (a checkpoint): FP32. */
kiln_status kiln_export_onnx_graph(const kiln_graph *g, const kiln_export_opts *opts, void **buf, size_t *len);
/* The opset kiln_export_onnx would use for these options (0 on bad options). */
int kiln_export_opset(const kiln_artifact *a, const kiln_export_opts *opts);

#endif

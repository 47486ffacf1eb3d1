/*
 * onnx.h — the ONNX importer: a super-resolution CNN exported to ONNX
 * (opsets 11 to 21, as torch.onnx.export writes it) becomes a finished
 * kiln_graph (graph.h) with its weight data, ready for
 * kiln_model_from_graph.
 *
 * What is accepted, how ONNX names become kiln names, and the limits are in
 * docs/onnx.md. In short: one 4-D float input [1 or dynamic, 3, H, W] with H
 * and W fixed or dynamic, one 3-channel output; Conv (odd square kernels,
 * stride 1, dilation 1, "same" padding, any group count), Relu, LeakyRelu,
 * PRelu, Add, Mul and Div by a scalar constant, Mul by a pooled [N,C,1,1]
 * tensor, Concat on channels, DepthToSpace (CRD), GlobalAveragePool,
 * ReduceMean over H and W, Sigmoid, nearest Resize by an integer factor,
 * Identity, Constant. Nodes that do not contribute to the output are
 * ignored; any other node is refused with KILN_ERR_UNSUPPORTED and a
 * message naming the node and its op type. A Div by a constant that makes
 * the graph output becomes the graph's out_div (EDSR's "/ 255").
 *
 * Errors: KILN_ERR_FORMAT for malformed files (bad protobuf, tensors whose
 * stored bytes do not match their shape, dangling value names, refused
 * external-data paths), KILN_ERR_UNSUPPORTED for valid ONNX outside the list
 * above, KILN_ERR_ARCH for wiring the graph builder refuses (wrong channel
 * counts), KILN_ERR_LIMIT for sizes beyond the bounds below, KILN_ERR_IO /
 * KILN_ERR_NOT_FOUND for files. Every message starts with "onnx: ".
 */
#ifndef KILN_ONNX_H
#define KILN_ONNX_H

#include <stddef.h>

#include "graph.h"
#include "status.h"

#define KILN_ONNX_MAX_FILE ((size_t)2 << 30)       /* model file and each external-data file */
#define KILN_ONNX_MAX_TENSOR ((size_t)1 << 28)     /* elements of one initializer or constant */
#define KILN_ONNX_MAX_DIMS 8                       /* rank of one tensor                      */
#define KILN_ONNX_MAX_DEPTH 32                     /* nesting of protobuf messages            */

/* Read the model file at path (at most KILN_ONNX_MAX_FILE bytes) and import
 * it. External-data files are looked up relative to the model's directory;
 * their locations must be relative and must not contain "..". */
kiln_status kiln_onnx_load(const char *path, kiln_graph **out);

/* Import a serialized ModelProto held in memory. base_dir is the directory
 * external-data locations are relative to; NULL refuses external data. */
kiln_status kiln_onnx_parse(const void *buf, size_t len, const char *base_dir, kiln_graph **out);

/* 1 when buf (a whole file or its first bytes, 64 are plenty) looks like a
 * serialized ONNX ModelProto: it starts with field 1 (ir_version, a small
 * varint) followed by well-formed ModelProto fields up to the graph or
 * opset field (or up to the end of buf inside a text field such as a long
 * doc_string, the text checked).
 * PyTorch zip and pickle checkpoints, safetensors and .kiln files never
 * match. A cheap check, not a validation. */
int kiln_onnx_sniff(const void *buf, size_t len);

#endif

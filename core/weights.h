/*
 * weights.h — named float32 tensors, and the checkpoint loaders that fill them.
 *
 * A kiln_weights is an ordered list of named tensors (a PyTorch state dict).
 * Every tensor is stored as contiguous float32 in row-major (C) order whatever
 * the file held: float16 and bfloat16 storages are widened at load, strided
 * PyTorch views are gathered. The original dtype is remembered for `kiln info`.
 *
 * Formats (detected from content, never from the file name):
 *   - safetensors (8-byte little-endian header length, JSON header, data);
 *   - PyTorch >= 1.6 zip archives (`<name>/data.pkl` + `<name>/data/<key>`);
 *   - PyTorch legacy (< 1.6) files: magic-number pickle, protocol pickle,
 *     sys-info pickle, the state-dict pickle, the storage key list, then the
 *     raw storages (each prefixed by an int64 element count).
 * Pickles are interpreted by a restricted virtual machine that knows only the
 * opcodes and globals a state dict uses (collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2, torch.*Storage, torch._utils._rebuild_parameter);
 * any other global or opcode is refused with KILN_ERR_UNSUPPORTED — nothing
 * is ever constructed or executed. The state dict may be the top-level
 * object or sit under a "model" or "state_dict" key.
 *
 * Limits: at most KILN_WEIGHTS_MAX_TENSORS tensors, 4 dims, and no tensor or
 * file larger than KILN_WEIGHTS_MAX_BYTES; exceeding them is KILN_ERR_LIMIT.
 *
 * Ownership: the kiln_weights owns all names and data; pointers returned by
 * accessors live until kiln_weights_destroy.
 */
#ifndef KILN_WEIGHTS_H
#define KILN_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define KILN_WEIGHTS_MAX_TENSORS 4096
#define KILN_WEIGHTS_MAX_BYTES ((size_t)2 << 30) /* 2 GiB */
#define KILN_MAX_DIMS 4

typedef enum kiln_dtype {
    KILN_DTYPE_F32 = 0,
    KILN_DTYPE_F16,
    KILN_DTYPE_BF16,
} kiln_dtype;

typedef enum kiln_weights_format {
    KILN_FORMAT_SAFETENSORS = 0,
    KILN_FORMAT_PT_ZIP,
    KILN_FORMAT_PT_LEGACY,
} kiln_weights_format;

typedef struct kiln_weights kiln_weights;

/* Load a checkpoint from a file / from memory (the buffer is not retained). */
kiln_status kiln_weights_load(const char *path, kiln_weights **out);
kiln_status kiln_weights_load_mem(const void *buf, size_t len, kiln_weights **out);

/* An empty container, for building weights by hand (tests, artifacts). */
kiln_status kiln_weights_create(kiln_weights **out);
/* Append a tensor (data copied). Names must be unique. */
kiln_status kiln_weights_add(kiln_weights *w, const char *name, int ndim,
                             const int64_t *shape, const float *data);
void kiln_weights_destroy(kiln_weights *w);

kiln_weights_format kiln_weights_source_format(const kiln_weights *w);
const char *kiln_weights_format_name(kiln_weights_format f); /* "safetensors", "pt-zip", "pt-legacy" */

size_t kiln_weights_count(const kiln_weights *w);
/* Tensor i in file order (0 <= i < count). */
const char *kiln_weights_name(const kiln_weights *w, size_t i);
int kiln_weights_ndim(const kiln_weights *w, size_t i);
const int64_t *kiln_weights_shape(const kiln_weights *w, size_t i);
size_t kiln_weights_numel(const kiln_weights *w, size_t i);
kiln_dtype kiln_weights_dtype(const kiln_weights *w, size_t i); /* dtype in the file */
const float *kiln_weights_data(const kiln_weights *w, size_t i);
/* Index of the tensor called name, or -1. */
long kiln_weights_find(const kiln_weights *w, const char *name);

#endif

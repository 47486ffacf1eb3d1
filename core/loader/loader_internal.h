/*
 * loader_internal.h — what the checkpoint parsers share (not a public header).
 *
 * weights.c detects the format and calls one of the kiln__load_* parsers; each
 * parser appends tensors to an empty kiln_weights through kiln__weights_put,
 * which takes ownership of an already-converted float32 buffer (so a 5 MB
 * checkpoint is converted once, never copied twice).
 *
 * The two PyTorch formats share the restricted pickle VM (pickle.c): it turns
 * one pickle into a graph of kiln__pval objects held in an arena that the VM
 * owns; strings and byte blobs point into the caller's input buffer, so that
 * buffer must outlive the VM. kiln__pickle_collect then walks the state dict
 * and asks a format-specific callback for each storage's raw bytes.
 */
#ifndef KILN_LOADER_INTERNAL_H
#define KILN_LOADER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../status.h"
#include "../weights.h"

/* ---- weights.c ---------------------------------------------------------- */

/* Append a tensor whose float32 data was malloc'ed by the caller; ownership
 * of data passes to w in every case (freed on failure). name need not be
 * NUL-terminated. */
kiln_status kiln__weights_put(kiln_weights *w, const char *name, size_t name_len,
                              int ndim, const int64_t *shape, float *data,
                              kiln_dtype dtype);
void kiln__weights_set_format(kiln_weights *w, kiln_weights_format f);

/* Decoded-size budget of one kiln_weights_load_mem: the float32 tensors a
 * file decodes to may total KILN_WEIGHTS_DECODE_RATIO times its size plus
 * KILN_WEIGHTS_DECODE_SLACK (half precision widens 2x; tied weights repeat a
 * storage under several names), never more than KILN_WEIGHTS_MAX_BYTES.
 * A parser reserves each tensor's bytes before allocating them. */
#define KILN_WEIGHTS_DECODE_RATIO 8
#define KILN_WEIGHTS_DECODE_SLACK ((size_t)1 << 20)
kiln_status kiln__weights_reserve(kiln_weights *w, size_t bytes);

/* Bytes per element of a file dtype (4, 2, 2). */
size_t kiln__dtype_size(kiln_dtype d);
/* Widen n little-endian elements of dtype d at src into dst (exact). */
void kiln__convert_to_f32(kiln_dtype d, const uint8_t *src, size_t n, float *dst);
float kiln__f16_to_f32(uint16_t h);
float kiln__bf16_to_f32(uint16_t h);

/* ---- the parsers (each fills an empty w, errors name the format) -------- */

kiln_status kiln__load_safetensors(const uint8_t *buf, size_t len, kiln_weights *w);
kiln_status kiln__load_pt_zip(const uint8_t *buf, size_t len, kiln_weights *w);
kiln_status kiln__load_pt_legacy(const uint8_t *buf, size_t len, kiln_weights *w);

/* ---- pickle.c: the restricted pickle VM --------------------------------- */

/* VM bounds: hostile input hits one of these (KILN_ERR_LIMIT) long before it
 * can exhaust memory; real EDSR pickles use ~600 memo slots, depth ~4. */
#define KILN_PICKLE_MAX_STACK   (1u << 16)
#define KILN_PICKLE_MAX_MARKS   64u
#define KILN_PICKLE_MAX_MEMO    (1u << 20)
#define KILN_PICKLE_MAX_OBJECTS (1u << 20)
#define KILN_PICKLE_MAX_STRING  ((size_t)1 << 20)

typedef enum kiln__pkind {
    KILN__P_NONE = 0,
    KILN__P_BOOL,
    KILN__P_INT,    /* fits int64 */
    KILN__P_BIGINT, /* LONG1 wider than 8 bytes: raw little-endian bytes */
    KILN__P_FLOAT,
    KILN__P_STR,
    KILN__P_BYTES,
    KILN__P_TUPLE,
    KILN__P_LIST,
    KILN__P_DICT,   /* dict or OrderedDict; items are key, value, key, ... */
    KILN__P_GLOBAL, /* one of the allowed callables/classes */
    KILN__P_STORAGE,
    KILN__P_TENSOR,
} kiln__pkind;

typedef enum kiln__pglobal {
    KILN__G_ORDERED_DICT = 0,
    KILN__G_REBUILD_TENSOR_V2,
    KILN__G_REBUILD_PARAMETER,
    KILN__G_FLOAT_STORAGE,
    KILN__G_HALF_STORAGE,
    KILN__G_BFLOAT16_STORAGE,
} kiln__pglobal;

typedef struct kiln__pval {
    kiln__pkind kind;
    union {
        int64_t i;   /* BOOL, INT */
        double f;    /* FLOAT */
        int global;  /* GLOBAL: a kiln__pglobal */
        struct { const uint8_t *p; size_t n; } s; /* STR, BYTES, BIGINT */
        struct { uint32_t *items; uint32_t n, cap; } seq; /* TUPLE, LIST, DICT */
        struct {
            kiln_dtype dtype;
            const uint8_t *key;
            size_t key_len;
            int64_t numel;
        } storage;
        struct {
            uint32_t storage; /* object index of a KILN__P_STORAGE */
            int64_t offset;
            int ndim;
            int64_t shape[KILN_MAX_DIMS], stride[KILN_MAX_DIMS];
        } tensor;
    } u;
} kiln__pval;

typedef struct kiln__pickle kiln__pickle;

/* Run one pickle starting at buf (which must outlive the VM) up to its STOP.
 * *consumed receives the bytes read including STOP; *root the result. */
kiln_status kiln__pickle_run(const uint8_t *buf, size_t len, kiln__pickle **out,
                             size_t *consumed, const kiln__pval **root);
void kiln__pickle_destroy(kiln__pickle *vm);
/* Object idx of vm (items of TUPLE/LIST/DICT are such indices). */
const kiln__pval *kiln__pickle_obj(const kiln__pickle *vm, uint32_t idx);

/* Looks up the raw bytes of a storage (exactly numel * dtype size bytes);
 * the pointer must stay valid until the next call. */
typedef kiln_status (*kiln__storage_fn)(void *ctx, const kiln__pval *storage,
                                        const uint8_t **data);

/* Collect the tensors of the state dict in root (the top-level dict, or its
 * "model" / "state_dict" entry) into w, gathering strided views. */
kiln_status kiln__pickle_collect(const kiln__pickle *vm, const kiln__pval *root,
                                 kiln__storage_fn fn, void *ctx, kiln_weights *w);

/* Little-endian readers (input is unaligned bytes). */
static inline uint64_t kiln__rd_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint32_t kiln__rd_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif

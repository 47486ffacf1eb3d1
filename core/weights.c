/*
 * weights.c — the kiln_weights container and format detection.
 *
 * A kiln_weights is a growable array of tensors in file order; each tensor
 * owns a NUL-terminated copy of its name and a malloc'ed contiguous float32
 * buffer. Invariants: names are unique, 0 <= ndim <= KILN_MAX_DIMS, numel is
 * the product of shape (1 for a scalar), numel * 4 <= KILN_WEIGHTS_MAX_BYTES,
 * count <= KILN_WEIGHTS_MAX_TENSORS. Lookups by name are linear: EDSR has ~80
 * tensors and callers look each up once.
 *
 * kiln_weights_load_mem sniffs the content (zip magic, pickle PROTO opcode,
 * safetensors length + '{') and hands the buffer to one parser in
 * core/loader/; a parser failure destroys the half-filled container so the
 * caller only ever sees a complete result or nothing.
 */
#include "weights.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loader/loader_internal.h"

#define KILN__NAME_MAX 1024

typedef struct kiln__tensor {
    char *name;
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    size_t numel;
    kiln_dtype dtype;
    float *data;
} kiln__tensor;

struct kiln_weights {
    kiln__tensor *t;
    size_t n, cap;
    kiln_weights_format format;
    size_t budget, decoded; /* decoded-bytes budget of a load (0: none) */
};

kiln_status kiln_weights_create(kiln_weights **out)
{
    if (!out) return kiln_fail(KILN_ERR_INVALID, "weights: out is NULL");
    *out = calloc(1, sizeof **out);
    if (!*out) return kiln_fail(KILN_ERR_NOMEM, "weights: out of memory");
    return KILN_OK;
}

void kiln_weights_destroy(kiln_weights *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->t);
    free(w);
}

void kiln__weights_set_format(kiln_weights *w, kiln_weights_format f) { w->format = f; }

kiln_status kiln__weights_reserve(kiln_weights *w, size_t bytes)
{
    if (w->budget && (bytes > w->budget || w->decoded > w->budget - bytes))
        return kiln_fail(KILN_ERR_LIMIT, "weights: the tensors decode to more than %zu bytes "
                         "(%d x the file size + %d MiB, at most %zu)", w->budget,
                         KILN_WEIGHTS_DECODE_RATIO, (int)(KILN_WEIGHTS_DECODE_SLACK >> 20),
                         KILN_WEIGHTS_MAX_BYTES);
    w->decoded += bytes;
    return KILN_OK;
}

static long find_n(const kiln_weights *w, const char *name, size_t len)
{
    for (size_t i = 0; i < w->n; i++)
        if (strncmp(w->t[i].name, name, len) == 0 && w->t[i].name[len] == '\0')
            return (long)i;
    return -1;
}

kiln_status kiln__weights_put(kiln_weights *w, const char *name, size_t name_len,
                              int ndim, const int64_t *shape, float *data,
                              kiln_dtype dtype)
{
    kiln_status st = KILN_OK;
    if (name_len == 0 || name_len >= KILN__NAME_MAX) {
        st = kiln_fail(KILN_ERR_LIMIT, "weights: tensor name length %zu not in 1..%d",
                       name_len, KILN__NAME_MAX - 1);
        goto fail;
    }
    if (memchr(name, '\0', name_len)) {
        st = kiln_fail(KILN_ERR_FORMAT, "weights: tensor name contains a NUL byte");
        goto fail;
    }
    if (ndim < 0 || ndim > KILN_MAX_DIMS) {
        st = kiln_fail(KILN_ERR_LIMIT, "weights: tensor '%.*s' has %d dims (max %d)",
                       (int)name_len, name, ndim, KILN_MAX_DIMS);
        goto fail;
    }
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 ||
            __builtin_mul_overflow(numel, (uint64_t)shape[d], &numel) ||
            numel > KILN_WEIGHTS_MAX_BYTES / sizeof(float)) {
            st = kiln_fail(KILN_ERR_LIMIT, "weights: tensor '%.*s' shape dim %d (%lld) "
                           "is negative or makes it exceed %zu bytes", (int)name_len, name,
                           d, (long long)shape[d], KILN_WEIGHTS_MAX_BYTES);
            goto fail;
        }
    }
    if (find_n(w, name, name_len) >= 0) {
        st = kiln_fail(KILN_ERR_FORMAT, "weights: duplicate tensor name '%.*s'",
                       (int)name_len, name);
        goto fail;
    }
    if (w->n >= KILN_WEIGHTS_MAX_TENSORS) {
        st = kiln_fail(KILN_ERR_LIMIT, "weights: more than %d tensors",
                       KILN_WEIGHTS_MAX_TENSORS);
        goto fail;
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        kiln__tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) { st = kiln_fail(KILN_ERR_NOMEM, "weights: out of memory"); goto fail; }
        w->t = t;
        w->cap = cap;
    }
    kiln__tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = malloc(name_len + 1);
    if (!t->name) { st = kiln_fail(KILN_ERR_NOMEM, "weights: out of memory"); goto fail; }
    memcpy(t->name, name, name_len);
    t->name[name_len] = '\0';
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->numel = numel;
    t->dtype = dtype;
    t->data = data;
    w->n++;
    return KILN_OK;
fail:
    free(data);
    return st;
}

kiln_status kiln_weights_add(kiln_weights *w, const char *name, int ndim,
                             const int64_t *shape, const float *data)
{
    if (!w || !name || (ndim > 0 && !shape))
        return kiln_fail(KILN_ERR_INVALID, "weights_add: NULL argument");
    if (ndim < 0 || ndim > KILN_MAX_DIMS)
        return kiln_fail(KILN_ERR_LIMIT, "weights_add: '%s' has %d dims (max %d)", name,
                         ndim, KILN_MAX_DIMS);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)shape[d], &numel) ||
            numel > KILN_WEIGHTS_MAX_BYTES / sizeof(float))
            return kiln_fail(KILN_ERR_LIMIT, "weights_add: '%s' shape dim %d (%lld) is "
                             "negative or too large", name, d, (long long)shape[d]);
    }
    if (numel > 0 && !data)
        return kiln_fail(KILN_ERR_INVALID, "weights_add: '%s' data is NULL", name);
    /* malloc(0) may return NULL; keep one float so data is never NULL. */
    float *copy = malloc((numel ? numel : 1) * sizeof(float));
    if (!copy) return kiln_fail(KILN_ERR_NOMEM, "weights_add: out of memory");
    if (numel) memcpy(copy, data, numel * sizeof(float));
    return kiln__weights_put(w, name, strlen(name), ndim, shape, copy, KILN_DTYPE_F32);
}

kiln_weights_format kiln_weights_source_format(const kiln_weights *w) { return w->format; }

const char *kiln_weights_format_name(kiln_weights_format f)
{
    switch (f) {
    case KILN_FORMAT_SAFETENSORS: return "safetensors";
    case KILN_FORMAT_PT_ZIP: return "pt-zip";
    case KILN_FORMAT_PT_LEGACY: return "pt-legacy";
    }
    return "unknown";
}

size_t kiln_weights_count(const kiln_weights *w) { return w->n; }
const char *kiln_weights_name(const kiln_weights *w, size_t i) { return w->t[i].name; }
int kiln_weights_ndim(const kiln_weights *w, size_t i) { return w->t[i].ndim; }
const int64_t *kiln_weights_shape(const kiln_weights *w, size_t i) { return w->t[i].shape; }
size_t kiln_weights_numel(const kiln_weights *w, size_t i) { return w->t[i].numel; }
kiln_dtype kiln_weights_dtype(const kiln_weights *w, size_t i) { return w->t[i].dtype; }
const float *kiln_weights_data(const kiln_weights *w, size_t i) { return w->t[i].data; }

long kiln_weights_find(const kiln_weights *w, const char *name)
{
    if (!w || !name) return -1;
    return find_n(w, name, strlen(name));
}

/* ---- dtype conversion --------------------------------------------------- */

size_t kiln__dtype_size(kiln_dtype d) { return d == KILN_DTYPE_F32 ? 4 : 2; }

float kiln__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan (payload kept) */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* Subnormal half: normalise; every one is a normal float. */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float kiln__bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void kiln__convert_to_f32(kiln_dtype d, const uint8_t *src, size_t n, float *dst)
{
    switch (d) {
    case KILN_DTYPE_F32:
        for (size_t i = 0; i < n; i++) {
            uint32_t b = kiln__rd_u32le(src + 4 * i);
            memcpy(&dst[i], &b, sizeof b);
        }
        break;
    case KILN_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = kiln__f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        break;
    case KILN_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = kiln__bf16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        break;
    }
}

/* ---- loading ------------------------------------------------------------ */

static const uint8_t ZIP_MAGIC[4] = { 'P', 'K', 3, 4 };

kiln_status kiln_weights_load_mem(const void *buf, size_t len, kiln_weights **out)
{
    if (!out) return kiln_fail(KILN_ERR_INVALID, "weights: out is NULL");
    *out = NULL;
    if (!buf && len) return kiln_fail(KILN_ERR_INVALID, "weights: buffer is NULL");
    if (len > KILN_WEIGHTS_MAX_BYTES)
        return kiln_fail(KILN_ERR_LIMIT, "weights: input of %zu bytes exceeds %zu", len,
                         KILN_WEIGHTS_MAX_BYTES);
    const uint8_t *p = buf;
    kiln_weights *w;
    kiln_status st = kiln_weights_create(&w);
    if (st) return st;
    w->budget = len > (KILN_WEIGHTS_MAX_BYTES - KILN_WEIGHTS_DECODE_SLACK) /
                          KILN_WEIGHTS_DECODE_RATIO
                    ? KILN_WEIGHTS_MAX_BYTES
                    : len * KILN_WEIGHTS_DECODE_RATIO + KILN_WEIGHTS_DECODE_SLACK;
    if (len >= 4 && memcmp(p, ZIP_MAGIC, 4) == 0) {
        w->format = KILN_FORMAT_PT_ZIP;
        st = kiln__load_pt_zip(p, len, w);
    } else if (len >= 9 && p[8] == '{') {
        /* Before the pickle test: a safetensors header length such as 0x180
         * starts with 0x80 too, while a legacy file's byte 8 is inside its
         * magic number (0xf9), never '{'. */
        w->format = KILN_FORMAT_SAFETENSORS;
        st = kiln__load_safetensors(p, len, w);
    } else if (len >= 2 && p[0] == 0x80) {
        w->format = KILN_FORMAT_PT_LEGACY;
        st = kiln__load_pt_legacy(p, len, w);
    } else {
        char hex[3 * 8 + 1] = "";
        for (size_t i = 0; i < len && i < 8; i++)
            snprintf(hex + 3 * i, sizeof hex - 3 * i, "%02x ", p[i]);
        st = kiln_fail(KILN_ERR_FORMAT, "weights: unrecognised format (%zu bytes, first "
                       "bytes %s): expected a PyTorch zip, a legacy PyTorch pickle or "
                       "safetensors", len, len ? hex : "none");
    }
    if (st == KILN_OK && w->n == 0)
        st = kiln_fail(KILN_ERR_FORMAT, "%s: no tensors found",
                       kiln_weights_format_name(w->format));
    if (st) {
        kiln_weights_destroy(w);
        return st;
    }
    *out = w;
    return KILN_OK;
}

kiln_status kiln_weights_load(const char *path, kiln_weights **out)
{
    if (!path || !out) return kiln_fail(KILN_ERR_INVALID, "weights_load: NULL argument");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return kiln_fail(errno == ENOENT ? KILN_ERR_NOT_FOUND : KILN_ERR_IO,
                         "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return kiln_fail(KILN_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > KILN_WEIGHTS_MAX_BYTES) {
        fclose(f);
        return kiln_fail(KILN_ERR_LIMIT, "%s: file of %lld bytes exceeds %zu", path,
                         (long long)sb.st_size, KILN_WEIGHTS_MAX_BYTES);
    }
    size_t len = (size_t)sb.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return kiln_fail(KILN_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    int err = ferror(f);
    fclose(f);
    if (got != len || err) {
        free(buf);
        return kiln_fail(KILN_ERR_IO, "%s: short read (%zu of %zu bytes)", path, got, len);
    }
    kiln_status st = kiln_weights_load_mem(buf, len, out);
    free(buf);
    if (st) kiln_errmsg_prefix("%s: ", path);
    return st;
}

/*
 * safetensors.c — the safetensors format (https://github.com/huggingface/safetensors).
 *
 * Layout: u64 little-endian N, N bytes of UTF-8 JSON, then the data section.
 * The JSON object maps tensor names to {"dtype", "shape", "data_offsets":
 * [begin, end]} (offsets relative to the data section), plus an optional
 * "__metadata__" object of strings, which kiln ignores.
 *
 * Invariants checked before any tensor is converted: N fits the file and
 * KILN__ST_MAX_HEADER; the header is a JSON object without duplicate keys;
 * dtypes are F32/F16/BF16; shapes are non-negative ints whose product times
 * the element size equals end - begin without overflow; 0 <= begin <= end <=
 * data length; and no two tensors' byte ranges overlap. Tensors are appended
 * in header order (jansson keeps insertion order), which is file order.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "loader_internal.h"

/* The reference implementation refuses headers above 100 MB. */
#define KILN__ST_MAX_HEADER ((uint64_t)100 << 20)

typedef struct st_entry {
    const char *name;
    kiln_dtype dtype;
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

static int cmp_begin(const void *a, const void *b)
{
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static kiln_status parse_entry(const char *name, json_t *v, uint64_t data_len, st_entry *e)
{
    if (!json_is_object(v))
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: entry '%s' is not an object", name);
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s'.dtype missing or not a string",
                         name);
    const char *d = json_string_value(dt);
    if (strcmp(d, "F32") == 0) e->dtype = KILN_DTYPE_F32;
    else if (strcmp(d, "F16") == 0) e->dtype = KILN_DTYPE_F16;
    else if (strcmp(d, "BF16") == 0) e->dtype = KILN_DTYPE_BF16;
    else
        return kiln_fail(KILN_ERR_UNSUPPORTED, "safetensors: '%s'.dtype %.16s is not "
                         "supported (F32, F16, BF16)", name, d);
    if (!json_is_array(shape))
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s'.shape missing or not an array",
                         name);
    size_t nd = json_array_size(shape);
    if (nd > KILN_MAX_DIMS)
        return kiln_fail(KILN_ERR_LIMIT, "safetensors: '%s'.shape has %zu dims (max %d)",
                         name, nd, KILN_MAX_DIMS);
    uint64_t bytes = kiln__dtype_size(e->dtype);
    e->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *s = json_array_get(shape, i);
        if (!json_is_integer(s) || json_integer_value(s) < 0)
            return kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s'.shape[%zu] is not a "
                             "non-negative integer", name, i);
        e->shape[i] = json_integer_value(s);
        if (__builtin_mul_overflow(bytes, (uint64_t)e->shape[i], &bytes) ||
            bytes > KILN_WEIGHTS_MAX_BYTES)
            return kiln_fail(KILN_ERR_LIMIT, "safetensors: '%s'.shape[%zu] = %lld makes the "
                             "tensor exceed %zu bytes", name, i, (long long)e->shape[i],
                             KILN_WEIGHTS_MAX_BYTES);
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s'.data_offsets is not [begin, "
                         "end]", name);
    json_int_t b = json_integer_value(json_array_get(offs, 0)),
               en = json_integer_value(json_array_get(offs, 1));
    if (b < 0 || en < b || (uint64_t)en > data_len)
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s'.data_offsets [%lld, %lld] not "
                         "within the %llu-byte data section", name, (long long)b,
                         (long long)en, (unsigned long long)data_len);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->end - e->begin != bytes)
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s' holds %llu bytes but its shape "
                         "and dtype need %llu", name,
                         (unsigned long long)(e->end - e->begin), (unsigned long long)bytes);
    e->name = name;
    return KILN_OK;
}

kiln_status kiln__load_safetensors(const uint8_t *buf, size_t len, kiln_weights *w)
{
    kiln__weights_set_format(w, KILN_FORMAT_SAFETENSORS);
    if (len < 8)
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: file of %zu bytes has no header "
                         "length", len);
    uint64_t hlen = kiln__rd_u64le(buf);
    if (hlen > len - 8)
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: header length %llu exceeds file "
                         "size %zu", (unsigned long long)hlen, len);
    if (hlen > KILN__ST_MAX_HEADER)
        return kiln_fail(KILN_ERR_LIMIT, "safetensors: header length %llu exceeds %llu",
                         (unsigned long long)hlen, (unsigned long long)KILN__ST_MAX_HEADER);
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES,
                              &jerr);
    if (!root)
        return kiln_fail(KILN_ERR_FORMAT, "safetensors: header JSON invalid at byte %d: %s",
                         jerr.position, jerr.text);
    kiln_status st = KILN_OK;
    st_entry *ents = NULL, **order = NULL;
    if (!json_is_object(root)) {
        st = kiln_fail(KILN_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto done;
    }
    size_t n = json_object_size(root);
    if (n > KILN_WEIGHTS_MAX_TENSORS + 1) {
        st = kiln_fail(KILN_ERR_LIMIT, "safetensors: %zu header entries (max %d tensors)", n,
                       KILN_WEIGHTS_MAX_TENSORS);
        goto done;
    }
    ents = calloc(n ? n : 1, sizeof *ents);
    order = calloc(n ? n : 1, sizeof *order);
    if (!ents || !order) {
        st = kiln_fail(KILN_ERR_NOMEM, "safetensors: out of memory");
        goto done;
    }
    size_t k = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                st = kiln_fail(KILN_ERR_FORMAT, "safetensors: __metadata__ is not an object");
                goto done;
            }
            continue;
        }
        if ((st = parse_entry(key, val, data_len, &ents[k]))) goto done;
        order[k] = &ents[k];
        k++;
    }
    /* Overlap check on ranges sorted by start; empty tensors overlap nothing. */
    qsort(order, k, sizeof *order, cmp_begin);
    uint64_t prev_end = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < k; i++) {
        if (order[i]->begin == order[i]->end) continue;
        if (prev && order[i]->begin < prev_end) {
            st = kiln_fail(KILN_ERR_FORMAT, "safetensors: '%s' data [%llu, %llu) overlaps "
                           "'%s' (ends at %llu)", order[i]->name,
                           (unsigned long long)order[i]->begin,
                           (unsigned long long)order[i]->end, prev,
                           (unsigned long long)prev_end);
            goto done;
        }
        prev_end = order[i]->end;
        prev = order[i]->name;
    }
    for (size_t i = 0; i < k; i++) {
        st_entry *e = &ents[i];
        size_t numel = (size_t)((e->end - e->begin) / kiln__dtype_size(e->dtype));
        float *f = malloc((numel ? numel : 1) * sizeof *f);
        if (!f) {
            st = kiln_fail(KILN_ERR_NOMEM, "safetensors: out of memory for '%s'", e->name);
            goto done;
        }
        kiln__convert_to_f32(e->dtype, data + e->begin, numel, f);
        if ((st = kiln__weights_put(w, e->name, strlen(e->name), e->ndim, e->shape, f,
                                    e->dtype)))
            goto done;
    }
done:
    free(order);
    free(ents);
    json_decref(root);
    return st;
}

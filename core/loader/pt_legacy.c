/*
 * pt_legacy.c — PyTorch < 1.6 checkpoints (torch.save with
 * _use_new_zipfile_serialization=False).
 *
 * Layout: five pickles back to back, then raw storages:
 *   1. the magic number 0x1950a86a20f9469cfc6c (a LONG1 int);
 *   2. the protocol version (1001);
 *   3. sys_info, a dict: {'protocol_version', 'little_endian', 'type_sizes'};
 *   4. the object (the state dict), storages as persistent ids;
 *   5. the list of storage keys, in the order their data follows;
 *   then for each key: int64 little-endian element count, then count *
 *   element-size bytes (the element size comes from the storage class the
 *   object pickle gave that key).
 *
 * The storage table built here points into the input buffer (no copies); every
 * key of the list must be a storage of the object pickle with a matching
 * element count, and the blobs must fit the file exactly.
 */
#include <stdlib.h>
#include <string.h>

#include "loader_internal.h"

static const uint8_t MAGIC[10] = { 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19 };

typedef struct blob {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *data; /* NULL until its bytes are located */
} blob;

typedef struct legacy_ctx {
    blob *b;
    size_t n;
} legacy_ctx;

/* Keys compare by bytes, then length (a total order for sorting and bsearch). */
static int key_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int r = memcmp(a, b, an < bn ? an : bn);
    return r ? r : (an > bn) - (an < bn);
}

static int blob_cmp(const void *x, const void *y)
{
    const blob *a = x, *b = y;
    return key_cmp(a->key, a->key_len, b->key, b->key_len);
}

static int storage_cmp(const void *x, const void *y)
{
    const kiln__pval *a = *(const kiln__pval *const *)x, *b = *(const kiln__pval *const *)y;
    return key_cmp(a->u.storage.key, a->u.storage.key_len, b->u.storage.key,
                   b->u.storage.key_len);
}

/* c->b is sorted by key once every blob is located. */
static blob *find_blob(legacy_ctx *c, const uint8_t *key, size_t n)
{
    blob probe = { key, n, NULL };
    return bsearch(&probe, c->b, c->n, sizeof *c->b, blob_cmp);
}

static kiln_status legacy_storage(void *ctx, const kiln__pval *s, const uint8_t **data)
{
    blob *b = find_blob(ctx, s->u.storage.key, s->u.storage.key_len);
    if (!b || !b->data)
        return kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage '%.*s' is not in the storage "
                         "key list", (int)(s->u.storage.key_len > 64 ? 64 : s->u.storage.key_len),
                         (const char *)s->u.storage.key);
    *data = b->data;
    return KILN_OK;
}

/* The storage references of the object pickle, sorted by key, so each key
 * of the list is found in O(log n) even in a hostile file. */
static kiln_status storage_index(const kiln__pickle *vm, const kiln__pval ***out, size_t *n)
{
    size_t cnt = 0, cap = 0;
    const kiln__pval **idx = NULL, *v;
    for (uint32_t i = 0; (v = kiln__pickle_obj(vm, i)); i++) {
        if (v->kind != KILN__P_STORAGE) continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 128;
            const kiln__pval **g = realloc(idx, cap * sizeof *g);
            if (!g) {
                free(idx);
                return kiln_fail(KILN_ERR_NOMEM, "pt-legacy: out of memory");
            }
            idx = g;
        }
        idx[cnt++] = v;
    }
    if (cnt) qsort(idx, cnt, sizeof *idx, storage_cmp);
    /* One key is one blob: every reference to it must agree on its size and
     * type, or a view checked against one reference could overrun the blob. */
    for (size_t i = 1; i < cnt; i++) {
        const kiln__pval *a = idx[i - 1], *b = idx[i];
        if (storage_cmp(&idx[i - 1], &idx[i]) == 0 &&
            (a->u.storage.numel != b->u.storage.numel || a->u.storage.dtype != b->u.storage.dtype)) {
            kiln_status st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage '%.*s' is declared "
                                       "with different sizes or types",
                                       (int)(b->u.storage.key_len > 64 ? 64 : b->u.storage.key_len),
                                       (const char *)b->u.storage.key);
            free(idx);
            return st;
        }
    }
    *out = idx;
    *n = cnt;
    return KILN_OK;
}

static const kiln__pval *storage_for(const kiln__pval **idx, size_t n, const uint8_t *key,
                                     size_t key_len)
{
    kiln__pval probe;
    memset(&probe, 0, sizeof probe);
    probe.u.storage.key = key;
    probe.u.storage.key_len = key_len;
    const kiln__pval *pp = &probe, **hit = n ? bsearch(&pp, idx, n, sizeof *idx, storage_cmp)
                                              : NULL;
    return hit ? *hit : NULL;
}

kiln_status kiln__load_pt_legacy(const uint8_t *buf, size_t len, kiln_weights *w)
{
    kiln__weights_set_format(w, KILN_FORMAT_PT_LEGACY);
    kiln__pickle *vm[5] = { NULL };
    const kiln__pval *val[5];
    static const char *const what[5] = { "magic number", "protocol version", "sys info",
                                         "state dict", "storage key list" };
    legacy_ctx c = { NULL, 0 };
    const kiln__pval **sidx = NULL;
    size_t nsidx = 0;
    kiln_status st = KILN_OK;
    size_t pos = 0;
    for (int i = 0; i < 5; i++) {
        size_t used;
        if ((st = kiln__pickle_run(buf + pos, len - pos, &vm[i], &used, &val[i]))) {
            kiln_errmsg_prefix("pt-legacy: %s pickle at offset %zu: ", what[i], pos);
            goto done;
        }
        pos += used;
        if (i == 0 && !(val[0]->kind == KILN__P_BIGINT && val[0]->u.s.n == sizeof MAGIC &&
                        memcmp(val[0]->u.s.p, MAGIC, sizeof MAGIC) == 0)) {
            st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: wrong magic number (not a legacy "
                           "PyTorch file)");
            goto done;
        }
        if (i == 1 && !(val[1]->kind == KILN__P_INT && val[1]->u.i == 1001)) {
            st = kiln_fail(KILN_ERR_UNSUPPORTED, "pt-legacy: protocol version is not 1001");
            goto done;
        }
        if (i == 2) {
            if (val[2]->kind != KILN__P_DICT) {
                st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: sys info is not a dict");
                goto done;
            }
            for (uint32_t k = 0; k + 1 < val[2]->u.seq.n; k += 2) {
                const kiln__pval *key = kiln__pickle_obj(vm[2], val[2]->u.seq.items[k]);
                const kiln__pval *v = kiln__pickle_obj(vm[2], val[2]->u.seq.items[k + 1]);
                if (key->kind == KILN__P_STR && key->u.s.n == 13 &&
                    memcmp(key->u.s.p, "little_endian", 13) == 0 &&
                    !(v->kind == KILN__P_BOOL && v->u.i)) {
                    st = kiln_fail(KILN_ERR_UNSUPPORTED, "pt-legacy: sys info says the file "
                                   "is not little-endian");
                    goto done;
                }
            }
        }
    }
    if (val[4]->kind != KILN__P_LIST) {
        st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage key list is a not a list");
        goto done;
    }
    if ((st = storage_index(vm[3], &sidx, &nsidx))) goto done;
    c.n = val[4]->u.seq.n;
    c.b = calloc(c.n ? c.n : 1, sizeof *c.b);
    if (!c.b) {
        st = kiln_fail(KILN_ERR_NOMEM, "pt-legacy: out of memory");
        goto done;
    }
    for (size_t i = 0; i < c.n; i++) {
        const kiln__pval *k = kiln__pickle_obj(vm[4], val[4]->u.seq.items[i]);
        if (k->kind != KILN__P_STR) {
            st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage key %zu is not a str", i);
            goto done;
        }
        c.b[i].key = k->u.s.p;
        c.b[i].key_len = k->u.s.n;
        const kiln__pval *s = storage_for(sidx, nsidx, k->u.s.p, k->u.s.n);
        if (!s) {
            st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage key %zu ('%.*s') is not used "
                           "by the state dict", i, (int)(k->u.s.n > 64 ? 64 : k->u.s.n),
                           (const char *)k->u.s.p);
            goto done;
        }
        if (len - pos < 8) {
            st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: truncated: storage %zu's size at "
                           "offset %zu is past the end (%zu bytes)", i, pos, len);
            goto done;
        }
        uint64_t count = kiln__rd_u64le(buf + pos);
        pos += 8;
        size_t es = kiln__dtype_size(s->u.storage.dtype);
        if (count != (uint64_t)s->u.storage.numel || count > (len - pos) / es) {
            st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage %zu at offset %zu has %llu "
                           "elements; the state dict expects %lld and %zu bytes remain", i,
                           pos - 8, (unsigned long long)count, (long long)s->u.storage.numel,
                           len - pos);
            goto done;
        }
        c.b[i].data = buf + pos;
        pos += (size_t)count * es;
    }
    if (pos != len) {
        st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: %zu unexpected bytes after the last "
                       "storage (offset %zu)", len - pos, pos);
        goto done;
    }
    qsort(c.b, c.n, sizeof *c.b, blob_cmp);
    for (size_t i = 1; i < c.n; i++)
        if (blob_cmp(&c.b[i - 1], &c.b[i]) == 0) {
            st = kiln_fail(KILN_ERR_FORMAT, "pt-legacy: storage key '%.*s' is listed twice",
                           (int)(c.b[i].key_len > 64 ? 64 : c.b[i].key_len),
                           (const char *)c.b[i].key);
            goto done;
        }
    st = kiln__pickle_collect(vm[3], val[3], legacy_storage, &c, w);
done:
    free(sidx);
    free(c.b);
    for (int i = 0; i < 5; i++) kiln__pickle_destroy(vm[i]);
    return st;
}

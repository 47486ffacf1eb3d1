/*
 * pt_zip.c — PyTorch >= 1.6 checkpoints (torch.save's zip archive).
 *
 * Layout: a zip whose entries share one top folder, whose name varies with
 * the file name torch.save was given: `<top>/data.pkl` (the pickled state
 * dict, storages as persistent ids), `<top>/data/<key>` (one raw
 * little-endian storage per key), `<top>/version`, and in newer versions
 * `<top>/byteorder` ("little" or "big") and `<top>/.data/...`.
 *
 * The archive is opened from memory with libzip (zip_source_buffer_create,
 * not freed by us once zip_open_from_source took it). Entries are read whole
 * into malloc'ed buffers; an entry's declared size must be plausible for the
 * compressed bytes actually present (a zip bomb fails before allocating) and
 * a storage entry must hold exactly numel * element-size bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

#include "loader_internal.h"

/* deflate cannot expand beyond ~1032:1; anything claiming more is corrupt. */
#define KILN__ZIP_MAX_RATIO 1100u

typedef struct zip_ctx {
    zip_t *za;
    size_t file_len;
    char prefix[512]; /* "<top>/" including the slash, "" if none */
    uint8_t *buf;     /* the storage most recently read */
    const uint8_t *buf_key; /* its key (into the pickle), NULL if none */
    size_t buf_key_len, buf_len;
} zip_ctx;

/* Read entry idx completely; *out is malloc'ed (at least 1 byte). */
static kiln_status read_entry(zip_ctx *c, zip_int64_t idx, const char *what, uint8_t **out,
                              size_t *out_len)
{
    zip_stat_t zs;
    zip_stat_init(&zs);
    if (zip_stat_index(c->za, (zip_uint64_t)idx, 0, &zs) != 0 ||
        !(zs.valid & ZIP_STAT_SIZE) || !(zs.valid & ZIP_STAT_COMP_SIZE))
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: cannot stat entry %s: %s", what,
                         zip_strerror(c->za));
    if (zs.size > KILN_WEIGHTS_MAX_BYTES)
        return kiln_fail(KILN_ERR_LIMIT, "pt-zip: entry %s of %llu bytes exceeds %zu", what,
                         (unsigned long long)zs.size, KILN_WEIGHTS_MAX_BYTES);
    if (zs.comp_size > c->file_len ||
        zs.size > (zs.comp_size + 64) * (zip_uint64_t)KILN__ZIP_MAX_RATIO)
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: entry %s claims %llu bytes from %llu "
                         "compressed bytes in a %zu-byte file", what,
                         (unsigned long long)zs.size, (unsigned long long)zs.comp_size,
                         c->file_len);
    size_t n = (size_t)zs.size;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return kiln_fail(KILN_ERR_NOMEM, "pt-zip: out of memory for entry %s", what);
    zip_file_t *zf = zip_fopen_index(c->za, (zip_uint64_t)idx, 0);
    if (!zf) {
        free(b);
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: cannot open entry %s: %s", what,
                         zip_strerror(c->za));
    }
    size_t got = 0;
    while (got < n) {
        zip_int64_t r = zip_fread(zf, b + got, n - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    /* One more read reaches end of stream, where libzip verifies the CRC. */
    uint8_t extra;
    zip_int64_t tail = got == n ? zip_fread(zf, &extra, 1) : -1;
    if (got != n || tail != 0) {
        kiln_status st = kiln_fail(KILN_ERR_FORMAT, "pt-zip: entry %s: read %zu of %zu "
                                   "bytes: %s", what, got, n, zip_file_strerror(zf));
        zip_fclose(zf);
        free(b);
        return st;
    }
    zip_fclose(zf);
    *out = b;
    *out_len = n;
    return KILN_OK;
}

static kiln_status zip_storage(void *ctx, const kiln__pval *s, const uint8_t **data)
{
    zip_ctx *c = ctx;
    /* The collector asks for the views of one storage in a row: inflate it once. */
    if (c->buf_key && c->buf_key_len == s->u.storage.key_len &&
        memcmp(c->buf_key, s->u.storage.key, c->buf_key_len) == 0) {
        /* another reference to the key must agree on its size */
        if (c->buf_len != (size_t)s->u.storage.numel * kiln__dtype_size(s->u.storage.dtype))
            return kiln_fail(KILN_ERR_FORMAT, "pt-zip: storage %.*s is declared with "
                             "different sizes", (int)(c->buf_key_len > 64 ? 64 : c->buf_key_len),
                             (const char *)c->buf_key);
        *data = c->buf;
        return KILN_OK;
    }
    c->buf_key = NULL;
    char name[1024];
    int n = snprintf(name, sizeof name, "%sdata/%.*s", c->prefix, (int)s->u.storage.key_len,
                     (const char *)s->u.storage.key);
    if (n < 0 || (size_t)n >= sizeof name || memchr(s->u.storage.key, '\0', s->u.storage.key_len))
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: storage key too long or invalid");
    zip_int64_t idx = zip_name_locate(c->za, name, 0);
    if (idx < 0)
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: storage entry %s is missing", name);
    free(c->buf);
    c->buf = NULL;
    size_t len;
    kiln_status st = read_entry(c, idx, name, &c->buf, &len);
    if (st) return st;
    size_t want = (size_t)s->u.storage.numel * kiln__dtype_size(s->u.storage.dtype);
    if (len != want)
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: storage entry %s has %zu bytes, expected "
                         "%zu (%lld elements)", name, len, want,
                         (long long)s->u.storage.numel);
    c->buf_key = s->u.storage.key;
    c->buf_key_len = s->u.storage.key_len;
    c->buf_len = len;
    *data = c->buf;
    return KILN_OK;
}

/* Find the single "<top>/data.pkl" (or a bare "data.pkl") entry. */
static kiln_status find_pickle(zip_ctx *c, zip_int64_t *out)
{
    zip_int64_t n = zip_get_num_entries(c->za, 0), found = -1;
    for (zip_int64_t i = 0; i < n; i++) {
        const char *nm = zip_get_name(c->za, (zip_uint64_t)i, 0);
        if (!nm) continue;
        const char *slash = strchr(nm, '/');
        const char *base = slash ? slash + 1 : nm;
        if (strcmp(base, "data.pkl") != 0) continue;
        if (found >= 0)
            return kiln_fail(KILN_ERR_FORMAT, "pt-zip: more than one data.pkl (%s)", nm);
        size_t plen = (size_t)(base - nm);
        if (plen >= sizeof c->prefix)
            return kiln_fail(KILN_ERR_FORMAT, "pt-zip: archive folder name too long");
        memcpy(c->prefix, nm, plen);
        c->prefix[plen] = '\0';
        found = i;
    }
    if (found < 0)
        return kiln_fail(KILN_ERR_FORMAT, "pt-zip: no <folder>/data.pkl entry in the archive "
                         "(%lld entries)", (long long)n);
    *out = found;
    return KILN_OK;
}

kiln_status kiln__load_pt_zip(const uint8_t *buf, size_t len, kiln_weights *w)
{
    kiln__weights_set_format(w, KILN_FORMAT_PT_ZIP);
    zip_error_t zerr;
    zip_error_init(&zerr);
    zip_source_t *src = zip_source_buffer_create(buf, len, 0, &zerr);
    if (!src) {
        kiln_status st = kiln_fail(KILN_ERR_NOMEM, "pt-zip: %s", zip_error_strerror(&zerr));
        zip_error_fini(&zerr);
        return st;
    }
    zip_ctx c = { .file_len = len };
    c.za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
    if (!c.za) {
        kiln_status st = kiln_fail(KILN_ERR_FORMAT, "pt-zip: not a readable zip archive: %s",
                                   zip_error_strerror(&zerr));
        zip_source_free(src);
        zip_error_fini(&zerr);
        return st;
    }
    zip_error_fini(&zerr);

    kiln__pickle *vm = NULL;
    uint8_t *pkl = NULL;
    size_t pkl_len = 0, used;
    const kiln__pval *root;
    zip_int64_t pidx = -1;
    kiln_status st = find_pickle(&c, &pidx);
    if (st) goto done;

    /* Only little-endian storages can be read as they are. */
    char bo_name[600];
    snprintf(bo_name, sizeof bo_name, "%sbyteorder", c.prefix);
    zip_int64_t bo = zip_name_locate(c.za, bo_name, 0);
    if (bo >= 0) {
        uint8_t *b = NULL;
        size_t bl = 0;
        if ((st = read_entry(&c, bo, bo_name, &b, &bl))) goto done;
        int little = bl == 6 && memcmp(b, "little", 6) == 0;
        free(b);
        if (!little) {
            st = kiln_fail(KILN_ERR_UNSUPPORTED, "pt-zip: %s is not \"little\"", bo_name);
            goto done;
        }
    }

    char what[600];
    snprintf(what, sizeof what, "%sdata.pkl", c.prefix);
    if ((st = read_entry(&c, pidx, what, &pkl, &pkl_len))) goto done;
    if ((st = kiln__pickle_run(pkl, pkl_len, &vm, &used, &root))) {
        kiln_errmsg_prefix("pt-zip: %s: ", what);
        goto done;
    }
    st = kiln__pickle_collect(vm, root, zip_storage, &c, w);
done:
    kiln__pickle_destroy(vm);
    free(pkl);
    free(c.buf);
    zip_discard(c.za); /* also frees src */
    return st;
}

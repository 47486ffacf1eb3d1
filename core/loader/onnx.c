/*
 * onnx.c — the ONNX importer (onnx.h, docs/onnx.md).
 *
 * Decoding. A model file is a serialized ModelProto (schema:
 * loader/onnx/onnx.proto, decoded by protobuf-c through the generated
 * loader/onnx/onnx.pb-c.c). protobuf-c recurses once per nesting level
 * without a limit, and ONNX messages nest without end (attributes hold
 * graphs that hold nodes that hold attributes), so before protobuf-c sees
 * the bytes, wire_scan walks them once with the same message descriptors:
 * it checks the wire format, bounds the nesting depth and adds up what the
 * decoded tree will take in memory. Hostile input then fails with a message
 * instead of running out of stack or heap.
 *
 * Import. Every value (graph input, initializer, node output) has a slot,
 * found by name through a hash table. Walking back from the graph output
 * marks the nodes it depends on; only those are imported, in file order
 * (ONNX stores nodes in topological order: a node reading a value made by a
 * later node is refused). A value becomes either a feature map (a graph
 * tensor) or a constant (an initializer, a Constant node, an Identity of
 * either). Constants are converted to float or int64 only when an op reads
 * them, so an initializer nothing reads is never converted and, when it is
 * external, never read.
 *
 * Names. Graph tensors take their ONNX value names, nodes their ONNX node
 * names (or op type + index when empty), weights the name of the value a
 * Conv reads its kernel from without ".weight" (torch's "head.0.weight" ->
 * "head.0", so recipe globs written for the state-dict importers match).
 * Bytes that are neither printable ASCII nor valid UTF-8 become '_'; a name
 * longer than KILN_GRAPH_NAME_MAX - 1 keeps its first bytes plus '~' and a
 * hash of the whole name; a name already taken gets "_2", "_3", ...: all of
 * it deterministic, so one file always gives one graph.
 *
 * Ownership: the decoded ModelProto and the importer's tables live until
 * kiln_onnx_parse returns; the graph copies what it keeps.
 */
#include "onnx.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
#include "loader_internal.h"
#include "onnx/onnx.pb-c.h"

#define OPSET_MIN  11
#define OPSET_MAX  21
#define MAX_VALUES ((size_t)1 << 20) /* inputs + initializers + node outputs */

/* ---- small helpers ------------------------------------------------------------ */

static const char *S(const char *s) { return s ? s : ""; }

static int rd_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && *i < n; shift += 7) {
        uint8_t b = p[(*i)++];
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 1;
        }
    }
    return 0;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 (the rules jansson
 * applies: no overlong forms, no surrogates, nothing above U+10FFFF). */
static int utf8_len(const uint8_t *s)
{
    uint8_t c = s[0];
    if (c >= 0x20 && c < 0x7f) return 1;
    if (c >= 0xc2 && c <= 0xdf) return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        uint8_t lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        uint8_t lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* out = sanitized s + suffix, shortened to fit (see the file comment). */
static void kname(char out[KILN_GRAPH_NAME_MAX], const char *s, const char *suffix)
{
    char clean[KILN_GRAPH_NAME_MAX * 2];
    size_t n = 0, cut = 0, slen = strlen(suffix), room = KILN_GRAPH_NAME_MAX - 1 - slen;
    size_t keep = room - 17; /* bytes of s kept before "~" and 16 hex digits */
    int longer = 0;
    for (const uint8_t *p = (const uint8_t *)s; *p;) {
        int l = utf8_len(p);
        if (n + (l ? (size_t)l : 1) > room) {
            longer = 1;
            break;
        }
        if (l)
            memcpy(clean + n, p, (size_t)l), n += (size_t)l, p += l;
        else
            clean[n++] = '_', p++;
        if (n <= keep) cut = n;
    }
    if (longer) n = cut + (size_t)snprintf(clean + cut, sizeof clean - cut, "~%016llx", (unsigned long long)fnv1a(s));
    memcpy(out, clean, n); /* n + slen <= KILN_GRAPH_NAME_MAX - 1 */
    memcpy(out + n, suffix, slen + 1);
}

/* ---- a string -> int hash table (keys are borrowed) --------------------------- */

typedef struct smap {
    struct sent {
        const char *k;
        int v;
    } * e;
    size_t cap, n;
} smap;

static int smap_get(const smap *m, const char *k)
{
    if (!m->cap) return -1;
    for (size_t i = fnv1a(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->e[i].k) return -1;
        if (strcmp(m->e[i].k, k) == 0) return m->e[i].v;
    }
}

/* Insert k, or give it the new value v. */
static kiln_status smap_put(smap *m, const char *k, int v)
{
    for (size_t i = m->cap ? fnv1a(k) & (m->cap - 1) : 0; m->cap && m->e[i].k; i = (i + 1) & (m->cap - 1))
        if (strcmp(m->e[i].k, k) == 0) {
            m->e[i].v = v;
            return KILN_OK;
        }
    if (2 * (m->n + 1) > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 64;
        struct sent *e = calloc(nc, sizeof *e);
        if (!e) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
        for (size_t i = 0; i < m->cap; i++)
            if (m->e[i].k) {
                size_t j = fnv1a(m->e[i].k) & (nc - 1);
                while (e[j].k) j = (j + 1) & (nc - 1);
                e[j] = m->e[i];
            }
        free(m->e);
        m->e = e;
        m->cap = nc;
    }
    size_t i = fnv1a(k) & (m->cap - 1);
    while (m->e[i].k) i = (i + 1) & (m->cap - 1);
    m->e[i].k = k;
    m->e[i].v = v;
    m->n++;
    return KILN_OK;
}

/* ---- wire_scan: the pre-flight walk over the protobuf bytes --------------------- */

typedef struct wscan {
    uint64_t mem, limit;
    int depth_hit;
} wscan;

static int wire_scan(const uint8_t *p, size_t n, const ProtobufCMessageDescriptor *d, int depth, wscan *s)
{
    if (depth > KILN_ONNX_MAX_DEPTH) {
        s->depth_hit = 1;
        return 0;
    }
    s->mem += d->sizeof_message + 16;
    for (size_t i = 0; i < n;) {
        uint64_t key, v;
        if (!rd_varint(p, n, &i, &key) || key >> 3 == 0 || key >> 3 > 0x1fffffff) return 0;
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
        s->mem += 48; /* protobuf-c's scan record of each field occurrence */
        switch (key & 7) {
        case 0:
            if (!rd_varint(p, n, &i, &v)) return 0;
            s->mem += 8;
            break;
        case 1:
        case 5: {
            size_t w = (key & 7) == 1 ? 8 : 4;
            if (n - i < w) return 0;
            i += w;
            s->mem += 8;
            break;
        }
        case 2:
            if (!rd_varint(p, n, &i, &v) || v > n - i) return 0;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (!wire_scan(p + i, (size_t)v, f->descriptor, depth + 1, s)) return 0;
                s->mem += sizeof(void *);
            } else if (f && (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_BYTES)) {
                s->mem += v + 1 + sizeof(ProtobufCBinaryData);
            } else if (f) { /* packed scalars: at most one element per byte */
                s->mem += 8 * v;
            } else {
                s->mem += v + 32; /* kept as an unknown field */
            }
            i += (size_t)v;
            break;
        default: /* groups and the reserved wire types: not in ONNX */ return 0;
        }
        if (s->mem > s->limit) return 0;
    }
    return 1;
}

/* ---- the importer --------------------------------------------------------------- */

enum { V_UNSET = 0, V_FEAT, V_CONST };

typedef struct oval {
    const char *name;
    int kind;
    int producer; /* node index, or -1 */
    int nuse;     /* reads by imported nodes (+1: the graph output) */
    int tensor;   /* V_FEAT: graph tensor id */
    /* V_CONST: the data belongs to v[root] (an Identity of a constant is its
     * own value with its own name and the same root). */
    int root;
    const Onnx__TensorProto *tp; /* root: where the data comes from */
    int loaded, is_float;
    int ndim;
    int64_t dims[KILN_ONNX_MAX_DIMS];
    size_t numel;
    float *f;
    int64_t *i;
    /* the graph weight made from this value as a Conv kernel */
    int weight, wbias, wgroups;
} oval;

typedef struct imp {
    const Onnx__GraphProto *gp;
    const char *base_dir;
    int64_t opset;
    kiln_graph *g;
    oval *v;
    size_t nv;
    smap vals;                   /* ONNX value name -> index in v */
    smap used_t, used_n, used_w; /* kiln names taken: tensors, nodes, weights */
    smap next_sfx;               /* name -> the last "_k" suffix tried for it */
    char **owned;                /* the keys of used_* and next_sfx */
    size_t nowned, cowned;
    unsigned char *needed; /* per node */
    int out_vi;            /* the graph output's value */
    int64_t in_h, in_w;    /* the input's fixed size, or 0 */
    float out_div;
} imp;

/* Node currently imported, for messages. */
typedef struct nctx {
    imp *im;
    const Onnx__NodeProto *n;
    size_t idx;
    char label[KILN_GRAPH_NAME_MAX];
    char op[48];
} nctx;

static kiln_status nfail(const nctx *c, kiln_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static kiln_status nfail(const nctx *c, kiln_status st, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return kiln_fail(st, "onnx: node %s (%s): %s", c->label, c->op, why);
}

/* A copy of s that lives as long as the importer. */
static const char *keep(imp *im, const char *s)
{
    if (im->nowned == im->cowned) {
        size_t nc = im->cowned ? im->cowned * 2 : 64;
        char **o = realloc(im->owned, nc * sizeof *o);
        if (!o) return NULL;
        im->owned = o;
        im->cowned = nc;
    }
    char *d = strdup(s);
    if (d) im->owned[im->nowned++] = d;
    return d;
}

/* A kiln name not yet in `used`, recorded there. Suffixes continue where
 * the last clash of the same name stopped, so n nodes of one name cost O(n). */
static kiln_status take_name(imp *im, smap *used, const char *onnx_name, char out[KILN_GRAPH_NAME_MAX])
{
    kname(out, onnx_name, "");
    if (smap_get(used, out) >= 0) {
        char base[KILN_GRAPH_NAME_MAX];
        memcpy(base, out, sizeof base);
        int k = smap_get(&im->next_sfx, base);
        if (k < 0) k = 1;
        do {
            char suf[16];
            snprintf(suf, sizeof suf, "_%d", ++k);
            kname(out, onnx_name, suf);
        } while (smap_get(used, out) >= 0);
        /* one counter per base name, shared by the three name spaces: still unique in each */
        const char *kb = keep(im, base);
        if (!kb || smap_put(&im->next_sfx, kb, k) != KILN_OK) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    }
    const char *d = keep(im, out);
    if (!d) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    return smap_put(used, d, 0);
}

static kiln_status add_value(imp *im, const char *name, int kind, int producer)
{
    if (smap_get(&im->vals, name) >= 0) {
        char k[KILN_GRAPH_NAME_MAX];
        kname(k, name, "");
        return kiln_fail(KILN_ERR_FORMAT, "onnx: value %s is defined twice", k);
    }
    if (im->nv >= MAX_VALUES) return kiln_fail(KILN_ERR_LIMIT, "onnx: more than %zu values", MAX_VALUES);
    oval *x = &im->v[im->nv];
    memset(x, 0, sizeof *x);
    x->name = name;
    x->kind = kind;
    x->producer = producer;
    x->tensor = -1;
    x->root = (int)im->nv;
    x->weight = -1;
    kiln_status st = smap_put(&im->vals, name, (int)im->nv);
    if (st == KILN_OK) im->nv++;
    return st;
}

/* ---- tensor data ------------------------------------------------------------------ */

static const char *dtype_name(int t)
{
    static const char *const names[] = {"UNDEFINED", "FLOAT",  "UINT8",     "INT8",       "UINT16",  "INT16",
                                        "INT32",     "INT64",  "STRING",    "BOOL",       "FLOAT16", "DOUBLE",
                                        "UINT32",    "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16"};
    return t >= 0 && t < (int)(sizeof names / sizeof names[0]) ? names[t] : "an unknown type";
}

static size_t dtype_size(int t)
{
    switch (t) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: return 4;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: return 2;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE:
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: return 8;
    default: return 0;
    }
}

static int parse_u64(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    if (!s || !*s) return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || x > (UINT64_MAX - 9) / 10) return 0;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return 1;
}

/* External data: `nbytes` bytes of the file named by the tensor's
 * "location", from "offset" (default 0), checked against "length". */
static kiln_status read_external(const imp *im, const Onnx__TensorProto *tp, const char *tname, size_t nbytes,
                                 uint8_t **out)
{
    const char *loc = NULL;
    uint64_t off = 0, length = UINT64_MAX;
    for (size_t k = 0; k < tp->n_external_data; k++) {
        const char *key = S(tp->external_data[k]->key), *val = S(tp->external_data[k]->value);
        if (strcmp(key, "location") == 0)
            loc = val;
        else if (strcmp(key, "offset") == 0 && !parse_u64(val, &off))
            return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: external data offset is not a number", tname);
        else if (strcmp(key, "length") == 0 && !parse_u64(val, &length))
            return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: external data length is not a number", tname);
    }
    if (!loc || !*loc) return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: external data without a location", tname);
    char lname[KILN_GRAPH_NAME_MAX];
    kname(lname, loc, "");
    if (loc[0] == '/')
        return kiln_fail(
            KILN_ERR_FORMAT,
            "onnx: tensor %s: external data location %s is absolute (it must be relative to the model's directory)",
            tname, lname);
    if (strchr(loc, '\\'))
        return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: external data location %s has a backslash", tname, lname);
    for (const char *c = loc; *c;) {
        size_t l = strcspn(c, "/");
        if (l == 2 && c[0] == '.' && c[1] == '.')
            return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: external data location %s contains \"..\"", tname,
                             lname);
        c += l;
        if (*c) c++;
    }
    if (!im->base_dir)
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "onnx: tensor %s: external data (%s) refused: the model was not read from a file", tname,
                         lname);
    if (length != UINT64_MAX && length != nbytes)
        return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: external data length %llu, its shape needs %zu bytes",
                         tname, (unsigned long long)length, nbytes);
    char *path = NULL;
    if (asprintf(&path, "%s/%s", im->base_dir, loc) < 0) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return kiln_fail(errno == ENOENT ? KILN_ERR_NOT_FOUND : KILN_ERR_IO,
                         "onnx: tensor %s: external data file %s: %s", tname, lname, strerror(errno));
    struct stat sb;
    kiln_status st = KILN_OK;
    uint8_t *buf = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        st = kiln_fail(KILN_ERR_IO, "onnx: tensor %s: external data file %s is not a regular file", tname, lname);
    else if (off > (uint64_t)sb.st_size || nbytes > (uint64_t)sb.st_size - off)
        st = kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: bytes %llu..%llu of %s, which has %lld", tname,
                       (unsigned long long)off, (unsigned long long)(off + nbytes), lname, (long long)sb.st_size);
    else if (!(buf = malloc(nbytes ? nbytes : 1)))
        st = kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory for tensor %s", tname);
    for (size_t got = 0; st == KILN_OK && got < nbytes;) {
        ssize_t r = pread(fd, buf + got, nbytes - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            st = kiln_fail(KILN_ERR_IO, "onnx: tensor %s: reading %s: %s", tname, lname,
                           r < 0 ? strerror(errno) : "short file");
        else
            got += (size_t)r;
    }
    close(fd);
    if (st != KILN_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    return KILN_OK;
}

/* Convert a TensorProto into x (float for the float types, int64 for the
 * integer ones); every element count is checked against what is stored. */
static kiln_status tensor_load(const imp *im, const Onnx__TensorProto *tp, const char *vname, oval *x)
{
    char tname[KILN_GRAPH_NAME_MAX];
    kname(tname, vname, "");
    int dt = tp->has_data_type ? tp->data_type : 0;
    size_t es = dtype_size(dt);
    if (!es)
        return kiln_fail(KILN_ERR_UNSUPPORTED,
                         "onnx: tensor %s holds %s data (kiln reads FLOAT, FLOAT16, BFLOAT16, DOUBLE, INT32, INT64)",
                         tname, dtype_name(dt));
    if (tp->segment) return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: tensor %s is stored in segments", tname);
    if (tp->n_dims > KILN_ONNX_MAX_DIMS)
        return kiln_fail(KILN_ERR_LIMIT, "onnx: tensor %s has %zu dimensions (at most %d)", tname, tp->n_dims,
                         KILN_ONNX_MAX_DIMS);
    size_t numel = 1;
    for (size_t k = 0; k < tp->n_dims; k++) {
        if (tp->dims[k] < 0)
            return kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s has dimension %lld", tname, (long long)tp->dims[k]);
        if ((uint64_t)tp->dims[k] > KILN_ONNX_MAX_TENSOR || (numel *= (size_t)tp->dims[k]) > KILN_ONNX_MAX_TENSOR)
            return kiln_fail(KILN_ERR_LIMIT, "onnx: tensor %s has more than %zu elements", tname, KILN_ONNX_MAX_TENSOR);
        x->dims[k] = tp->dims[k];
    }
    x->ndim = (int)tp->n_dims;
    x->numel = numel;
    int is_float = dt != ONNX__TENSOR_PROTO__DATA_TYPE__INT32 && dt != ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    float *f = is_float ? malloc((numel ? numel : 1) * sizeof(float)) : NULL;
    int64_t *iv = is_float ? NULL : malloc((numel ? numel : 1) * sizeof(int64_t));
    if (!f && !iv) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory for tensor %s", tname);
    const uint8_t *raw = NULL;
    uint8_t *ext = NULL;
    size_t stored = 0;
    kiln_status st = KILN_OK;
    if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        st = read_external(im, tp, tname, numel * es, &ext);
        raw = ext;
        stored = numel;
    } else if (tp->has_raw_data) {
        raw = tp->raw_data.data;
        if (tp->raw_data.len != numel * es)
            st = kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: %zu bytes of data, its shape needs %zu", tname,
                           tp->raw_data.len, numel * es);
        stored = numel;
    } else {
        switch (dt) {
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: stored = tp->n_float_data; break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: stored = tp->n_double_data; break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: stored = tp->n_int64_data; break;
        default: stored = tp->n_int32_data; break; /* INT32, FLOAT16, BFLOAT16 */
        }
        if (stored != numel)
            st = kiln_fail(KILN_ERR_FORMAT, "onnx: tensor %s: %zu values stored, its shape has %zu", tname, stored,
                           numel);
    }
    for (size_t k = 0; st == KILN_OK && k < numel; k++) {
        const uint8_t *b = raw ? raw + k * es : NULL;
        switch (dt) {
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: {
            if (b) {
                uint32_t u = kiln__rd_u32le(b);
                memcpy(&f[k], &u, 4);
            } else {
                f[k] = tp->float_data[k];
            }
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: {
            double d;
            if (b) {
                uint64_t u = kiln__rd_u64le(b);
                memcpy(&d, &u, 8);
            } else {
                d = tp->double_data[k];
            }
            f[k] = (float)d;
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
        case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: {
            uint16_t h = b ? (uint16_t)(b[0] | b[1] << 8) : (uint16_t)(tp->int32_data[k] & 0xffff);
            f[k] = dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ? kiln__f16_to_f32(h) : kiln__bf16_to_f32(h);
            break;
        }
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: iv[k] = b ? (int32_t)kiln__rd_u32le(b) : tp->int32_data[k]; break;
        default: /* INT64 */ iv[k] = b ? (int64_t)kiln__rd_u64le(b) : tp->int64_data[k]; break;
        }
    }
    free(ext);
    if (st != KILN_OK) {
        free(f);
        free(iv);
        return st;
    }
    x->is_float = is_float;
    x->f = f;
    x->i = iv;
    x->loaded = 1;
    return KILN_OK;
}

/* ---- node inputs and attributes ----------------------------------------------------- */

/* The value of input k, or NULL when the input is absent (optional inputs
 * are left out or named ""). */
static kiln_status in_val(const nctx *c, size_t k, oval **out)
{
    *out = NULL;
    if (k >= c->n->n_input || !*S(c->n->input[k])) return KILN_OK;
    int vi = smap_get(&c->im->vals, c->n->input[k]);
    char vn[KILN_GRAPH_NAME_MAX];
    kname(vn, c->n->input[k], "");
    if (vi < 0) return nfail(c, KILN_ERR_FORMAT, "reads %s, which no node, input or initializer defines", vn);
    oval *x = &c->im->v[vi];
    if (x->kind == V_UNSET)
        return nfail(c, KILN_ERR_FORMAT, "reads %s before the node that makes it (nodes must be in topological order)",
                     vn);
    *out = x;
    return KILN_OK;
}

static kiln_status need_in(const nctx *c, size_t k, oval **out)
{
    kiln_status st = in_val(c, k, out);
    if (st == KILN_OK && !*out) return nfail(c, KILN_ERR_FORMAT, "input %zu is missing", k);
    return st;
}

static kiln_status feat_in(const nctx *c, size_t k, int *tensor)
{
    oval *x;
    kiln_status st = need_in(c, k, &x);
    if (st != KILN_OK) return st;
    if (x->kind != V_FEAT) {
        char vn[KILN_GRAPH_NAME_MAX];
        kname(vn, x->name, "");
        return nfail(c, KILN_ERR_UNSUPPORTED, "input %zu (%s) is a constant where kiln expects a feature map", k, vn);
    }
    *tensor = x->tensor;
    return KILN_OK;
}

/* A constant input, converted; *out is the value holding the data (the root). */
static kiln_status const_in(const nctx *c, size_t k, int optional, oval **out)
{
    oval *x;
    kiln_status st = optional ? in_val(c, k, &x) : need_in(c, k, &x);
    *out = NULL;
    if (st != KILN_OK || !x) return st;
    if (x->kind != V_CONST) {
        char vn[KILN_GRAPH_NAME_MAX];
        kname(vn, x->name, "");
        return nfail(c, KILN_ERR_UNSUPPORTED, "input %zu (%s) must be a constant (an initializer or a Constant node)",
                     k, vn);
    }
    oval *r = &c->im->v[x->root];
    if (!r->loaded && (st = tensor_load(c->im, r->tp, r->name, r)) != KILN_OK) return st;
    *out = r;
    return KILN_OK;
}

static const Onnx__AttributeProto *attr(const nctx *c, const char *name)
{
    for (size_t k = 0; k < c->n->n_attribute; k++)
        if (strcmp(S(c->n->attribute[k]->name), name) == 0) return c->n->attribute[k];
    return NULL;
}

static kiln_status attr_check(const nctx *c, const Onnx__AttributeProto *a, Onnx__AttributeProto__AttributeType t)
{
    if (a->ref_attr_name && *a->ref_attr_name)
        return nfail(c, KILN_ERR_FORMAT, "attribute %.40s refers to a function attribute", S(a->name));
    if (a->has_type && a->type != t) return nfail(c, KILN_ERR_FORMAT, "attribute %.40s has the wrong type", S(a->name));
    return KILN_OK;
}

static kiln_status attr_int(const nctx *c, const char *name, int64_t def, int64_t *v)
{
    const Onnx__AttributeProto *a = attr(c, name);
    *v = def;
    if (!a) return KILN_OK;
    kiln_status st = attr_check(c, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (st == KILN_OK) *v = a->i;
    return st;
}

static kiln_status attr_float(const nctx *c, const char *name, float def, float *v)
{
    const Onnx__AttributeProto *a = attr(c, name);
    *v = def;
    if (!a) return KILN_OK;
    kiln_status st = attr_check(c, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (st == KILN_OK) *v = a->f;
    return st;
}

/* *n = -1 when absent. */
static kiln_status attr_ints(const nctx *c, const char *name, const int64_t **v, long *n)
{
    const Onnx__AttributeProto *a = attr(c, name);
    *v = NULL;
    *n = -1;
    if (!a) return KILN_OK;
    kiln_status st = attr_check(c, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    if (st == KILN_OK) *v = a->ints, *n = (long)a->n_ints;
    return st;
}

static kiln_status attr_str(const nctx *c, const char *name, const char *def, char out[64])
{
    const Onnx__AttributeProto *a = attr(c, name);
    snprintf(out, 64, "%s", def);
    if (!a) return KILN_OK;
    kiln_status st = attr_check(c, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    if (st != KILN_OK) return st;
    size_t l = a->s.len < 63 ? a->s.len : 63;
    if (l) memcpy(out, a->s.data, l);
    out[l] = '\0';
    for (size_t k = 0; k < l; k++)
        if (out[k] < 0x20 || out[k] > 0x7e) out[k] = '_';
    return KILN_OK;
}

/* ---- making graph nodes --------------------------------------------------------------- */

/* The node's kiln name and its output tensor's. */
static kiln_status out_names(const nctx *c, char node[KILN_GRAPH_NAME_MAX], char tensor[KILN_GRAPH_NAME_MAX])
{
    kiln_status st = take_name(c->im, &c->im->used_n, c->label, node);
    if (st == KILN_OK) st = take_name(c->im, &c->im->used_t, c->n->output[0], tensor);
    return st;
}

static oval *out_val(const nctx *c) { return &c->im->v[smap_get(&c->im->vals, c->n->output[0])]; }

static void set_feat(const nctx *c, int tensor)
{
    oval *o = out_val(c);
    o->kind = V_FEAT;
    o->tensor = tensor;
}

/* A builder failure: say which ONNX op it was. */
static kiln_status built(const nctx *c, kiln_status st, int tensor)
{
    if (st != KILN_OK) {
        kiln_errmsg_prefix("onnx: %s ", c->op);
        return st;
    }
    set_feat(c, tensor);
    return KILN_OK;
}

static kiln_status mk_unary(const nctx *c, kiln_op op, int in, float param)
{
    char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
    int t = -1;
    kiln_status st = out_names(c, nn, tn);
    if (st == KILN_OK) st = kiln_graph_unary(c->im->g, op, nn, tn, in, param, &t);
    return built(c, st, t);
}

/* A single number: a constant of one element, of rank <= 4 (a higher rank
 * would broadcast the 4-D feature map up). */
static int scalar_of(const oval *k, float *v)
{
    if (!k || !k->is_float || k->numel != 1 || k->ndim > 4) return 0;
    *v = k->f[0];
    return 1;
}

static const kiln_gtensor *tens(const nctx *c, int t) { return kiln_graph_tensor(c->im->g, (size_t)t); }

/* ---- the ops ---------------------------------------------------------------------------- */

static int is_meanshift(const char *name, int cout, int cin, int k, int groups, const float *w)
{
    if (cout != 3 || cin != 3 || k != 1 || groups != 1) return 0;
    if (strstr(name, "sub_mean") || strstr(name, "add_mean")) return 1;
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 3; i++)
            if (o == i ? !(w[o * 3 + i] > 0) : w[o * 3 + i] != 0) return 0;
    return 1; /* diagonal: a per-channel scale, 1/std */
}

static kiln_status op_conv(const nctx *c)
{
    imp *im = c->im;
    int x;
    oval *w, *b, *wv;
    kiln_status st = feat_in(c, 0, &x);
    if (st == KILN_OK) st = const_in(c, 1, 0, &w);
    if (st == KILN_OK) st = const_in(c, 2, 1, &b);
    if (st == KILN_OK) st = need_in(c, 1, &wv);
    if (st != KILN_OK) return st;
    if (!w->is_float || w->ndim != 4)
        return nfail(c, KILN_ERR_UNSUPPORTED,
                     "weight of rank %d (kiln takes 2-D convolutions with a float [out, in/groups, k, k] weight)",
                     w->ndim);
    int64_t cout = w->dims[0], cpg = w->dims[1], kh = w->dims[2], kw = w->dims[3];
    if (kh != kw || kh % 2 == 0 || kh > KILN_GRAPH_MAX_K)
        return nfail(c, KILN_ERR_UNSUPPORTED, "%lldx%lld kernel (kiln takes square odd kernels up to %d)",
                     (long long)kh, (long long)kw, KILN_GRAPH_MAX_K);
    if (cout < 1 || cout > 65536 || cpg < 1 || cpg > 65536)
        return nfail(c, KILN_ERR_UNSUPPORTED, "weight of shape [%lld, %lld, %lld, %lld]", (long long)cout,
                     (long long)cpg, (long long)kh, (long long)kw);
    int64_t group, k = kh;
    const int64_t *ks, *pads, *strides, *dil;
    long nks, npads, nstr, ndil;
    char autopad[64];
    if ((st = attr_int(c, "group", 1, &group)) != KILN_OK ||
        (st = attr_ints(c, "kernel_shape", &ks, &nks)) != KILN_OK ||
        (st = attr_ints(c, "pads", &pads, &npads)) != KILN_OK ||
        (st = attr_ints(c, "strides", &strides, &nstr)) != KILN_OK ||
        (st = attr_ints(c, "dilations", &dil, &ndil)) != KILN_OK ||
        (st = attr_str(c, "auto_pad", "NOTSET", autopad)) != KILN_OK)
        return st;
    if (group < 1 || group > 65536) return nfail(c, KILN_ERR_FORMAT, "group %lld", (long long)group);
    if (nks >= 0 && (nks != 2 || ks[0] != kh || ks[1] != kw))
        return nfail(c, KILN_ERR_FORMAT, "kernel_shape does not match the weight");
    for (long i = 0; i < nstr; i++)
        if (strides[i] != 1)
            return nfail(c, KILN_ERR_UNSUPPORTED, "stride %lld (kiln takes stride 1)", (long long)strides[i]);
    for (long i = 0; i < ndil; i++)
        if (dil[i] != 1)
            return nfail(c, KILN_ERR_UNSUPPORTED, "dilation %lld (kiln takes dilation 1)", (long long)dil[i]);
    if (strcmp(autopad, "NOTSET") == 0) {
        int ok = npads < 0 ? k == 1 : npads == 4;
        for (long i = 0; ok && i < npads; i++) ok = pads[i] == k / 2;
        if (!ok)
            return nfail(c, KILN_ERR_UNSUPPORTED,
                         "padding that is not %lld on every side ('same' padding for a %lldx%lld kernel)",
                         (long long)(k / 2), (long long)k, (long long)k);
    } else if (strcmp(autopad, "VALID") == 0) {
        if (k != 1)
            return nfail(c, KILN_ERR_UNSUPPORTED, "auto_pad VALID on a %lldx%lld kernel (kiln takes 'same' padding)",
                         (long long)k, (long long)k);
    } else if (strcmp(autopad, "SAME_UPPER") != 0 && strcmp(autopad, "SAME_LOWER") != 0) {
        return nfail(c, KILN_ERR_FORMAT, "auto_pad %s", autopad);
    }
    if (cpg * group > 65536) return nfail(c, KILN_ERR_UNSUPPORTED, "%lld input channels", (long long)(cpg * group));
    int cin = (int)(cpg * group);
    const kiln_gtensor *tx = tens(c, x);
    if (cin != tx->c)
        return nfail(c, KILN_ERR_ARCH,
                     "the weight takes %d input channels (%lld per group, %lld groups), the input has %d", cin,
                     (long long)cpg, (long long)group, tx->c);
    if (cout % group)
        return nfail(c, KILN_ERR_UNSUPPORTED, "%lld output channels in %lld groups", (long long)cout, (long long)group);
    if (b && (!b->is_float || b->numel != (size_t)cout || b->ndim != 1))
        return nfail(c, KILN_ERR_FORMAT, "bias of %zu values for %lld output channels", b->numel, (long long)cout);
    int bvi = b ? (int)(b - im->v) : -1;
    int id = wv->weight;
    if (id < 0 || wv->wbias != bvi || wv->wgroups != (int)group) {
        for (size_t i = 0; i < w->numel; i++)
            if (!isfinite(w->f[i])) return nfail(c, KILN_ERR_FORMAT, "the weight has a non-finite value");
        for (size_t i = 0; b && i < b->numel; i++)
            if (!isfinite(b->f[i])) return nfail(c, KILN_ERR_FORMAT, "the bias has a non-finite value");
        char base[KILN_GRAPH_NAME_MAX * 2], wn[KILN_GRAPH_NAME_MAX];
        snprintf(base, sizeof base, "%s", wv->name);
        size_t bl = strlen(base);
        if (bl > 7 && strcmp(base + bl - 7, ".weight") == 0) base[bl - 7] = '\0';
        if ((st = take_name(im, &im->used_w, base, wn)) != KILN_OK) return st;
        int ms = is_meanshift(wn, (int)cout, cin, (int)k, (int)group, w->f);
        st = kiln_graph_add_weight(im->g, wn, (int)cout, cin, (int)k, (int)group, w->f, b ? b->f : NULL, b != NULL, ms,
                                   &id);
        if (st != KILN_OK) return built(c, st, -1);
        if (wv->weight < 0) {
            wv->weight = id;
            wv->wbias = bvi;
            wv->wgroups = (int)group;
        }
    }
    char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
    int t = -1;
    st = out_names(c, nn, tn);
    if (st == KILN_OK) st = kiln_graph_conv(im->g, nn, tn, x, id, &t);
    return built(c, st, t);
}

static kiln_status op_prelu(const nctx *c)
{
    int x;
    oval *s;
    kiln_status st = feat_in(c, 0, &x);
    if (st == KILN_OK) st = const_in(c, 1, 0, &s);
    if (st != KILN_OK) return st;
    int ch = tens(c, x)->c;
    if (!s->is_float || s->ndim > 4 || (s->numel != 1 && s->numel != (size_t)ch))
        return nfail(c, KILN_ERR_UNSUPPORTED, "slope of %zu values for %d channels", s->numel, ch);
    /* ONNX broadcasts from the right: [C] would run along the width. */
    for (int d = 0; d < s->ndim; d++) {
        int axis = 4 - s->ndim + d;
        if (s->dims[d] != 1 && axis != 1)
            return nfail(c, KILN_ERR_UNSUPPORTED,
                         "a slope of rank %d broadcasts along axis %d, not the channels (per-channel slopes have shape "
                         "[C, 1, 1])",
                         s->ndim, axis);
    }
    char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
    int t = -1;
    st = out_names(c, nn, tn);
    if (st == KILN_OK) st = kiln_graph_prelu(c->im->g, nn, tn, x, s->f, (int)s->numel, &t);
    return built(c, st, t);
}

/* Add, Mul, Div: which operands are feature maps. */
static kiln_status binary_vals(const nctx *c, oval **a, oval **b)
{
    kiln_status st = need_in(c, 0, a);
    if (st == KILN_OK) st = need_in(c, 1, b);
    if (st == KILN_OK && c->n->n_input != 2) return nfail(c, KILN_ERR_FORMAT, "%zu inputs", c->n->n_input);
    return st;
}

static kiln_status op_add(const nctx *c)
{
    oval *a, *b;
    kiln_status st = binary_vals(c, &a, &b);
    if (st != KILN_OK) return st;
    if (a->kind != V_FEAT || b->kind != V_FEAT)
        return nfail(c, KILN_ERR_UNSUPPORTED, "adds a constant (kiln adds two feature maps)");
    char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
    int t = -1;
    st = out_names(c, nn, tn);
    if (st == KILN_OK) st = kiln_graph_binary(c->im->g, KILN_OP_ADD, nn, tn, a->tensor, b->tensor, &t);
    return built(c, st, t);
}

static kiln_status op_mul(const nctx *c)
{
    oval *a, *b;
    kiln_status st = binary_vals(c, &a, &b);
    if (st != KILN_OK) return st;
    if (a->kind == V_FEAT && b->kind == V_FEAT) {
        const kiln_gtensor *ta = tens(c, a->tensor), *tb = tens(c, b->tensor);
        if (ta->pooled == tb->pooled)
            return nfail(
                c, KILN_ERR_UNSUPPORTED,
                "multiplies two %s feature maps (kiln multiplies a map by a pooled [C,1,1] one, or by a constant)",
                ta->pooled ? "pooled" : "full-size");
        int x = ta->pooled ? b->tensor : a->tensor, s = ta->pooled ? a->tensor : b->tensor;
        char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
        int t = -1;
        st = out_names(c, nn, tn);
        if (st == KILN_OK) st = kiln_graph_binary(c->im->g, KILN_OP_CHANNEL_MUL, nn, tn, x, s, &t);
        return built(c, st, t);
    }
    if (a->kind != V_FEAT && b->kind != V_FEAT) return nfail(c, KILN_ERR_UNSUPPORTED, "multiplies two constants");
    oval *k;
    float v;
    int x = a->kind == V_FEAT ? a->tensor : b->tensor;
    if ((st = const_in(c, a->kind == V_FEAT ? 1 : 0, 0, &k)) != KILN_OK) return st;
    if (!scalar_of(k, &v))
        return nfail(c, KILN_ERR_UNSUPPORTED, "multiplies by a constant of %zu values (kiln multiplies by one number)",
                     k->numel);
    return mk_unary(c, KILN_OP_MUL, x, v);
}

static kiln_status op_div(const nctx *c)
{
    oval *a, *b, *k;
    float d;
    kiln_status st = binary_vals(c, &a, &b);
    if (st != KILN_OK) return st;
    if (a->kind != V_FEAT || b->kind != V_CONST)
        return nfail(c, KILN_ERR_UNSUPPORTED, "kiln divides a feature map by a constant, nothing else");
    if ((st = const_in(c, 1, 0, &k)) != KILN_OK) return st;
    if (!scalar_of(k, &d))
        return nfail(c, KILN_ERR_UNSUPPORTED, "divides by a constant of %zu values (kiln divides by one number)",
                     k->numel);
    if (!isfinite(d) || d == 0.0f) return nfail(c, KILN_ERR_UNSUPPORTED, "division by %g", (double)d);
    oval *o = out_val(c);
    if (o - c->im->v == c->im->out_vi && o->nuse == 1) {
        /* The network's last step, as EDSR's "/ 255": the graph's out_div. */
        c->im->out_div = d;
        set_feat(c, a->tensor);
        return KILN_OK;
    }
    char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
    int t = -1;
    st = out_names(c, nn, tn);
    if (st == KILN_OK) st = kiln_graph_div(c->im->g, nn, tn, a->tensor, d, &t);
    return built(c, st, t);
}

static kiln_status op_concat(const nctx *c)
{
    int64_t axis;
    const Onnx__AttributeProto *a = attr(c, "axis");
    if (!a) return nfail(c, KILN_ERR_FORMAT, "no axis attribute");
    kiln_status st = attr_int(c, "axis", 0, &axis);
    if (st != KILN_OK) return st;
    if (axis != 1 && axis != -3)
        return nfail(c, KILN_ERR_UNSUPPORTED, "concatenates along axis %lld (kiln concatenates channels, axis 1)",
                     (long long)axis);
    if (c->n->n_input < 1 || c->n->n_input > KILN_GRAPH_MAX_IN)
        return nfail(c, KILN_ERR_UNSUPPORTED, "%zu inputs (kiln concatenates 1 to %d)", c->n->n_input,
                     KILN_GRAPH_MAX_IN);
    int in[KILN_GRAPH_MAX_IN];
    for (size_t k = 0; k < c->n->n_input; k++)
        if ((st = feat_in(c, k, &in[k])) != KILN_OK) return st;
    if (c->n->n_input == 1) {
        set_feat(c, in[0]);
        return KILN_OK;
    }
    char nn[KILN_GRAPH_NAME_MAX], tn[KILN_GRAPH_NAME_MAX];
    int t = -1;
    st = out_names(c, nn, tn);
    if (st == KILN_OK) st = kiln_graph_concat(c->im->g, nn, tn, in, (int)c->n->n_input, &t);
    return built(c, st, t);
}

static kiln_status op_depth_to_space(const nctx *c)
{
    int x;
    int64_t r;
    char mode[64];
    kiln_status st = feat_in(c, 0, &x);
    if (st == KILN_OK && !attr(c, "blocksize")) return nfail(c, KILN_ERR_FORMAT, "no blocksize attribute");
    if (st == KILN_OK) st = attr_int(c, "blocksize", 0, &r);
    if (st == KILN_OK) st = attr_str(c, "mode", "DCR", mode);
    if (st != KILN_OK) return st;
    if (strcmp(mode, "CRD") != 0)
        return nfail(c, KILN_ERR_UNSUPPORTED, "mode %s (kiln takes CRD, the channel order of PyTorch's PixelShuffle)",
                     mode);
    if (r < 1 || r > 8) return nfail(c, KILN_ERR_UNSUPPORTED, "block size %lld (kiln takes 1 to 8)", (long long)r);
    if (r == 1) {
        set_feat(c, x);
        return KILN_OK;
    }
    return mk_unary(c, KILN_OP_PIXEL_SHUFFLE, x, (float)r);
}

static kiln_status op_reduce_mean(const nctx *c)
{
    int x;
    int64_t keep, noop;
    const int64_t *axes = NULL;
    long nax = -1;
    kiln_status st = feat_in(c, 0, &x);
    if (st == KILN_OK) st = attr_int(c, "keepdims", 1, &keep);
    if (st == KILN_OK) st = attr_int(c, "noop_with_empty_axes", 0, &noop);
    if (st != KILN_OK) return st;
    if (c->im->opset < 18) {
        if ((st = attr_ints(c, "axes", &axes, &nax)) != KILN_OK) return st;
    } else {
        oval *k;
        if ((st = const_in(c, 1, 1, &k)) != KILN_OK) return st;
        if (k && (k->is_float || k->ndim > 1)) return nfail(c, KILN_ERR_FORMAT, "axes must be a 1-D integer tensor");
        if (k) axes = k->i, nax = (long)k->numel;
    }
    if (nax <= 0)
        return nfail(c, KILN_ERR_UNSUPPORTED, "%s (kiln averages over height and width, axes [2, 3])",
                     noop ? "no axes: nothing reduced" : "no axes: a mean over every axis");
    int seen = 0;
    for (long i = 0; i < nax; i++) {
        int64_t ax = axes[i] < 0 ? axes[i] + 4 : axes[i];
        if ((ax != 2 && ax != 3) || seen & (1 << ax))
            return nfail(c, KILN_ERR_UNSUPPORTED,
                         "averages over axis %lld (kiln averages over height and width, axes [2, 3])",
                         (long long)axes[i]);
        seen |= 1 << ax;
    }
    if (seen != 12)
        return nfail(c, KILN_ERR_UNSUPPORTED, "averages over one spatial axis (kiln averages over height and width)");
    if (!keep) return nfail(c, KILN_ERR_UNSUPPORTED, "keepdims 0 (kiln keeps the [N,C,1,1] shape)");
    return mk_unary(c, KILN_OP_GAP, x, 0);
}

/* Does nearest sampling with this coordinate mode and rounding pick source
 * pixel floor(i / s) for every output pixel i (plain replication)? Checked by
 * running ONNX's formulas on a few lengths, so every mode is judged by the
 * same definition. */
static int nearest_replicates(const char *ctm, const char *nmode, int s)
{
    for (int len = 1; len <= 9; len++) {
        int olen = len * s;
        for (int i = 0; i < olen; i++) {
            double x;
            if (strcmp(ctm, "half_pixel") == 0 || strcmp(ctm, "half_pixel_symmetric") == 0)
                x = (i + 0.5) / s - 0.5;
            else if (strcmp(ctm, "pytorch_half_pixel") == 0)
                x = olen > 1 ? (i + 0.5) / s - 0.5 : 0;
            else if (strcmp(ctm, "asymmetric") == 0)
                x = (double)i / s;
            else if (strcmp(ctm, "tf_half_pixel_for_nn") == 0)
                x = (i + 0.5) / s;
            else if (strcmp(ctm, "align_corners") == 0)
                x = olen > 1 ? (double)i * (len - 1) / (olen - 1) : 0;
            else
                return 0;
            double fl = floor(x), j;
            if (strcmp(nmode, "round_prefer_floor") == 0)
                j = x - fl > 0.5 ? fl + 1 : fl;
            else if (strcmp(nmode, "round_prefer_ceil") == 0)
                j = x - fl >= 0.5 ? fl + 1 : fl;
            else if (strcmp(nmode, "floor") == 0)
                j = fl;
            else if (strcmp(nmode, "ceil") == 0)
                j = ceil(x);
            else
                return 0;
            if (j < 0) j = 0;
            if (j > len - 1) j = len - 1;
            if ((int)j != i / s) return 0;
        }
    }
    return 1;
}

/* Resize: nearest, one integer factor for height and width. */
static kiln_status op_resize(const nctx *c)
{
    int x;
    char mode[64], ctm[64], nmode[64];
    kiln_status st = feat_in(c, 0, &x);
    if (st == KILN_OK) st = attr_str(c, "mode", "nearest", mode);
    if (st == KILN_OK) st = attr_str(c, "coordinate_transformation_mode", "half_pixel", ctm);
    if (st == KILN_OK) st = attr_str(c, "nearest_mode", "round_prefer_floor", nmode);
    if (st != KILN_OK) return st;
    if (strcmp(mode, "nearest") != 0)
        return nfail(c, KILN_ERR_UNSUPPORTED, "mode %s (kiln upsamples with nearest)", mode);
    oval *sc, *sz; /* input 1, roi, only matters to tf_crop_and_resize, which is refused */
    if ((st = const_in(c, 2, 1, &sc)) != KILN_OK || (st = const_in(c, 3, 1, &sz)) != KILN_OK) return st;
    if (sc && sc->numel == 0) sc = NULL;
    if (sz && sz->numel == 0) sz = NULL;
    if (!sc == !sz) return nfail(c, KILN_ERR_FORMAT, "needs exactly one of scales and sizes");
    /* axes (opset 18): the dimensions scales or sizes list; all four by default */
    const int64_t *axes = NULL;
    long nax = -1;
    if ((st = attr_ints(c, "axes", &axes, &nax)) != KILN_OK) return st;
    oval *given = sc ? sc : sz;
    if ((sc && !sc->is_float) || (sz && sz->is_float) || given->ndim != 1)
        return nfail(c, KILN_ERR_FORMAT, "%s must be a 1-D %s tensor", sc ? "scales" : "sizes",
                     sc ? "float" : "integer");
    if (given->numel != (size_t)(nax >= 0 ? nax : 4))
        return nfail(c, KILN_ERR_FORMAT, "%zu %s for %ld axes", given->numel, sc ? "scales" : "sizes",
                     nax >= 0 ? nax : 4);
    double f[4] = {1, 1, 1, 1};
    const kiln_gtensor *t = tens(c, x);
    int64_t full[4] = {1, t->c, c->im->in_h * t->sfac, c->im->in_w * t->sfac};
    for (size_t k = 0; k < given->numel; k++) {
        int64_t ax = nax >= 0 ? axes[k] : (int64_t)k;
        if (ax < 0) ax += 4;
        if (ax < 0 || ax > 3) return nfail(c, KILN_ERR_FORMAT, "axis %lld", (long long)axes[k]);
        if (sc) {
            f[ax] = sc->f[k];
        } else if (ax >= 2 && !full[ax]) {
            return nfail(c, KILN_ERR_UNSUPPORTED,
                         "output sizes on an input of dynamic height and width (export with scale_factor, or with a "
                         "fixed input size)");
        } else {
            f[ax] = (double)given->i[k] / (double)full[ax];
        }
    }
    double r = f[2];
    if (f[0] != 1 || f[1] != 1 || f[3] != r || r != floor(r) || r < 1 || r > 8)
        return nfail(c, KILN_ERR_UNSUPPORTED,
                     "scales [%g, %g, %g, %g] (kiln upsamples height and width by one integer factor, 1 to 8)", f[0],
                     f[1], f[2], f[3]);
    if (r == 1) {
        set_feat(c, x);
        return KILN_OK;
    }
    if (!nearest_replicates(ctm, nmode, (int)r))
        return nfail(c, KILN_ERR_UNSUPPORTED,
                     "coordinate_transformation_mode %s with nearest_mode %s does not repeat each pixel %gx%g", ctm,
                     nmode, r, r);
    return mk_unary(c, KILN_OP_UPSAMPLE, x, (float)r);
}

static kiln_status op_identity(const nctx *c)
{
    oval *a;
    kiln_status st = need_in(c, 0, &a);
    if (st != KILN_OK) return st;
    oval *o = out_val(c);
    o->kind = a->kind;
    o->tensor = a->tensor;
    o->root = a->root;
    return KILN_OK;
}

static kiln_status op_constant(const nctx *c)
{
    oval *o = out_val(c);
    if (c->n->n_attribute != 1)
        return nfail(c, KILN_ERR_FORMAT, "%zu attributes (a Constant has one)", c->n->n_attribute);
    const Onnx__AttributeProto *a = c->n->attribute[0];
    const char *an = S(a->name);
    kiln_status st;
    o->kind = V_CONST;
    if (strcmp(an, "value") == 0) {
        if ((st = attr_check(c, a, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR)) != KILN_OK) return st;
        if (!a->t) return nfail(c, KILN_ERR_FORMAT, "no tensor in the value attribute");
        o->tp = a->t;
        return KILN_OK;
    }
    int is_f = strcmp(an, "value_float") == 0 || strcmp(an, "value_floats") == 0;
    int list = strcmp(an, "value_floats") == 0 || strcmp(an, "value_ints") == 0;
    if (!is_f && strcmp(an, "value_int") != 0 && strcmp(an, "value_ints") != 0)
        return nfail(c, KILN_ERR_UNSUPPORTED, "a constant given as %.40s", an);
    Onnx__AttributeProto__AttributeType want =
        is_f ? (list ? ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS : ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
             : (list ? ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS : ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if ((st = attr_check(c, a, want)) != KILN_OK) return st;
    size_t n = list ? (is_f ? a->n_floats : a->n_ints) : 1;
    if (n > KILN_ONNX_MAX_TENSOR) return nfail(c, KILN_ERR_LIMIT, "%zu values", n);
    o->ndim = list ? 1 : 0;
    o->dims[0] = (int64_t)n;
    o->numel = n;
    o->is_float = is_f;
    if (is_f)
        o->f = malloc((n ? n : 1) * sizeof(float));
    else
        o->i = malloc((n ? n : 1) * sizeof(int64_t));
    if (!o->f && !o->i) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    for (size_t k = 0; k < n; k++) {
        if (is_f)
            o->f[k] = list ? a->floats[k] : a->f;
        else
            o->i[k] = list ? a->ints[k] : a->i;
    }
    o->loaded = 1;
    return KILN_OK;
}

typedef kiln_status (*op_fn)(const nctx *c);

static kiln_status op_relu(const nctx *c)
{
    int x;
    kiln_status st = feat_in(c, 0, &x);
    return st != KILN_OK ? st : mk_unary(c, KILN_OP_RELU, x, 0);
}

static kiln_status op_sigmoid(const nctx *c)
{
    int x;
    kiln_status st = feat_in(c, 0, &x);
    return st != KILN_OK ? st : mk_unary(c, KILN_OP_SIGMOID, x, 0);
}

static kiln_status op_gap(const nctx *c)
{
    int x;
    kiln_status st = feat_in(c, 0, &x);
    return st != KILN_OK ? st : mk_unary(c, KILN_OP_GAP, x, 0);
}

static kiln_status op_leaky(const nctx *c)
{
    int x;
    float alpha;
    kiln_status st = feat_in(c, 0, &x);
    if (st == KILN_OK) st = attr_float(c, "alpha", 0.01f, &alpha);
    return st != KILN_OK ? st : mk_unary(c, KILN_OP_LEAKY_RELU, x, alpha);
}

static const struct {
    const char *name;
    op_fn fn;
} kOps[] = {
    {"Conv", op_conv},
    {"Relu", op_relu},
    {"LeakyRelu", op_leaky},
    {"PRelu", op_prelu},
    {"Add", op_add},
    {"Mul", op_mul},
    {"Div", op_div},
    {"Concat", op_concat},
    {"DepthToSpace", op_depth_to_space},
    {"GlobalAveragePool", op_gap},
    {"ReduceMean", op_reduce_mean},
    {"Sigmoid", op_sigmoid},
    {"Resize", op_resize},
    {"Identity", op_identity},
    {"Constant", op_constant},
};

static kiln_status import_node(imp *im, size_t ni)
{
    nctx c = {.im = im, .n = im->gp->node[ni], .idx = ni};
    const Onnx__NodeProto *n = c.n;
    snprintf(c.op, sizeof c.op, "%.40s", S(n->op_type));
    for (char *p = c.op; *p; p++)
        if (*p < 0x20 || *p > 0x7e) *p = '_';
    if (n->name && *n->name) {
        kname(c.label, n->name, "");
    } else {
        char gen[80];
        snprintf(gen, sizeof gen, "%s_%zu", c.op, ni);
        kname(c.label, gen, "");
    }
    const char *dom = S(n->domain);
    if (*dom && strcmp(dom, "ai.onnx") != 0) {
        char dn[KILN_GRAPH_NAME_MAX];
        kname(dn, dom, "");
        return nfail(&c, KILN_ERR_UNSUPPORTED, "op of domain %s (kiln reads the standard ONNX ops)", dn);
    }
    for (size_t k = 0; k < sizeof kOps / sizeof kOps[0]; k++)
        if (strcmp(c.op, kOps[k].name) == 0) {
            if (n->n_output < 1 || !*S(n->output[0])) return nfail(&c, KILN_ERR_FORMAT, "no output");
            for (size_t o = 1; o < n->n_output; o++)
                if (*S(n->output[o])) return nfail(&c, KILN_ERR_UNSUPPORTED, "%zu outputs", n->n_output);
            return kOps[k].fn(&c);
        }
    return nfail(&c, KILN_ERR_UNSUPPORTED, "kiln does not support this op (see docs/onnx.md)");
}

/* ---- the model ------------------------------------------------------------------------- */

static kiln_status check_input(imp *im, const Onnx__ValueInfoProto *vi, char name[KILN_GRAPH_NAME_MAX])
{
    kname(name, S(vi->name), "");
    const Onnx__TypeProto *t = vi->type;
    const Onnx__TypeProto__Tensor *tt =
        t && t->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE ? t->tensor_type : NULL;
    if (!tt) return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: input %s is not a tensor", name);
    if (tt->has_elem_type && tt->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: input %s is %s (kiln feeds FLOAT)", name,
                         dtype_name(tt->elem_type));
    if (!tt->shape || tt->shape->n_dim != 4)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: input %s is not a 4-D [N, C, H, W] tensor", name);
    int64_t d[4];
    for (int k = 0; k < 4; k++) {
        const Onnx__TensorShapeProto__Dimension *dm = tt->shape->dim[k];
        d[k] = dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE ? dm->dim_value : 0;
        if (d[k] < 0 || d[k] > (1 << 20))
            return kiln_fail(KILN_ERR_FORMAT, "onnx: input %s has dimension %lld", name, (long long)d[k]);
    }
    if (d[0] > 1)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: input %s has batch size %lld (kiln runs one image: 1 or dynamic)",
                         name, (long long)d[0]);
    if (d[1] == 0)
        return kiln_fail(KILN_ERR_ARCH,
                         "onnx: input %s has a dynamic channel count (kiln takes RGB images: 3 channels)", name);
    if (d[1] != 3)
        return kiln_fail(KILN_ERR_ARCH, "onnx: input %s has %lld channels (kiln takes RGB images: 3 channels)", name,
                         (long long)d[1]);
    im->in_h = d[2];
    im->in_w = d[3];
    if (!d[2] != !d[3]) im->in_h = im->in_w = 0;
    return KILN_OK;
}

/* Mark the nodes the output depends on, count the reads of each value. */
static kiln_status mark_needed(imp *im)
{
    const Onnx__GraphProto *gp = im->gp;
    size_t nn = gp->n_node, top = 0;
    int *stack = malloc((nn ? nn : 1) * sizeof(int));
    im->needed = calloc(nn ? nn : 1, 1);
    if (!stack || !im->needed) {
        free(stack);
        return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    }
    int p = im->v[im->out_vi].producer;
    if (p >= 0) {
        im->needed[p] = 1;
        stack[top++] = p;
    }
    while (top) {
        const Onnx__NodeProto *n = gp->node[stack[--top]];
        for (size_t k = 0; k < n->n_input; k++) {
            int vi = *S(n->input[k]) ? smap_get(&im->vals, n->input[k]) : -1;
            if (vi < 0) continue; /* reported when the node is imported */
            im->v[vi].nuse++;
            int q = im->v[vi].producer;
            if (q >= 0 && !im->needed[q]) {
                im->needed[q] = 1;
                stack[top++] = q;
            }
        }
    }
    im->v[im->out_vi].nuse++;
    free(stack);
    return KILN_OK;
}

static kiln_status import_model(imp *im, const Onnx__ModelProto *m)
{
    if (!m->has_ir_version) return kiln_fail(KILN_ERR_FORMAT, "onnx: no ir_version");
    if (m->ir_version < 3)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: IR version %lld (kiln reads 3 and later)",
                         (long long)m->ir_version);
    im->opset = -1;
    for (size_t k = 0; k < m->n_opset_import; k++) {
        const char *d = S(m->opset_import[k]->domain);
        if (!*d || strcmp(d, "ai.onnx") == 0) {
            if (im->opset >= 0) return kiln_fail(KILN_ERR_FORMAT, "onnx: two opset imports for the standard domain");
            im->opset = m->opset_import[k]->has_version ? m->opset_import[k]->version : 0;
        }
    }
    if (im->opset < 0) return kiln_fail(KILN_ERR_FORMAT, "onnx: no opset import for the standard domain");
    if (im->opset < OPSET_MIN || im->opset > OPSET_MAX)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: opset %lld (kiln reads opsets %d to %d)", (long long)im->opset,
                         OPSET_MIN, OPSET_MAX);
    const Onnx__GraphProto *gp = m->graph;
    if (!gp) return kiln_fail(KILN_ERR_FORMAT, "onnx: no graph");
    im->gp = gp;
    if (gp->n_node > KILN_GRAPH_MAX_NODES)
        return kiln_fail(KILN_ERR_LIMIT, "onnx: %zu nodes (at most %d)", gp->n_node, KILN_GRAPH_MAX_NODES);
    if (gp->n_sparse_initializer) return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: sparse initializers");
    size_t cap = gp->n_input + gp->n_initializer;
    for (size_t k = 0; k < gp->n_node; k++) {
        if (gp->node[k]->n_output > MAX_VALUES) return kiln_fail(KILN_ERR_LIMIT, "onnx: too many values");
        cap += gp->node[k]->n_output;
    }
    if (cap > MAX_VALUES) return kiln_fail(KILN_ERR_LIMIT, "onnx: %zu values (at most %zu)", cap, MAX_VALUES);
    if (!(im->v = calloc(cap ? cap : 1, sizeof *im->v))) return kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    kiln_status st = KILN_OK;
    for (size_t k = 0; st == KILN_OK && k < gp->n_initializer; k++) {
        const char *nm = S(gp->initializer[k]->name);
        if (!*nm) return kiln_fail(KILN_ERR_FORMAT, "onnx: initializer %zu has no name", k);
        if ((st = add_value(im, nm, V_CONST, -1)) == KILN_OK) im->v[im->nv - 1].tp = gp->initializer[k];
    }
    /* The image: the one graph input that is not also an initializer (IR < 4 lists those as inputs too). */
    const Onnx__ValueInfoProto *input = NULL;
    for (size_t k = 0; st == KILN_OK && k < gp->n_input; k++) {
        if (smap_get(&im->vals, S(gp->input[k]->name)) >= 0) continue;
        if (input) return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: the graph has several inputs (kiln feeds one image)");
        input = gp->input[k];
    }
    if (st != KILN_OK) return st;
    if (!input || !*S(input->name)) return kiln_fail(KILN_ERR_FORMAT, "onnx: the graph has no input");
    char in_name[KILN_GRAPH_NAME_MAX];
    if ((st = check_input(im, input, in_name)) != KILN_OK || (st = add_value(im, input->name, V_FEAT, -1)) != KILN_OK)
        return st;
    im->v[im->nv - 1].tensor = 0;
    for (size_t k = 0; k < gp->n_node; k++)
        for (size_t o = 0; o < gp->node[k]->n_output; o++)
            if (*S(gp->node[k]->output[o]) && (st = add_value(im, gp->node[k]->output[o], V_UNSET, (int)k)) != KILN_OK)
                return st;
    if (gp->n_output != 1)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: the graph has %zu outputs (kiln takes one image out)",
                         gp->n_output);
    char out_name[KILN_GRAPH_NAME_MAX];
    kname(out_name, S(gp->output[0]->name), "");
    if ((im->out_vi = smap_get(&im->vals, S(gp->output[0]->name))) < 0)
        return kiln_fail(KILN_ERR_FORMAT, "onnx: the output %s is not computed by any node", out_name);
    if ((st = mark_needed(im)) != KILN_OK) return st;

    if ((st = kiln_graph_create("onnx", in_name, &im->g)) != KILN_OK) return st;
    char tmp[KILN_GRAPH_NAME_MAX];
    if ((st = take_name(im, &im->used_t, input->name, tmp)) != KILN_OK) return st;
    im->out_div = 1.0f;
    for (size_t k = 0; k < gp->n_node; k++)
        if (im->needed[k] && (st = import_node(im, k)) != KILN_OK) return st;
    const oval *o = &im->v[im->out_vi];
    if (o->kind != V_FEAT) return kiln_fail(KILN_ERR_UNSUPPORTED, "onnx: the output %s is a constant", out_name);
    if ((st = kiln_graph_finish(im->g, o->tensor, im->out_div)) != KILN_OK) {
        kiln_errmsg_prefix("onnx: ");
        return st;
    }
    char desc[96];
    snprintf(desc, sizeof desc, "ONNX graph, %zu nodes, %zu convs, x%d", kiln_graph_node_count(im->g),
             kiln_graph_weight_count(im->g), kiln_graph_scale(im->g));
    kiln_graph_set_desc(im->g, desc);
    return st;
}

static void imp_free(imp *im)
{
    for (size_t k = 0; k < im->nv; k++) {
        free(im->v[k].f);
        free(im->v[k].i);
    }
    free(im->v);
    free(im->vals.e);
    free(im->used_t.e);
    free(im->used_n.e);
    free(im->used_w.e);
    free(im->next_sfx.e);
    for (size_t k = 0; k < im->nowned; k++) free(im->owned[k]);
    free(im->owned);
    free(im->needed);
    kiln_graph_destroy(im->g);
}

kiln_status kiln_onnx_parse(const void *buf, size_t len, const char *base_dir, kiln_graph **out)
{
    *out = NULL;
    if (!buf && len) return kiln_fail(KILN_ERR_INVALID, "onnx: no buffer");
    if (len > KILN_ONNX_MAX_FILE)
        return kiln_fail(KILN_ERR_LIMIT, "onnx: %zu bytes (at most %zu)", len, KILN_ONNX_MAX_FILE);
    wscan ws = {0, 3 * (uint64_t)len + ((uint64_t)256 << 20), 0};
    if (!wire_scan(buf, len, &onnx__model_proto__descriptor, 0, &ws)) {
        if (ws.depth_hit)
            return kiln_fail(KILN_ERR_LIMIT, "onnx: messages nested more than %d deep", KILN_ONNX_MAX_DEPTH);
        if (ws.mem > ws.limit)
            return kiln_fail(KILN_ERR_LIMIT, "onnx: decoding would take more than %llu bytes",
                             (unsigned long long)ws.limit);
        return kiln_fail(KILN_ERR_FORMAT, "onnx: not a protobuf message (truncated or corrupt)");
    }
    Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, buf);
    if (!m) return kiln_fail(KILN_ERR_FORMAT, "onnx: not an ONNX ModelProto (protobuf decoding failed)");
    imp im = {.base_dir = base_dir, .out_vi = -1};
    kiln_status st = import_model(&im, m);
    if (st == KILN_OK) {
        *out = im.g;
        im.g = NULL;
    }
    imp_free(&im);
    onnx__model_proto__free_unpacked(m, NULL);
    return st;
}

kiln_status kiln_onnx_load(const char *path, kiln_graph **out)
{
    *out = NULL;
    void *buf;
    size_t len;
    kiln_status rs = kiln_file_read(path, KILN_ONNX_MAX_FILE, &buf, &len);
    if (rs != KILN_OK) {
        kiln_errmsg_prefix("onnx: ");
        return rs;
    }
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    kiln_status st = dir ? kiln_onnx_parse(buf, len, dir, out) : kiln_fail(KILN_ERR_NOMEM, "onnx: out of memory");
    free(dir);
    free(buf);
    return st;
}

/* ---- sniffing ------------------------------------------------------------------------------ */

int kiln_onnx_sniff(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    size_t i = 1;
    uint64_t v;
    if (!p || len < 2 || p[0] != 0x08 || !rd_varint(p, len, &i, &v) || v < 1 || v > 64) return 0;
    /* ModelProto fields up to the graph (7) or the opset imports (8); any
     * field number or wire type a ModelProto does not have ends the check. */
    for (int fields = 0; fields < 32 && i < len; fields++) {
        uint64_t key, l;
        if (!rd_varint(p, len, &i, &key)) return 0;
        unsigned f = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (f == 5) { /* model_version */
            if (wt != 0 || !rd_varint(p, len, &i, &v)) return 0;
            continue;
        }
        if (wt != 2 || !(f == 2 || f == 3 || f == 4 || f == 6 || f == 7 || f == 8 || f == 14 || f == 20 || f == 25))
            return 0;
        if (!rd_varint(p, len, &i, &l)) return 0;
        if (f == 7 || f == 8) return 1;
        if (l > len - i) {
            /* The buffer ends inside this field: fine for a file's first bytes
             * when the field is one of the text fields and what is there reads
             * as text (a long doc_string before the graph). */
            if (f == 7 || f == 8 || f == 14 || f == 20 || f == 25 || len - i < 16) return 0;
            for (size_t k = i; k < len; k++)
                if (p[k] < 0x20 && p[k] != '\n' && p[k] != '\r' && p[k] != '\t') return 0;
            return 1;
        }
        i += (size_t)l;
    }
    return 0;
}

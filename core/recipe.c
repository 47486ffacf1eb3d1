/*
 * recipe.c — compression configs: JSON → validated kiln_recipe, presets,
 * canonical JSON and hash, per-op / per-site resolution, and the check of a
 * recipe against a model's graph.
 *
 * Parsing walks the jansson tree once, with the JSON path of the value being
 * read kept in a small buffer, and records EVERY problem it meets (unknown
 * keys, wrong types, bad enum values, out-of-range numbers, role/op-type
 * mismatches) instead of stopping at the first: a user fixing a config sees
 * the whole list at once. Parsing knows no architecture: op types are
 * graph.h's, op_name patterns are only checked for form. Whether a pattern
 * names something, and whether some conv ends up both palettized and
 * weight-quantized, depends on the network; kiln_recipe_check_model answers
 * that against a graph (the compression pipeline calls it first), with the
 * same error list and paths.
 *
 * Invariants of a parsed kiln_recipe:
 *   - every stored spec is complete (defaults filled in) and valid;
 *   - op_name entries are sorted by specificity (most specific first), so
 *     resolution is "first match wins" and does not depend on JSON key order;
 *   - canon (the canonical JSON) and hash are computed once at parse time;
 *     a recipe is immutable afterwards and safe to share between threads.
 * Memory: the recipe owns its name, pattern strings and canonical JSON; the
 * caller owns the recipe (kiln_recipe_destroy) and any error list.
 *
 * Numbers that end up in float fields (moving-average constant, percentile)
 * are canonicalised to the shortest decimal that round-trips the float, so
 * "0.01" prints as 0.01 and not as 0.0099999997764825821.
 *
 * Presets are written for every architecture at once: an op_name entry of a
 * preset (EDSR's mul255, the MeanShift convs) that names nothing in a given
 * graph simply does not apply there. A config whose canonical form is a
 * preset's counts as that preset (the daemon stores canonical JSON and
 * parses it back), so it behaves the same however it was submitted.
 */
#include "recipe.h"

#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"

#define MAX_CONFIG_BYTES (1u << 20)
#define MAX_PATTERNS 256
#define MAX_PATTERN_LEN 256
#define MAX_ERRORS 200
#define PATH_CAP 1024

/* ------------------------------------------------------------------------ */
/* Enumerations as they are spelled in JSON (index = enum value).            */

static const char *const dtype_names[] = {"int8", "uint8", "int4", "uint4", NULL};
static const char *const qscheme_names[] = {"symmetric", "asymmetric", "symmetric_with_clipping",
                                            NULL};
static const char *const qgran_names[] = {"per_tensor", "per_channel", "per_block", NULL};
static const char *const calc_names[] = {"static", "moving_average", "global_minmax", "hist_mse",
                                         "hist_percentile", NULL};
static const char *const pgran_names[] = {"per_tensor", "per_grouped_channel", NULL};
static const char *const weighting_names[] = {"counts", "activation", NULL};
/* The op_type keys: graph.h's op names (kiln_op_from_name maps them), in
 * the order messages list them. */
static const char *const op_type_names[] = {"conv", "relu", "leaky_relu", "prelu", "add", "mul",
                                            "concat", "pixel_shuffle", "global_avg_pool",
                                            "sigmoid", "channel_mul", "upsample", "input", NULL};
_Static_assert(sizeof op_type_names / sizeof op_type_names[0] == KILN_OP_COUNT + 1,
               "every graph op is an op_type key");

/* The name tables are indexed by the enums of quant.h / palette.h. */
_Static_assert(KILN_Q_UINT4 == 3 && KILN_QS_SYMMETRIC_WITH_CLIPPING == 2, "dtype/qscheme names");
_Static_assert(KILN_QG_PER_BLOCK == 2 && KILN_QC_HIST_PERCENTILE == 4, "granularity/calc names");
_Static_assert(KILN_PG_PER_GROUPED_CHANNEL == 1 && KILN_KW_ACTIVATION == 1, "pspec names");

/* Roles of a quantization scope. */
enum { ROLE_WEIGHT = 0, ROLE_INPUT, ROLE_OUTPUT, N_ROLES };
static const char *const role_names[] = {"weight", "input", "output", NULL};

/* ------------------------------------------------------------------------ */
/* Parsed representation.                                                    */

enum { SLOT_UNSET = 0, SLOT_NULL, SLOT_SPEC };

typedef struct qslot {
    int state;
    kiln_qspec spec;
} qslot;

/* What every op_type / op_name entry has; the first member of both kinds,
 * so parse_entries can fill and sort either. */
typedef struct ehead {
    char *key;                  /* op type name or op_name pattern */
    int is_null;                /* the whole op exempt             */
    int exact, literals, stars; /* specificity of a pattern        */
} ehead;

typedef struct qentry {
    ehead h;
    qslot role[N_ROLES];
} qentry;

typedef struct pentry {
    ehead h;
    kiln_pspec p;
} pentry;

struct kiln_recipe {
    char *name;
    /* quantization */
    qslot qglobal[N_ROLES];
    qentry *qtype;
    size_t n_qtype;
    qentry *qname;
    size_t n_qname;
    int asymmetric_relu;
    /* palettization (pglobal.is_null = no global spec) */
    pentry pglobal;
    pentry *ptype;
    size_t n_ptype;
    pentry *pname;
    size_t n_pname;
    kiln_recipe_options opt;
    /* derived */
    int preset; /* a built-in preset: op_name entries may match nothing */
    char *canon;
    char hash[65];
};

struct kiln_config_errors {
    size_t n, dropped;
    char *path[MAX_ERRORS];
    char *msg[MAX_ERRORS];
    int oom;
};

/* ------------------------------------------------------------------------ */
/* Error list and JSON path.                                                 */

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

typedef struct pctx {
    kiln_config_errors *e;
    char path[PATH_CAP];
    size_t plen;
} pctx;

static void errs_add(kiln_config_errors *e, const char *path, const char *msg)
{
    if (e->n >= MAX_ERRORS) {
        e->dropped++;
        return;
    }
    char *p = xstrdup(path), *m = xstrdup(msg);
    if (!p || !m) {
        free(p), free(m);
        e->oom = 1;
        return;
    }
    e->path[e->n] = p;
    e->msg[e->n] = m;
    e->n++;
}

static void err(pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void err(pctx *c, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errs_add(c->e, c->path, msg);
}

/* A user string made safe for a message: at most 64 bytes, quotes and
 * control bytes escaped. */
static void show(const char *s, char out[160])
{
    size_t o = 0, i = 0;
    for (; s[i] && i < 64 && o < 140; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') out[o++] = '\\', out[o++] = (char)ch;
        else if (ch < 0x20 || ch == 0x7f) o += (size_t)snprintf(out + o, 8, "\\x%02x", ch);
        else out[o++] = (char)ch;
    }
    if (s[i]) memcpy(out + o, "...", 3), o += 3;
    out[o] = '\0';
}

static int is_ident(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return 0;
    return 1;
}

static size_t push(pctx *c, const char *key)
{
    size_t old = c->plen;
    char shown[160];
    show(key, shown);
    int k;
    if (is_ident(key) && strlen(key) <= 64)
        k = snprintf(c->path + c->plen, PATH_CAP - c->plen, "%s%s", c->plen ? "." : "", key);
    else
        k = snprintf(c->path + c->plen, PATH_CAP - c->plen, "[\"%s\"]", shown);
    if (k > 0) c->plen = c->plen + (size_t)k < PATH_CAP ? c->plen + (size_t)k : PATH_CAP - 1;
    return old;
}

static void pop(pctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* Edit distance with adjacent transpositions ("nmae" is 1 from "name"). */
static size_t lev(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t d[65][65];
    if (la > 64 || lb > 64) return 99;
    for (size_t i = 0; i <= la; i++) d[i][0] = i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

/* " (did you mean \"x\"?)" for the closest name within a small edit distance. */
static void suggest(const char *got, const char *const *names, char out[96])
{
    size_t best = 99;
    const char *pick = NULL;
    out[0] = '\0';
    for (size_t i = 0; names[i]; i++) {
        size_t d = lev(got, names[i]);
        size_t lim = strlen(names[i]) / 3 < 2 ? strlen(names[i]) / 3 : 2;
        if (lim < 1) lim = 1;
        if (d <= lim && d < best) best = d, pick = names[i];
    }
    if (pick) snprintf(out, 96, " (did you mean \"%s\"?)", pick);
}

static void join_names(const char *const *names, char out[256])
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; names[i] && o < 200; i++)
        o += (size_t)snprintf(out + o, 256 - o, "%s%s", i ? ", " : "", names[i]);
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static void unknown_key(pctx *c, const char *key, const char *const *allowed)
{
    char shown[160], hint[96], list[256];
    show(key, shown);
    suggest(key, allowed, hint);
    join_names(allowed, list);
    size_t old = push(c, key);
    if (allowed[0])
        err(c, "unknown key \"%s\"%s; expected one of %s", shown, hint, list);
    else
        err(c, "unknown key \"%s\"; this object takes no keys", shown);
    pop(c, old);
}

/* Report every key of obj not in allowed. */
static void check_keys(pctx *c, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(key, allowed[i]) == 0) ok = 1;
        if (!ok) unknown_key(c, key, allowed);
    }
}

/* Value readers: each reports its own error at the current path and
 * returns 0 on failure (leaving *out untouched). */
static int get_enum(pctx *c, json_t *v, const char *const *names, int *out)
{
    char list[256];
    join_names(names, list);
    if (!json_is_string(v)) {
        err(c, "expected a string (one of %s), got %s", list, type_name(v));
        return 0;
    }
    const char *s = json_string_value(v);
    for (int i = 0; names[i]; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 1;
        }
    char shown[160], hint[96];
    show(s, shown);
    suggest(s, names, hint);
    err(c, "\"%s\" is not one of %s%s", shown, list, hint);
    return 0;
}

static int get_bool(pctx *c, json_t *v, int *out)
{
    if (!json_is_boolean(v)) {
        err(c, "expected true or false, got %s", type_name(v));
        return 0;
    }
    *out = json_is_true(v);
    return 1;
}

static int get_int(pctx *c, json_t *v, long long lo, long long hi, int *out)
{
    if (!json_is_integer(v)) {
        err(c, "expected an integer in [%lld, %lld], got %s", lo, hi, type_name(v));
        return 0;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        err(c, "%lld is out of range [%lld, %lld]", (long long)x, lo, hi);
        return 0;
    }
    *out = (int)x;
    return 1;
}

/* A number in the half-open range (lo, hi], stored as float. */
static int get_unit(pctx *c, json_t *v, double lo, double hi, float *out)
{
    if (!json_is_number(v)) {
        err(c, "expected a number in (%g, %g], got %s", lo, hi, type_name(v));
        return 0;
    }
    double x = json_number_value(v);
    if (!(x > lo && x <= hi) || !((float)x > (float)lo)) {
        err(c, "%.17g is out of range (%g, %g]", x, lo, hi);
        return 0;
    }
    *out = (float)x;
    return 1;
}

/* The shortest decimal that round-trips a float, as a double. */
static double canon_float(float f)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

/* ------------------------------------------------------------------------ */
/* Quantization specs.                                                       */

static void qspec_default(int role, kiln_qspec *q)
{
    memset(q, 0, sizeof *q);
    q->dtype = KILN_Q_INT8;
    q->qscheme = KILN_QS_SYMMETRIC;
    q->ma_constant = 0.01f;
    q->percentile = 99.99f;
    if (role == ROLE_WEIGHT) {
        q->granularity = KILN_QG_PER_CHANNEL;
        q->axis = 0;
        q->calc = KILN_QC_STATIC;
    } else {
        q->granularity = KILN_QG_PER_TENSOR;
        q->calc = KILN_QC_MOVING_AVERAGE;
    }
}

/* A tagged choice: "name" or {"name": {params}}; returns the index of the
 * name and the params object (NULL for the string form) or -1. */
static int get_choice(pctx *c, json_t *v, const char *const *names, json_t **params)
{
    int idx;
    *params = NULL;
    if (json_is_string(v)) return get_enum(c, v, names, &idx) ? idx : -1;
    char list[256];
    join_names(names, list);
    if (!json_is_object(v) || json_object_size(v) != 1) {
        if (json_is_object(v))
            err(c, "expected an object with exactly one key (one of %s), got %zu keys", list,
                json_object_size(v));
        else
            err(c, "expected a string or a one-key object (one of %s), got %s", list,
                type_name(v));
        return -1;
    }
    void *it = json_object_iter(v);
    const char *key = json_object_iter_key(it);
    json_t *val = json_object_iter_value(it);
    json_t *ks = json_string(key);
    if (!ks) {
        c->e->oom = 1;
        return -1;
    }
    size_t old = push(c, key);
    int ok = get_enum(c, ks, names, &idx);
    json_decref(ks);
    if (ok && !json_is_object(val)) {
        err(c, "expected an object of parameters ({} if none), got %s", type_name(val));
        ok = 0;
    }
    pop(c, old);
    if (!ok) return -1;
    *params = val;
    return idx;
}

static void parse_granularity(pctx *c, json_t *v, int role, kiln_qspec *q)
{
    json_t *params;
    int g = get_choice(c, v, qgran_names, &params);
    if (g < 0) return;
    size_t old = push(c, qgran_names[g]);
    if (g == KILN_QG_PER_TENSOR) {
        if (params) check_keys(c, params, (const char *const[]){NULL});
    } else if (g == KILN_QG_PER_CHANNEL) {
        q->axis = 0;
        if (params) {
            check_keys(c, params, (const char *const[]){"axis", NULL});
            json_t *a = json_object_get(params, "axis");
            if (a) {
                size_t o2 = push(c, "axis");
                int axis;
                if (get_int(c, a, 0, 3, &axis) && axis != 0)
                    err(c, "axis %d is not supported: kiln scales weights per output channel "
                           "(axis 0)", axis);
                pop(c, o2);
            }
        }
    } else {
        q->axis = 1;
        q->block_size = 32;
        if (params) {
            check_keys(c, params, (const char *const[]){"axis", "block_size", NULL});
            json_t *a = json_object_get(params, "axis"), *b = json_object_get(params,
                                                                               "block_size");
            if (a) {
                size_t o2 = push(c, "axis");
                int axis;
                if (get_int(c, a, 0, 3, &axis) && axis != 1)
                    err(c, "axis %d is not supported: blocks run along the input dimension "
                           "(axis 1)", axis);
                pop(c, o2);
            }
            if (b) {
                size_t o2 = push(c, "block_size");
                get_int(c, b, 1, 65536, &q->block_size);
                pop(c, o2);
            }
        }
    }
    pop(c, old);
    if (role != ROLE_WEIGHT && g != KILN_QG_PER_TENSOR)
        err(c, "%s is for weights; activations are quantized per_tensor", qgran_names[g]);
    q->granularity = (kiln_qgranularity)g;
}

static void parse_calculator(pctx *c, json_t *v, int role, kiln_qspec *q)
{
    json_t *params;
    int k = get_choice(c, v, calc_names, &params);
    if (k < 0) return;
    size_t old = push(c, calc_names[k]);
    if (k == KILN_QC_MOVING_AVERAGE || k == KILN_QC_HIST_PERCENTILE) {
        const char *pname = k == KILN_QC_MOVING_AVERAGE ? "constant" : "percentile";
        if (params) {
            check_keys(c, params, (const char *const[]){pname, NULL});
            json_t *p = json_object_get(params, pname);
            if (p) {
                size_t o2 = push(c, pname);
                if (k == KILN_QC_MOVING_AVERAGE) get_unit(c, p, 0.0, 1.0, &q->ma_constant);
                else get_unit(c, p, 0.0, 100.0, &q->percentile);
                pop(c, o2);
            }
        }
    } else if (params) {
        check_keys(c, params, (const char *const[]){NULL});
    }
    pop(c, old);
    if (role == ROLE_WEIGHT && k != KILN_QC_STATIC)
        err(c, "weights are quantized from their own min/max: use \"static\" (%s is for "
               "activations)", calc_names[k]);
    if (role != ROLE_WEIGHT && k == KILN_QC_STATIC)
        err(c, "\"static\" is for weights; activations need a calibrating calculator "
               "(moving_average, global_minmax, hist_mse, hist_percentile)");
    q->calc = (kiln_qcalc)k;
}

static const char *const qspec_keys[] = {"dtype", "qscheme", "granularity", "calculator",
                                         "multiply_by_inverse", NULL};

static void parse_qspec(pctx *c, json_t *v, int role, kiln_qspec *q)
{
    qspec_default(role, q);
    if (!json_is_object(v)) {
        err(c, "expected a quantization spec (an object) or null, got %s", type_name(v));
        return;
    }
    check_keys(c, v, qspec_keys);
    json_t *x;
    int i;
    size_t old;
    if ((x = json_object_get(v, "dtype"))) {
        old = push(c, "dtype");
        if (get_enum(c, x, dtype_names, &i)) q->dtype = (kiln_qdtype)i;
        pop(c, old);
    }
    if ((x = json_object_get(v, "qscheme"))) {
        old = push(c, "qscheme");
        if (get_enum(c, x, qscheme_names, &i)) {
            q->qscheme = (kiln_qscheme)i;
            if (i == KILN_QS_SYMMETRIC_WITH_CLIPPING && q->dtype != KILN_Q_INT8)
                err(c, "symmetric_with_clipping needs dtype int8 (range [-127, 127]), not %s",
                    dtype_names[q->dtype]);
        }
        pop(c, old);
    }
    if ((x = json_object_get(v, "granularity"))) {
        old = push(c, "granularity");
        parse_granularity(c, x, role, q);
        pop(c, old);
    }
    if ((x = json_object_get(v, "calculator"))) {
        old = push(c, "calculator");
        parse_calculator(c, x, role, q);
        pop(c, old);
    }
    if ((x = json_object_get(v, "multiply_by_inverse"))) {
        old = push(c, "multiply_by_inverse");
        get_bool(c, x, &q->multiply_by_inverse);
        pop(c, old);
    }
}

/* ------------------------------------------------------------------------ */
/* Patterns.                                                                 */

static void pattern_score(const char *p, int *exact, int *literals, int *stars)
{
    int lit = 0, st = 0, wild = 0;
    for (const char *s = p; *s; s++) {
        if (*s == '*') st++, wild = 1;
        else if (*s == '?') wild = 1;
        else if (*s == '[') {
            const char *e = strchr(s + 1, ']');
            if (e) {
                wild = 1;
                s = e;
            } else {
                lit++;
            }
        } else if (*s == '\\' && s[1]) {
            s++;
            lit++;
        } else {
            lit++;
        }
    }
    *exact = !wild;
    *literals = lit;
    *stars = st;
}

/* Most specific first; ties broken byte-wise so JSON key order never matters. */
static int cmp_spec(int ea, int la, int sa, const char *ka, int eb, int lb, int sb,
                    const char *kb)
{
    if (ea != eb) return eb - ea;
    if (la != lb) return lb - la;
    if (sa != sb) return sa - sb;
    return strcmp(ka, kb);
}

static int cmp_entry(const void *a, const void *b)
{
    const ehead *x = a, *y = b; /* every entry starts with its ehead */
    return cmp_spec(x->exact, x->literals, x->stars, x->key, y->exact, y->literals, y->stars,
                    y->key);
}

static int match(const char *pattern, const char *name)
{
    return fnmatch(pattern, name, 0) == 0;
}

/* Checks of an op_name key's form (both sections); returns 0 if unusable.
 * What it matches is the graph's business (kiln_recipe_check_model). */
static int check_pattern(pctx *c, const char *key)
{
    size_t len = strlen(key);
    if (len == 0) {
        err(c, "empty op name pattern");
        return 0;
    }
    if (len > MAX_PATTERN_LEN) {
        err(c, "pattern is %zu bytes, limit %d", len, MAX_PATTERN_LEN);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Quantization section.                                                     */

/* kind: 0 global, 1 op_type (type = index), 2 op_name (pattern = key). */
static void parse_qscope(pctx *c, json_t *v, int kind, int type, const char *pattern,
                         qslot role[N_ROLES])
{
    if (!json_is_object(v)) {
        err(c, "expected an object with keys weight, input, output%s, got %s",
            kind ? " (or null to exempt)" : "", type_name(v));
        return;
    }
    check_keys(c, v, role_names);
    for (int r = 0; r < N_ROLES; r++) {
        json_t *x = json_object_get(v, role_names[r]);
        if (!x) continue;
        size_t old = push(c, role_names[r]);
        if (kind == 1) {
            if (r == ROLE_WEIGHT && type != KILN_OP_CONV)
                err(c, "%s ops have no weights (only conv ops do)", kiln_op_name((kiln_op)type));
            if (r == ROLE_INPUT && type != KILN_OP_INPUT)
                err(c, "only the network input (op type \"input\") has an input role: every "
                       "other tensor edge is quantized once, with its producer's output spec");
            if (r == ROLE_OUTPUT && type == KILN_OP_INPUT)
                err(c, "the network input is quantized with the \"input\" role");
        } else if (kind == 2) {
            /* The input op is called "input" in every graph; the weight and
             * output roles depend on the graph (kiln_recipe_check_model). */
            if (r == ROLE_INPUT && !match(pattern, "input"))
                err(c, "only the network input (op \"input\") has an input role: every other "
                       "tensor edge is quantized once, with its producer's output spec");
        }
        if (json_is_null(x)) {
            role[r].state = SLOT_NULL;
        } else {
            role[r].state = SLOT_SPEC;
            parse_qspec(c, x, r, &role[r].spec);
        }
        pop(c, old);
    }
}

/* An op_type or op_name object of either section. The caller has reported
 * unknown op types; here every kept key (op types: type_of(key) >= 0;
 * patterns: check_pattern) becomes an entry of esize bytes
 * whose ehead is filled and scored and whose body fill() parses from a
 * non-null value. Entries are sorted most specific first. Returns 0 only
 * when out of memory (*out may hold the entries made so far). */
typedef void (*entry_fill)(pctx *c, json_t *v, void *entry, int type, const char *key, int by_name);

static int parse_entries(pctx *c, json_t *obj, int by_name, size_t esize, int (*type_of)(const char *),
                         entry_fill fill, void **out, size_t *nout)
{
    size_t n = json_object_size(obj);
    char *e = calloc(n ? n : 1, esize);
    if (!e) return 0;
    *out = e;
    const char *key;
    json_t *v;
    size_t k = 0;
    json_object_foreach(obj, key, v) {
        int type = by_name ? -1 : type_of(key);
        if (!by_name && type < 0) continue; /* reported by the caller */
        size_t old = push(c, key);
        if (by_name && !check_pattern(c, key)) {
            pop(c, old);
            continue;
        }
        ehead *h = (ehead *)(e + k * esize);
        if (!(h->key = xstrdup(key))) {
            pop(c, old);
            *nout = k;
            return 0;
        }
        k++;
        pattern_score(key, &h->exact, &h->literals, &h->stars);
        if (json_is_null(v)) h->is_null = 1;
        else fill(c, v, h, type, key, by_name);
        pop(c, old);
    }
    *nout = k;
    qsort(e, k, esize, cmp_entry);
    return 1;
}

/* The checks both sections make of an op_type / op_name object. */
static int entries_object_ok(pctx *c, json_t *obj, int by_name, const char *what)
{
    if (!json_is_object(obj)) {
        err(c, "expected an object (%s → %s), got %s", by_name ? "op name pattern" : "op type", what,
            type_name(obj));
        return 0;
    }
    size_t n = json_object_size(obj);
    if (n > MAX_PATTERNS) {
        err(c, "%zu entries, limit %d", n, MAX_PATTERNS);
        return 0;
    }
    return 1;
}

static int op_type_of(const char *key) { return kiln_op_from_name(key); }

static void fill_qentry(pctx *c, json_t *v, void *entry, int type, const char *key, int by_name)
{
    parse_qscope(c, v, by_name ? 2 : 1, type, key, ((qentry *)entry)->role);
}

static int parse_qentries(pctx *c, json_t *obj, int by_name, qentry **out, size_t *nout)
{
    if (!entries_object_ok(c, obj, by_name, "scope")) return 1;
    if (!by_name) check_keys(c, obj, op_type_names);
    void *e = NULL;
    int ok = parse_entries(c, obj, by_name, sizeof(qentry), op_type_of, fill_qentry, &e, nout);
    *out = e;
    return ok;
}

static int parse_quantization(pctx *c, json_t *v, kiln_recipe *r)
{
    if (json_is_null(v)) return 1;
    if (!json_is_object(v)) {
        err(c, "expected an object or null, got %s", type_name(v));
        return 1;
    }
    check_keys(c, v, (const char *const[]){"global", "op_type", "op_name", "asymmetric_relu",
                                           NULL});
    json_t *x;
    size_t old;
    if ((x = json_object_get(v, "global"))) {
        old = push(c, "global");
        if (!json_is_null(x)) parse_qscope(c, x, 0, -1, NULL, r->qglobal);
        pop(c, old);
    }
    for (int r_ = 0; r_ < N_ROLES; r_++)
        if (r->qglobal[r_].state == SLOT_UNSET) r->qglobal[r_].state = SLOT_NULL;
    if ((x = json_object_get(v, "op_type"))) {
        old = push(c, "op_type");
        int ok = parse_qentries(c, x, 0, &r->qtype, &r->n_qtype);
        pop(c, old);
        if (!ok) return 0;
    }
    if ((x = json_object_get(v, "op_name"))) {
        old = push(c, "op_name");
        int ok = parse_qentries(c, x, 1, &r->qname, &r->n_qname);
        pop(c, old);
        if (!ok) return 0;
    }
    if ((x = json_object_get(v, "asymmetric_relu"))) {
        old = push(c, "asymmetric_relu");
        get_bool(c, x, &r->asymmetric_relu);
        pop(c, old);
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Palettization section.                                                    */

static void pspec_default(kiln_pspec *p)
{
    memset(p, 0, sizeof *p);
    p->n_bits = 4;
    p->granularity = KILN_PG_PER_TENSOR;
    p->group_size = 16;
    p->lut_quantize = 0;
    p->lut_qspec.dtype = KILN_Q_INT8;
    p->lut_qspec.qscheme = KILN_QS_SYMMETRIC;
    p->lut_qspec.granularity = KILN_QG_PER_TENSOR;
    p->lut_qspec.calc = KILN_QC_STATIC;
    p->lut_qspec.ma_constant = 0.01f;
    p->lut_qspec.percentile = 99.99f;
    p->per_channel_scale = 0;
    p->weighting = KILN_KW_COUNTS;
}

static const char *const pspec_keys[] = {"n_bits", "granularity", "group_size", "lut_dtype",
                                         "per_channel_scale", "weighting", NULL};

static void parse_pspec(pctx *c, json_t *v, kiln_pspec *p)
{
    pspec_default(p);
    if (!json_is_object(v)) {
        err(c, "expected a palettization spec (an object) or null, got %s", type_name(v));
        return;
    }
    check_keys(c, v, pspec_keys);
    json_t *x;
    int i;
    size_t old;
    if ((x = json_object_get(v, "n_bits"))) {
        old = push(c, "n_bits");
        if (!json_is_integer(x)) {
            err(c, "expected an integer (1, 2, 3, 4, 6 or 8), got %s", type_name(x));
        } else {
            json_int_t b = json_integer_value(x);
            if (b == 1 || b == 2 || b == 3 || b == 4 || b == 6 || b == 8) p->n_bits = (int)b;
            else err(c, "%lld is not one of 1, 2, 3, 4, 6, 8", (long long)b);
        }
        pop(c, old);
    }
    if ((x = json_object_get(v, "granularity"))) {
        old = push(c, "granularity");
        if (get_enum(c, x, pgran_names, &i)) p->granularity = (kiln_pgranularity)i;
        pop(c, old);
    }
    if ((x = json_object_get(v, "group_size"))) {
        old = push(c, "group_size");
        get_int(c, x, 1, 4096, &p->group_size);
        pop(c, old);
    }
    if ((x = json_object_get(v, "lut_dtype"))) {
        old = push(c, "lut_dtype");
        if (json_is_null(x)) p->lut_quantize = 0;
        else if (!json_is_string(x) || strcmp(json_string_value(x), "int8") != 0) {
            char shown[160];
            show(json_is_string(x) ? json_string_value(x) : "", shown);
            if (json_is_string(x))
                err(c, "\"%s\" is not int8 or null (float LUT)", shown);
            else
                err(c, "expected \"int8\" or null, got %s", type_name(x));
        } else p->lut_quantize = 1;
        pop(c, old);
    }
    if ((x = json_object_get(v, "per_channel_scale"))) {
        old = push(c, "per_channel_scale");
        get_bool(c, x, &p->per_channel_scale);
        pop(c, old);
    }
    if ((x = json_object_get(v, "weighting"))) {
        old = push(c, "weighting");
        if (get_enum(c, x, weighting_names, &i)) p->weighting = (kiln_kmeans_weighting)i;
        pop(c, old);
    }
    /* group_size means nothing per tensor: normalise so equal configs hash equal. */
    if (p->granularity == KILN_PG_PER_TENSOR) p->group_size = 16;
}

static int conv_type_of(const char *key) { return strcmp(key, "conv") == 0 ? KILN_OP_CONV : -1; }

static void fill_pentry(pctx *c, json_t *v, void *entry, int type, const char *key, int by_name)
{
    (void)type;
    (void)key;
    (void)by_name;
    parse_pspec(c, v, &((pentry *)entry)->p);
}

static int parse_pentries(pctx *c, json_t *obj, int by_name, pentry **out, size_t *nout)
{
    static const char *const ptypes[] = {"conv", NULL};
    if (!entries_object_ok(c, obj, by_name, "spec")) return 1;
    if (!by_name) {
        /* Only convs have weights: name the other op types precisely. */
        const char *key;
        json_t *v;
        json_object_foreach(obj, key, v) {
            if (strcmp(key, "conv") == 0) continue;
            if (kiln_op_from_name(key) < 0) {
                unknown_key(c, key, ptypes);
                continue;
            }
            size_t old = push(c, key);
            err(c, "%s ops have no weights; only \"conv\" can be palettized", key);
            pop(c, old);
        }
    }
    void *e = NULL;
    int ok = parse_entries(c, obj, by_name, sizeof(pentry), conv_type_of, fill_pentry, &e, nout);
    *out = e;
    return ok;
}

static int parse_palettization(pctx *c, json_t *v, kiln_recipe *r)
{
    if (json_is_null(v)) return 1;
    if (!json_is_object(v)) {
        err(c, "expected an object or null, got %s", type_name(v));
        return 1;
    }
    check_keys(c, v, (const char *const[]){"global", "op_type", "op_name", NULL});
    json_t *x;
    size_t old;
    if ((x = json_object_get(v, "global")) && !json_is_null(x)) {
        old = push(c, "global");
        r->pglobal.h.is_null = 0;
        parse_pspec(c, x, &r->pglobal.p);
        pop(c, old);
    }
    if ((x = json_object_get(v, "op_type"))) {
        old = push(c, "op_type");
        int ok = parse_pentries(c, x, 0, &r->ptype, &r->n_ptype);
        pop(c, old);
        if (!ok) return 0;
    }
    if ((x = json_object_get(v, "op_name"))) {
        old = push(c, "op_name");
        int ok = parse_pentries(c, x, 1, &r->pname, &r->n_pname);
        pop(c, old);
        if (!ok) return 0;
    }
    return 1;
}

static void parse_options(pctx *c, json_t *v, kiln_recipe *r)
{
    if (!json_is_object(v)) {
        err(c, "expected an object, got %s", type_name(v));
        return;
    }
    check_keys(c, v, (const char *const[]){"bias_correction", "equalization", NULL});
    json_t *x;
    size_t old;
    if ((x = json_object_get(v, "bias_correction"))) {
        old = push(c, "bias_correction");
        get_bool(c, x, &r->opt.bias_correction);
        pop(c, old);
    }
    if ((x = json_object_get(v, "equalization"))) {
        old = push(c, "equalization");
        get_bool(c, x, &r->opt.equalization);
        pop(c, old);
    }
}

static void parse_name(pctx *c, json_t *v, kiln_recipe *r)
{
    if (!json_is_string(v)) {
        err(c, "expected a string, got %s", type_name(v));
        return;
    }
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0 || n > 64) {
        err(c, "name must be 1 to 64 characters, got %zu", n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.' || ch == '+')) {
            err(c, "character %zu of the name is not one of A-Z a-z 0-9 _ - . +", i);
            return;
        }
    }
    char *d = xstrdup(s);
    if (!d) {
        c->e->oom = 1;
        return;
    }
    free(r->name);
    r->name = d;
}

/* ------------------------------------------------------------------------ */
/* Resolution.                                                               */

/* Where a resolved slot came from, for messages. */
typedef struct qsrc {
    const qslot *slot; /* NULL: exempt or nothing */
    int kind;          /* 0 global, 1 op_type, 2 op_name */
    const char *key;
} qsrc;

/* type: a kiln_op, or -1 (no op_type scope applies). */
static qsrc resolve_role(const kiln_recipe *r, const char *name, int type, int role)
{
    qsrc s = {NULL, 0, NULL};
    for (size_t i = 0; i < r->n_qname; i++) {
        const qentry *e = &r->qname[i];
        if (!match(e->h.key, name)) continue;
        if (e->h.is_null) return (qsrc){NULL, 2, e->h.key};
        if (e->role[role].state != SLOT_UNSET) return (qsrc){&e->role[role], 2, e->h.key};
    }
    for (size_t i = 0; type >= 0 && i < r->n_qtype; i++) {
        const qentry *e = &r->qtype[i];
        if (strcmp(e->h.key, kiln_op_name((kiln_op)type)) != 0) continue;
        if (e->h.is_null) return (qsrc){NULL, 1, e->h.key};
        if (e->role[role].state != SLOT_UNSET) return (qsrc){&e->role[role], 1, e->h.key};
    }
    s.slot = &r->qglobal[role];
    return s;
}

typedef struct psrc {
    const kiln_pspec *p;
    int kind;
    const char *key;
} psrc;

static psrc resolve_pal(const kiln_recipe *r, const char *name, int type)
{
    if (type != KILN_OP_CONV) return (psrc){NULL, 0, NULL};
    for (size_t i = 0; i < r->n_pname; i++)
        if (match(r->pname[i].h.key, name))
            return (psrc){r->pname[i].h.is_null ? NULL : &r->pname[i].p, 2, r->pname[i].h.key};
    if (r->n_ptype) /* only "conv" is accepted in palettization.op_type */
        return (psrc){r->ptype[0].h.is_null ? NULL : &r->ptype[0].p, 1, r->ptype[0].h.key};
    return (psrc){r->pglobal.h.is_null ? NULL : &r->pglobal.p, 0, NULL};
}

/* The op type of a weight query: weights belong to convs, so NULL is conv. */
static int weight_type(const char *op_type)
{
    return op_type ? kiln_op_from_name(op_type) : KILN_OP_CONV;
}

int kiln_recipe_pspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                      kiln_pspec *out)
{
    if (!r || !op_name) return 0;
    psrc s = resolve_pal(r, op_name, weight_type(op_type));
    if (!s.p) return 0;
    if (out) *out = *s.p;
    return 1;
}

static int weight_spec(const kiln_recipe *r, const char *name, kiln_qspec *out)
{
    if (resolve_pal(r, name, KILN_OP_CONV).p) return 0;
    qsrc s = resolve_role(r, name, KILN_OP_CONV, ROLE_WEIGHT);
    if (!s.slot || s.slot->state != SLOT_SPEC) return 0;
    if (out) *out = s.slot->spec;
    return 1;
}

int kiln_recipe_weight_qspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                             kiln_qspec *out)
{
    if (!r || !op_name || weight_type(op_type) != KILN_OP_CONV) return 0;
    return weight_spec(r, op_name, out);
}

static int op_act_qspec(const kiln_recipe *r, const char *op, int t, kiln_qspec *out)
{
    int role = t == KILN_OP_INPUT ? ROLE_INPUT : ROLE_OUTPUT;
    qsrc s = resolve_role(r, op, t, role);
    if (!s.slot || s.slot->state != SLOT_SPEC) return 0;
    if (out) {
        *out = s.slot->spec;
        /* Only a plain ReLU's output is known to be >= 0. */
        out->asymmetric_relu = t == KILN_OP_RELU && r->asymmetric_relu;
    }
    return 1;
}

int kiln_recipe_act_qspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                          kiln_qspec *out)
{
    if (!r || !op_name || !op_type) return 0;
    int t = kiln_op_from_name(op_type);
    if (t < 0) return 0;
    return op_act_qspec(r, op_name, t, out);
}

/* The op behind activation site s of g: its producer node's name and op, or
 * the network input (op "input", type input). */
static const char *site_op(const kiln_graph *g, size_t s, int *type)
{
    int n = kiln_graph_site_node(g, s);
    if (n < 0) {
        *type = KILN_OP_INPUT;
        return "input";
    }
    const kiln_gnode *nd = kiln_graph_node(g, (size_t)n);
    *type = (int)nd->op;
    return nd->name;
}

int kiln_recipe_site_qspec(const kiln_recipe *r, const kiln_graph *g, size_t site,
                           kiln_qspec *out)
{
    if (!r || !g || site >= kiln_graph_site_count(g)) return 0;
    int t;
    const char *op = site_op(g, site, &t);
    return op_act_qspec(r, op, t, out);
}

int kiln_recipe_has_activations(const kiln_recipe *r, const kiln_graph *g)
{
    for (size_t s = 0; r && g && s < kiln_graph_site_count(g); s++)
        if (kiln_recipe_site_qspec(r, g, s, NULL)) return 1;
    return 0;
}

int kiln_recipe_has_palettization(const kiln_recipe *r, const kiln_graph *g)
{
    for (size_t w = 0; r && g && w < kiln_graph_weight_count(g); w++)
        if (resolve_pal(r, kiln_graph_weight(g, w)->name, KILN_OP_CONV).p) return 1;
    return 0;
}

int kiln_recipe_has_weight_quant(const kiln_recipe *r, const kiln_graph *g)
{
    for (size_t w = 0; r && g && w < kiln_graph_weight_count(g); w++)
        if (weight_spec(r, kiln_graph_weight(g, w)->name, NULL)) return 1;
    return 0;
}

const char *kiln_recipe_name(const kiln_recipe *r) { return r ? r->name : NULL; }

void kiln_recipe_get_options(const kiln_recipe *r, kiln_recipe_options *out)
{
    if (r && out) *out = r->opt;
}

/* ------------------------------------------------------------------------ */
/* The check against a graph.                                                */

static void src_path(int kind, const char *key, const char *section, const char *leaf,
                     char out[PATH_CAP])
{
    pctx tmp;
    tmp.plen = 0;
    tmp.path[0] = '\0';
    push(&tmp, section);
    if (kind == 0) push(&tmp, "global");
    else push(&tmp, kind == 1 ? "op_type" : "op_name"), push(&tmp, key);
    if (leaf) push(&tmp, leaf);
    memcpy(out, tmp.path, tmp.plen + 1);
}

/* What an op_name pattern can name in g. */
enum { NAMES_NODES = 1, NAMES_WEIGHTS = 2, NAMES_SITES = 4 };

static int matches_in(const char *pattern, const kiln_graph *g, int what)
{
    if ((what & NAMES_NODES) && match(pattern, "input")) return 1;
    for (size_t i = 0; (what & NAMES_NODES) && i < kiln_graph_node_count(g); i++)
        if (match(pattern, kiln_graph_node(g, i)->name)) return 1;
    for (size_t i = 0; (what & NAMES_WEIGHTS) && i < kiln_graph_weight_count(g); i++)
        if (match(pattern, kiln_graph_weight(g, i)->name)) return 1;
    /* ops that make an activation site (conv1 + ReLU: the ReLU does) */
    for (size_t s = 0; (what & NAMES_SITES) && s < kiln_graph_site_count(g); s++) {
        int n = kiln_graph_site_node(g, s);
        if (n >= 0 && match(pattern, kiln_graph_node(g, (size_t)n)->name)) return 1;
    }
    return 0;
}

static const char *name_at(const kiln_graph *g, int weights, size_t i)
{
    return weights ? kiln_graph_weight(g, i)->name : kiln_graph_node(g, i)->name;
}

/* " (e.g. a, b, c, d, e)" — a few names spread over the graph — and a
 * "did you mean" for the closest one when the graph is small enough to
 * compare every name. */
static void graph_examples(const kiln_graph *g, int weights, const char *pattern, char *out,
                           size_t cap)
{
    size_t n = weights ? kiln_graph_weight_count(g) : kiln_graph_node_count(g), o = 0;
    char shown[160];
    out[0] = '\0';
    if (n == 0) return;
    o += (size_t)snprintf(out + o, cap - o, " (e.g. ");
    size_t last = (size_t)-1;
    for (size_t k = 0; k < 5 && o < cap; k++) {
        size_t i = n == 1 ? 0 : k * (n - 1) / 4;
        if (i == last) continue;
        last = i;
        show(name_at(g, weights, i), shown);
        o += (size_t)snprintf(out + o, cap - o, "%s%s", k ? ", " : "", shown);
    }
    if (o < cap) o += (size_t)snprintf(out + o, cap - o, ")");
    if (n > 4096 || o >= cap) return;
    size_t best = 99;
    const char *pick = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *nm = name_at(g, weights, i);
        size_t d = lev(pattern, nm), lim = strlen(nm) / 3 < 2 ? strlen(nm) / 3 : 2;
        if (lim < 1) lim = 1;
        if (d <= lim && d < best) best = d, pick = nm;
    }
    if (pick) {
        show(pick, shown);
        snprintf(out + o, cap - o, " (did you mean \"%s\"?)", shown);
    }
}

static void check_errs(kiln_config_errors *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void check_errs(kiln_config_errors *e, const char *path, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errs_add(e, path, msg);
}

/* op_name entries of the quantization section: each must name some op of g
 * (a node, a weight or the input), and the roles it sets must exist there. */
static void check_qnames(const kiln_recipe *r, const kiln_graph *g, kiln_config_errors *e)
{
    char path[PATH_CAP], ex[600];
    const char *arch = kiln_graph_arch(g);
    for (size_t i = 0; i < r->n_qname; i++) {
        const qentry *q = &r->qname[i];
        if (!matches_in(q->h.key, g, NAMES_NODES | NAMES_WEIGHTS)) {
            src_path(2, q->h.key, "quantization", NULL, path);
            graph_examples(g, 0, q->h.key, ex, sizeof ex);
            check_errs(e, path, "matches no op of this %s model%s; see docs/config.md", arch, ex);
            continue;
        }
        if (q->h.is_null) continue;
        if (q->role[ROLE_WEIGHT].state != SLOT_UNSET && !matches_in(q->h.key, g, NAMES_WEIGHTS)) {
            src_path(2, q->h.key, "quantization", "weight", path);
            graph_examples(g, 1, q->h.key, ex, sizeof ex);
            check_errs(e, path,
                       "the pattern matches no conv op of this %s model, and only conv ops have "
                       "weights%s",
                       arch, ex);
        }
        if (q->role[ROLE_OUTPUT].state != SLOT_UNSET && !matches_in(q->h.key, g, NAMES_SITES)) {
            src_path(2, q->h.key, "quantization", "output", path);
            check_errs(e, path,
                       "the pattern matches no op with an output site (the network input uses the "
                       "\"input\" role; a conv whose only consumer is its ReLU is quantized after "
                       "its ReLU, SPEC §3.6)");
        }
    }
}

static void check_pnames(const kiln_recipe *r, const kiln_graph *g, kiln_config_errors *e)
{
    char path[PATH_CAP], ex[600];
    for (size_t i = 0; i < r->n_pname; i++) {
        const pentry *p = &r->pname[i];
        if (matches_in(p->h.key, g, NAMES_WEIGHTS)) continue;
        src_path(2, p->h.key, "palettization", NULL, path);
        graph_examples(g, 1, p->h.key, ex, sizeof ex);
        check_errs(e, path, "matches no conv op of this %s model%s; see docs/config.md",
                   kiln_graph_arch(g), ex);
    }
}

/* A conv is palettized or weight-quantized, never both (SPEC §4): report
 * each colliding weight spec once, at its path, naming the first weight. */
static void check_conflicts(const kiln_recipe *r, const kiln_graph *g, kiln_config_errors *e)
{
    const void *reported[MAX_PATTERNS * 2 + 4];
    size_t nrep = 0;
    for (size_t w = 0; w < kiln_graph_weight_count(g); w++) {
        const char *name = kiln_graph_weight(g, w)->name;
        psrc p = resolve_pal(r, name, KILN_OP_CONV);
        if (!p.p) continue;
        qsrc q = resolve_role(r, name, KILN_OP_CONV, ROLE_WEIGHT);
        if (!q.slot || q.slot->state != SLOT_SPEC) continue;
        int seen = 0;
        for (size_t k = 0; k < nrep; k++)
            if (reported[k] == q.slot) seen = 1;
        if (seen || nrep >= sizeof reported / sizeof reported[0]) continue;
        reported[nrep++] = q.slot;
        char wpath[PATH_CAP], ppath[PATH_CAP], shown[160];
        src_path(q.kind, q.key, "quantization", "weight", wpath);
        src_path(p.kind, p.key, "palettization", NULL, ppath);
        show(name, shown);
        check_errs(e, wpath,
                   "op \"%s\" is also palettized (%s); a palettized op is not weight-quantized "
                   "(SPEC §4 joint recipe): set this weight spec to null or exempt the op",
                   shown, ppath);
    }
}

static kiln_status finish_errors(kiln_config_errors *e, kiln_status st, kiln_config_errors **errs);

kiln_status kiln_recipe_check_model(const kiln_recipe *r, const kiln_graph *g,
                                    kiln_config_errors **errs)
{
    if (errs) *errs = NULL;
    if (!r || !g) return kiln_fail(KILN_ERR_INVALID, "kiln_recipe_check_model: NULL argument");
    kiln_config_errors *e = calloc(1, sizeof *e);
    if (!e) return kiln_fail(KILN_ERR_NOMEM, "config: out of memory");
    if (!r->preset) {
        check_qnames(r, g, e);
        check_pnames(r, g, e);
    }
    check_conflicts(r, g, e);
    if (e->n == 0 && !e->oom) {
        kiln_config_errors_free(e);
        return KILN_OK;
    }
    return finish_errors(e, KILN_ERR_CONFIG, errs);
}

/* ------------------------------------------------------------------------ */
/* Canonical JSON.                                                           */

static json_t *qspec_json(const kiln_qspec *q)
{
    json_t *gran, *calc;
    if (q->granularity == KILN_QG_PER_TENSOR) gran = json_string("per_tensor");
    else if (q->granularity == KILN_QG_PER_CHANNEL)
        gran = json_pack("{s:{s:i}}", "per_channel", "axis", q->axis);
    else
        gran = json_pack("{s:{s:i,s:i}}", "per_block", "axis", q->axis, "block_size",
                         q->block_size);
    switch (q->calc) {
    case KILN_QC_MOVING_AVERAGE:
        calc = json_pack("{s:{s:f}}", "moving_average", "constant", canon_float(q->ma_constant));
        break;
    case KILN_QC_HIST_PERCENTILE:
        calc = json_pack("{s:{s:f}}", "hist_percentile", "percentile",
                         canon_float(q->percentile));
        break;
    case KILN_QC_HIST_MSE: calc = json_pack("{s:{}}", "hist_mse"); break;
    default: calc = json_string(calc_names[q->calc]); break;
    }
    return json_pack("{s:o,s:s,s:o,s:b,s:s}", "calculator", calc, "dtype",
                     dtype_names[q->dtype], "granularity", gran, "multiply_by_inverse",
                     q->multiply_by_inverse, "qscheme", qscheme_names[q->qscheme]);
}

static json_t *slot_json(const qslot *s)
{
    return s->state == SLOT_SPEC ? qspec_json(&s->spec) : json_null();
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
    return v && json_object_set_new(obj, key, v) == 0;
}

static json_t *qscope_json(const qslot role[N_ROLES], int all)
{
    json_t *o = json_object();
    if (!o) return NULL;
    for (int k = 0; k < N_ROLES; k++) {
        if (!all && role[k].state == SLOT_UNSET) continue;
        if (!set_new(o, role_names[k], slot_json(&role[k]))) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *qentries_json(const qentry *e, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++)
        if (!set_new(o, e[i].h.key, e[i].h.is_null ? json_null() : qscope_json(e[i].role, 0))) {
            json_decref(o);
            return NULL;
        }
    return o;
}

static json_t *pspec_json(const kiln_pspec *p)
{
    json_t *o = json_pack("{s:s,s:o,s:i,s:b,s:s}", "granularity", pgran_names[p->granularity],
                          "lut_dtype", p->lut_quantize ? json_string("int8") : json_null(),
                          "n_bits", p->n_bits, "per_channel_scale", p->per_channel_scale,
                          "weighting", weighting_names[p->weighting]);
    if (o && p->granularity == KILN_PG_PER_GROUPED_CHANNEL &&
        !set_new(o, "group_size", json_integer(p->group_size))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *pentries_json(const pentry *e, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++)
        if (!set_new(o, e[i].h.key, e[i].h.is_null ? json_null() : pspec_json(&e[i].p))) {
            json_decref(o);
            return NULL;
        }
    return o;
}

static json_t *recipe_json(const kiln_recipe *r)
{
    json_t *quant, *pal;
    int qempty = r->n_qtype == 0 && r->n_qname == 0;
    for (int k = 0; k < N_ROLES; k++)
        if (r->qglobal[k].state == SLOT_SPEC) qempty = 0;
    if (qempty) quant = json_null();
    else
        quant = json_pack("{s:b,s:o,s:o,s:o}", "asymmetric_relu", r->asymmetric_relu,
                          "global", qscope_json(r->qglobal, 1), "op_type",
                          qentries_json(r->qtype, r->n_qtype), "op_name",
                          qentries_json(r->qname, r->n_qname));
    if (r->pglobal.h.is_null && r->n_ptype == 0 && r->n_pname == 0) pal = json_null();
    else
        pal = json_pack("{s:o,s:o,s:o}", "global",
                        r->pglobal.h.is_null ? json_null() : pspec_json(&r->pglobal.p), "op_type",
                        pentries_json(r->ptype, r->n_ptype), "op_name",
                        pentries_json(r->pname, r->n_pname));
    json_t *opt = json_pack("{s:b,s:b}", "bias_correction", r->opt.bias_correction,
                            "equalization", r->opt.equalization);
    if (!quant || !pal || !opt) {
        json_decref(quant), json_decref(pal), json_decref(opt);
        return NULL;
    }
    return json_pack("{s:s,s:o,s:o,s:o}", "name", r->name, "options", opt, "palettization", pal,
                     "quantization", quant);
}

static char *dump_canonical(json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
}

char *kiln_recipe_to_json(const kiln_recipe *r)
{
    return r && r->canon ? xstrdup(r->canon) : NULL;
}

void kiln_recipe_hash(const kiln_recipe *r, char hex[65])
{
    memcpy(hex, r ? r->hash : "", r ? 65 : 1);
}

/* ------------------------------------------------------------------------ */
/* Entry points.                                                             */

void kiln_recipe_destroy(kiln_recipe *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_qtype; i++) free(r->qtype[i].h.key);
    for (size_t i = 0; i < r->n_qname; i++) free(r->qname[i].h.key);
    for (size_t i = 0; i < r->n_ptype; i++) free(r->ptype[i].h.key);
    for (size_t i = 0; i < r->n_pname; i++) free(r->pname[i].h.key);
    free(r->qtype), free(r->qname), free(r->ptype), free(r->pname);
    free(r->name);
    free(r->canon);
    free(r);
}

void kiln_config_errors_free(kiln_config_errors *e)
{
    if (!e) return;
    for (size_t i = 0; i < e->n; i++) free(e->path[i]), free(e->msg[i]);
    free(e);
}

size_t kiln_config_errors_count(const kiln_config_errors *e) { return e ? e->n : 0; }

const char *kiln_config_errors_path(const kiln_config_errors *e, size_t i)
{
    return e && i < e->n ? e->path[i] : NULL;
}

const char *kiln_config_errors_message(const kiln_config_errors *e, size_t i)
{
    return e && i < e->n ? e->msg[i] : NULL;
}

char *kiln_config_errors_render(const kiln_config_errors *e)
{
    size_t total = 1;
    size_t n = e ? e->n : 0;
    for (size_t i = 0; i < n; i++) total += strlen(e->path[i]) + strlen(e->msg[i]) + 3;
    char *out = malloc(total), *p = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (e->path[i][0]) p += sprintf(p, "%s: %s\n", e->path[i], e->msg[i]);
        else p += sprintf(p, "%s\n", e->msg[i]);
    }
    *p = '\0';
    return out;
}

static kiln_status finish_errors(kiln_config_errors *e, kiln_status st, kiln_config_errors **errs)
{
    if (e->dropped) {
        char msg[96];
        /* The note takes the last slot, so that error is counted too. */
        snprintf(msg, sizeof msg, "%zu more errors not listed", e->dropped + 1);
        free(e->path[e->n - 1]), free(e->msg[e->n - 1]);
        e->n--;
        errs_add(e, "", msg);
    }
    if (e->oom) {
        kiln_config_errors_free(e);
        if (errs) *errs = NULL;
        return kiln_fail(KILN_ERR_NOMEM, "config: out of memory while validating");
    }
    if (e->n && e->path[0][0]) kiln_fail(st, "%s: %s", e->path[0], e->msg[0]);
    else kiln_fail(st, "%s", e->n ? e->msg[0] : "invalid config");
    if (errs) *errs = e;
    else kiln_config_errors_free(e);
    return st;
}

static kiln_status parse_impl(const char *json, size_t len, kiln_recipe **out,
                              kiln_config_errors **errs)
{
    if (out) *out = NULL;
    if (errs) *errs = NULL;
    if (!out || (!json && len)) return kiln_fail(KILN_ERR_INVALID, "kiln_recipe_parse: NULL argument");
    if (len > MAX_CONFIG_BYTES)
        return kiln_fail(KILN_ERR_LIMIT, "config: %zu bytes, limit %u", len, MAX_CONFIG_BYTES);
    kiln_config_errors *e = calloc(1, sizeof *e);
    if (!e) return kiln_fail(KILN_ERR_NOMEM, "config: out of memory");
    pctx *c = calloc(1, sizeof *c);
    kiln_recipe *r = calloc(1, sizeof *r);
    if (!c || !r) {
        free(c), free(r), free(e);
        return kiln_fail(KILN_ERR_NOMEM, "config: out of memory");
    }
    c->e = e;
    r->pglobal.h.is_null = 1;

    json_error_t jerr;
    json_t *root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char msg[300];
        snprintf(msg, sizeof msg, "invalid JSON at line %d, column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        errs_add(e, "", msg);
        kiln_recipe_destroy(r);
        free(c);
        return finish_errors(e, KILN_ERR_FORMAT, errs);
    }
    int ok = 1;
    if (!json_is_object(root)) {
        err(c, "a config is a JSON object, got %s", type_name(root));
    } else {
        check_keys(c, root, (const char *const[]){"name", "quantization", "palettization",
                                                  "options", NULL});
        json_t *x;
        size_t old;
        if ((x = json_object_get(root, "name"))) {
            old = push(c, "name");
            parse_name(c, x, r);
            pop(c, old);
        }
        if ((x = json_object_get(root, "quantization"))) {
            old = push(c, "quantization");
            ok = ok && parse_quantization(c, x, r);
            pop(c, old);
        }
        if ((x = json_object_get(root, "palettization"))) {
            old = push(c, "palettization");
            ok = ok && parse_palettization(c, x, r);
            pop(c, old);
        }
        if ((x = json_object_get(root, "options"))) {
            old = push(c, "options");
            parse_options(c, x, r);
            pop(c, old);
        }
    }
    json_decref(root);
    if (!ok) e->oom = 1;
    if (!r->name && !(r->name = xstrdup("custom"))) e->oom = 1;
    free(c);
    if (e->n || e->oom) {
        kiln_recipe_destroy(r);
        return finish_errors(e, KILN_ERR_CONFIG, errs);
    }
    kiln_config_errors_free(e);

    json_t *j = recipe_json(r);
    r->canon = j ? dump_canonical(j) : NULL;
    json_decref(j);
    if (!r->canon) {
        kiln_recipe_destroy(r);
        return kiln_fail(KILN_ERR_NOMEM, "config: out of memory");
    }
    kiln_sha256_hex(r->canon, strlen(r->canon), r->hash);
    *out = r;
    return KILN_OK;
}

static int preset_index(const char *name);
static kiln_status preset_parse(size_t i, kiln_recipe **out);

kiln_status kiln_recipe_parse(const char *json, size_t len, kiln_recipe **out,
                              kiln_config_errors **errs)
{
    kiln_status st = parse_impl(json, len, out, errs);
    if (st != KILN_OK) return st;
    /* The canonical form of a preset is that preset (see the file comment):
     * the name is part of the canonical form, so only a preset of the same
     * name can be equal. */
    int i = preset_index((*out)->name);
    kiln_recipe *p = NULL;
    if (i >= 0 && preset_parse((size_t)i, &p) == KILN_OK) {
        (*out)->preset = strcmp(p->canon, (*out)->canon) == 0;
        kiln_recipe_destroy(p);
    } else if (i >= 0) {
        kiln_recipe_destroy(*out);
        *out = NULL;
        return kiln_fail(KILN_ERR_NOMEM, "config: out of memory");
    }
    return KILN_OK;
}

kiln_status kiln_recipe_load_file(const char *path, kiln_recipe **out, kiln_config_errors **errs)
{
    if (out) *out = NULL;
    if (errs) *errs = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return kiln_fail(errno == ENOENT ? KILN_ERR_NOT_FOUND : KILN_ERR_IO,
                             "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(MAX_CONFIG_BYTES + 1);
    if (!buf) {
        fclose(f);
        return kiln_fail(KILN_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, MAX_CONFIG_BYTES + 1, f);
    int bad = ferror(f);
    fclose(f);
    kiln_status st;
    if (bad) st = kiln_fail(KILN_ERR_IO, "%s: read failed", path);
    else if (n > MAX_CONFIG_BYTES)
        st = kiln_fail(KILN_ERR_LIMIT, "%s: config larger than %u bytes", path, MAX_CONFIG_BYTES);
    else if ((st = kiln_recipe_parse(buf, n, out, errs)) != KILN_OK)
        kiln_errmsg_prefix("%s: ", path);
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Presets: configs written out in full, so docs/config.md can show them and
 * `kiln presets` prints exactly what runs.                                  */

#define W8 "{\"dtype\":\"int8\",\"qscheme\":\"symmetric\",\"granularity\":{\"per_channel\":{\"axis\":0}},\"calculator\":\"static\"}"
#define A8 "{\"dtype\":\"int8\",\"qscheme\":\"symmetric\",\"granularity\":\"per_tensor\",\"calculator\":{\"moving_average\":{\"constant\":0.01}}}"
/* [0,1] and [0,255] inputs on the 8-bit grid: uint8 asymmetric with the true
 * range is lossless there (SPEC §3.5 note: the reference spends 7 bits). */
#define U8MINMAX "{\"dtype\":\"uint8\",\"qscheme\":\"asymmetric\",\"granularity\":\"per_tensor\",\"calculator\":\"global_minmax\"}"
#define P4 "{\"n_bits\":4,\"granularity\":\"per_tensor\",\"lut_dtype\":\"int8\",\"per_channel_scale\":false,\"weighting\":\"counts\"}"
#define P4G16 "{\"n_bits\":4,\"granularity\":\"per_grouped_channel\",\"group_size\":16,\"lut_dtype\":\"int8\",\"per_channel_scale\":false,\"weighting\":\"counts\"}"
#define ACT_PLUS "\"asymmetric_relu\":true,\"op_name\":{\"mul255\":{\"output\":" U8MINMAX "}}"
/* kiln's improved recipes (SPEC §7; measured in docs/recipes.md):
 * weights int8 [-127,127] with scale max/127 (the reference's /127.5 shrinks
 * every channel's largest weight by 0.39%), activations uint8 asymmetric with
 * histogram-MSE ranges (most EDSR tensors are far from symmetric about 0),
 * bias correction (improve.h). */
#define W8C "{\"dtype\":\"int8\",\"qscheme\":\"symmetric_with_clipping\",\"granularity\":{\"per_channel\":{\"axis\":0}},\"calculator\":\"static\"}"
#define A8UMSE "{\"dtype\":\"uint8\",\"qscheme\":\"asymmetric\",\"granularity\":\"per_tensor\",\"calculator\":{\"hist_mse\":{}}}"
/* The 3-output convs (MeanShifts, tail.1) have fewer channels than a group:
 * one LUT for all of them, i.e. per tensor (the same thing, spelled so the
 * artifact's n_luts x group_size == cout holds). */
#define P4T_SMALL "{\"sub_mean\":" P4 ",\"add_mean\":" P4 ",\"tail.1\":" P4 "}"
#define OPT_BC "\"options\":{\"bias_correction\":true,\"equalization\":false}"

static const struct {
    const char *name, *json;
} presets[] = {
    {"fp32", "{\"name\":\"fp32\",\"quantization\":null,\"palettization\":null}"},
    {"w8a8", "{\"name\":\"w8a8\",\"quantization\":{\"global\":{\"weight\":" W8 ",\"input\":" A8
             ",\"output\":" A8 "}}}"},
    {"w8", "{\"name\":\"w8\",\"quantization\":{\"global\":{\"weight\":" W8
           ",\"input\":null,\"output\":null}}}"},
    {"p4", "{\"name\":\"p4\",\"palettization\":{\"global\":" P4 "}}"},
    {"p4a8", "{\"name\":\"p4a8\",\"palettization\":{\"global\":" P4 "},"
             "\"quantization\":{\"global\":{\"weight\":null,\"input\":" A8 ",\"output\":" A8
             "}}}"},
    {"w8a8+", "{\"name\":\"w8a8+\",\"quantization\":{\"global\":{\"weight\":" W8C
              ",\"input\":" U8MINMAX ",\"output\":" A8UMSE "}," ACT_PLUS "}," OPT_BC "}"},
    {"p4a8+", "{\"name\":\"p4a8+\",\"palettization\":{\"global\":" P4 "},"
              "\"quantization\":{\"global\":{\"weight\":null,\"input\":" U8MINMAX
              ",\"output\":" A8UMSE "}," ACT_PLUS "}," OPT_BC "}"},
    {"p4g16", "{\"name\":\"p4g16\",\"palettization\":{\"global\":" P4G16 "}}"},
    {"p4g16a8+", "{\"name\":\"p4g16a8+\",\"palettization\":{\"global\":" P4G16
                 ",\"op_name\":" P4T_SMALL "},"
                 "\"quantization\":{\"global\":{\"weight\":null,\"input\":" U8MINMAX
                 ",\"output\":" A8UMSE "}," ACT_PLUS "}," OPT_BC "}"},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

const char *const *kiln_preset_names(void)
{
    static const char *const names[] = {"fp32", "w8a8", "w8", "p4", "p4a8", "w8a8+", "p4a8+",
                                        "p4g16", "p4g16a8+", NULL};
    _Static_assert(sizeof names / sizeof names[0] == N_PRESETS + 1, "preset list out of sync");
    return names;
}

static int preset_index(const char *name)
{
    for (size_t i = 0; name && i < N_PRESETS; i++)
        if (strcmp(name, presets[i].name) == 0) return (int)i;
    return -1;
}

static kiln_status preset_parse(size_t i, kiln_recipe **out)
{
    kiln_status st = parse_impl(presets[i].json, strlen(presets[i].json), out, NULL);
    if (st == KILN_ERR_CONFIG || st == KILN_ERR_FORMAT)
        return kiln_fail(KILN_ERR_INTERNAL, "preset %s: %s", presets[i].name, kiln_errmsg());
    if (st == KILN_OK) (*out)->preset = 1;
    return st;
}

kiln_status kiln_recipe_preset(const char *name, kiln_recipe **out)
{
    if (out) *out = NULL;
    if (!name || !out) return kiln_fail(KILN_ERR_INVALID, "kiln_recipe_preset: NULL argument");
    int i = preset_index(name);
    if (i >= 0) return preset_parse((size_t)i, out);
    char list[256], shown[160];
    join_names(kiln_preset_names(), list);
    show(name, shown);
    return kiln_fail(KILN_ERR_NOT_FOUND, "recipe: no preset \"%s\"; presets are %s", shown, list);
}

kiln_status kiln_recipe_load(const char *preset_or_path, kiln_recipe **out,
                             kiln_config_errors **errs)
{
    if (errs) *errs = NULL;
    if (!preset_or_path || !out)
        return kiln_fail(KILN_ERR_INVALID, "kiln_recipe_load: NULL argument");
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(preset_or_path, presets[i].name) == 0)
            return kiln_recipe_preset(preset_or_path, out);
    return kiln_recipe_load_file(preset_or_path, out, errs);
}

char *kiln_presets_json(void)
{
    json_t *all = json_object();
    for (size_t i = 0; all && i < N_PRESETS; i++) {
        kiln_recipe *r;
        if (kiln_recipe_preset(presets[i].name, &r) != KILN_OK) {
            json_decref(all);
            return NULL;
        }
        json_t *j = json_loads(r->canon, 0, NULL);
        kiln_recipe_destroy(r);
        if (!set_new(all, presets[i].name, j)) {
            json_decref(all);
            return NULL;
        }
    }
    char *s = all ? dump_canonical(all) : NULL;
    json_decref(all);
    return s;
}

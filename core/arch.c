/*
 * arch.c — state dicts of the known SR architectures as graphs (arch.h).
 *
 * Each importer walks its architecture's forward pass in execution order,
 * taking each tensor by name with the exact shape it must have, so the
 * first key that does not fit is the one named in the error. Keys the
 * architecture does not use are refused too (an EDSR with an extra block is
 * not silently truncated), except the upsamplers of a multi-scale file that
 * the chosen scale does not use.
 *
 * Names: weights are the module paths of the convs; nodes are the module
 * paths of the ops (EDSR's adds and multiplications, which are not modules,
 * keep the names kiln has always given them: body.{i}.mul, body.{i}.add,
 * add); tensors are the activation-site names (EDSR's: input, mul255,
 * sub_mean, head, body.{i}.relu, ...).
 */
#include "arch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const float kMeanRGB[3] = {0.4488f, 0.4371f, 0.4040f};

const char *kiln_arch_known(void) { return "edsr, carn, carn_m"; }

/* ---- tensor access -------------------------------------------------------- */

typedef struct imp {
    const kiln_weights *w; /* NULL: topology only */
    unsigned char *used;
    kiln_graph *g;
    const char *arch; /* for messages: "EDSR", "CARN" */
} imp;

static void shape_str(char *out, size_t n, int ndim, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(out + used, n - used, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(out + used, n - used, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (used < n) snprintf(out + used, n - used, "]");
}

/* A tensor that must exist with exactly this shape; marks it used. */
static kiln_status take(imp *im, const char *name, int ndim, const int64_t *shape, const float **out)
{
    long i = kiln_weights_find(im->w, name);
    char want[96], got[96];
    shape_str(want, sizeof want, ndim, shape);
    if (i < 0) return kiln_fail(KILN_ERR_ARCH, "%s: missing %s (expected shape %s)", im->arch, name, want);
    int gd = kiln_weights_ndim(im->w, (size_t)i);
    const int64_t *gs = kiln_weights_shape(im->w, (size_t)i);
    int ok = gd == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = gs[d] == shape[d];
    if (!ok) {
        shape_str(got, sizeof got, gd, gs);
        return kiln_fail(KILN_ERR_ARCH, "%s: %s has shape %s, expected %s", im->arch, name, got, want);
    }
    im->used[i] = 1;
    *out = kiln_weights_data(im->w, (size_t)i);
    return KILN_OK;
}

/* A conv weight "<prefix>.weight" [cout, cin/groups, k, k] + "<prefix>.bias". */
static kiln_status add_conv_weight(imp *im, const char *prefix, int cout, int cin, int k, int groups, int meanshift,
                                   int *id)
{
    const float *wd = NULL, *bd = NULL;
    if (im->w) {
        char key[KILN_GRAPH_NAME_MAX + 16];
        int64_t ws[4] = {cout, cin / groups, k, k}, bs[1] = {cout};
        snprintf(key, sizeof key, "%s.weight", prefix);
        kiln_status st = take(im, key, 4, ws, &wd);
        if (st != KILN_OK) return st;
        snprintf(key, sizeof key, "%s.bias", prefix);
        if ((st = take(im, key, 1, bs, &bd)) != KILN_OK) return st;
    }
    return kiln_graph_add_weight(im->g, prefix, cout, cin, k, groups, wd, bd, 1, meanshift, id);
}

/* weight + conv node named after it. */
static kiln_status conv(imp *im, const char *prefix, const char *out_name, int in, int cout, int k, int groups,
                        int *out)
{
    int wid;
    int cin = kiln_graph_tensor(im->g, (size_t)in)->c;
    kiln_status st = add_conv_weight(im, prefix, cout, cin, k, groups, 0, &wid);
    return st != KILN_OK ? st : kiln_graph_conv(im->g, prefix, out_name, in, wid, out);
}

static kiln_status check_unused(imp *im, const char *what)
{
    for (size_t i = 0; im->w && i < kiln_weights_count(im->w); i++)
        if (!im->used[i])
            return kiln_fail(KILN_ERR_ARCH, "%s: unexpected tensor %s (%s has no such key)", im->arch,
                             kiln_weights_name(im->w, i), what);
    return KILN_OK;
}

/* ---- EDSR (SPEC §1) --------------------------------------------------------- */

/* MeanShift from the state dict, or the standard DIV2K values when absent. */
static kiln_status edsr_meanshift(imp *im, const char *name, float sign, int in, int *out)
{
    int wid;
    kiln_status st;
    char kw[40], kb[40];
    snprintf(kw, sizeof kw, "%s.weight", name);
    snprintf(kb, sizeof kb, "%s.bias", name);
    if (!im->w || kiln_weights_find(im->w, kw) >= 0 || kiln_weights_find(im->w, kb) >= 0) {
        st = add_conv_weight(im, name, 3, 3, 1, 1, 1, &wid);
    } else {
        float wd[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, bd[3];
        for (int i = 0; i < 3; i++) bd[i] = sign * 255.0f * kMeanRGB[i];
        st = kiln_graph_add_weight(im->g, name, 3, 3, 1, 1, wd, bd, 1, 1, &wid);
    }
    return st != KILN_OK ? st : kiln_graph_conv(im->g, name, name, in, wid, out);
}

static kiln_status edsr_build(imp *im, int R, int F, int scale, float rs)
{
    kiln_graph *g = im->g;
    const int n_up = scale == 4 ? 2 : 1, r = scale == 4 ? 2 : scale;
    int t, h0, cur;
    char p[64], q[64];
    kiln_status st = kiln_graph_unary(g, KILN_OP_MUL, "mul255", "mul255", 0, 255.0f, &t);
    if (st == KILN_OK) st = edsr_meanshift(im, "sub_mean", -1.0f, t, &t);
    if (st == KILN_OK) st = conv(im, "head.0", "head", t, F, 3, 1, &h0);
    cur = h0;
    for (int i = 0; st == KILN_OK && i < R; i++) {
        int a, b;
        snprintf(p, sizeof p, "body.%d.body.0", i), snprintf(q, sizeof q, "body.%d.conv1", i);
        st = conv(im, p, q, cur, F, 3, 1, &a);
        snprintf(p, sizeof p, "body.%d.body.1", i), snprintf(q, sizeof q, "body.%d.relu", i);
        if (st == KILN_OK) st = kiln_graph_unary(g, KILN_OP_RELU, p, q, a, 0, &a);
        snprintf(p, sizeof p, "body.%d.body.2", i), snprintf(q, sizeof q, "body.%d.conv2", i);
        if (st == KILN_OK) st = conv(im, p, q, a, F, 3, 1, &b);
        snprintf(p, sizeof p, "body.%d.mul", i);
        if (st == KILN_OK) st = kiln_graph_unary(g, KILN_OP_MUL, p, p, b, rs, &b);
        snprintf(p, sizeof p, "body.%d.add", i);
        if (st == KILN_OK) st = kiln_graph_binary(g, KILN_OP_ADD, p, p, b, cur, &cur);
    }
    snprintf(p, sizeof p, "body.%d", R);
    if (st == KILN_OK) st = conv(im, p, "body_conv", cur, F, 3, 1, &t);
    if (st == KILN_OK) st = kiln_graph_binary(g, KILN_OP_ADD, "add", "global_add", t, h0, &t);
    for (int j = 0; st == KILN_OK && j < n_up; j++) {
        snprintf(p, sizeof p, "tail.0.%d", 2 * j);
        snprintf(q, sizeof q, n_up == 1 ? "upsample_conv" : "upsample_conv.%d", j);
        st = conv(im, p, q, t, F * r * r, 3, 1, &t);
        snprintf(p, sizeof p, "tail.0.%d", 2 * j + 1);
        snprintf(q, sizeof q, n_up == 1 ? "pixel_shuffle" : "pixel_shuffle.%d", j);
        if (st == KILN_OK) st = kiln_graph_unary(g, KILN_OP_PIXEL_SHUFFLE, p, q, t, (float)r, &t);
    }
    if (st == KILN_OK) st = conv(im, "tail.1", "tail_conv", t, 3, 3, 1, &t);
    if (st == KILN_OK) st = edsr_meanshift(im, "add_mean", 1.0f, t, &t);
    if (st == KILN_OK) {
        char what[96];
        snprintf(what, sizeof what, "an EDSR with %d blocks, %d features, x%d", R, F, scale);
        st = check_unused(im, what);
    }
    if (st == KILN_OK) st = kiln_graph_finish(g, t, 255.0f);
    if (st == KILN_OK) {
        char d[160];
        snprintf(d, sizeof d, "EDSR, %d blocks, %d features, x%d, res_scale %g", R, F, scale, (double)rs);
        kiln_graph_set_desc(g, d);
    }
    return st;
}

static kiln_status edsr_import(imp *im, const kiln_arch_opts *opts)
{
    const kiln_weights *w = im->w;
    long head = kiln_weights_find(w, "head.0.weight");
    const int64_t *hs = kiln_weights_shape(w, (size_t)head);
    if (kiln_weights_ndim(w, (size_t)head) != 4 || hs[1] != 3 || hs[2] != 3 || hs[3] != 3 || hs[0] < 1 ||
        hs[0] > 4096) {
        char got[96];
        shape_str(got, sizeof got, kiln_weights_ndim(w, (size_t)head), hs);
        return kiln_fail(KILN_ERR_ARCH, "EDSR: head.0.weight has shape %s, expected [F,3,3,3]", got);
    }
    int F = (int)hs[0], R = 0;
    char key[96];
    for (;; R++) {
        snprintf(key, sizeof key, "body.%d.body.0.weight", R);
        if (kiln_weights_find(w, key) < 0) break;
        if (R > 1024) return kiln_fail(KILN_ERR_LIMIT, "EDSR: more than 1024 residual blocks");
    }
    long up0 = kiln_weights_find(w, "tail.0.0.weight");
    if (up0 < 0)
        return kiln_fail(KILN_ERR_ARCH,
                         "EDSR: missing tail.0.0.weight (expected shape [4F or 9F,F,3,3] = [%d or %d,%d,3,3])", 4 * F,
                         9 * F, F);
    int64_t upc = kiln_weights_shape(w, (size_t)up0)[0];
    int scale;
    if (kiln_weights_ndim(w, (size_t)up0) >= 1 && upc == 9 * (int64_t)F) scale = 3;
    else if (kiln_weights_ndim(w, (size_t)up0) >= 1 && upc == 4 * (int64_t)F)
        scale = kiln_weights_find(w, "tail.0.2.weight") >= 0 ? 4 : 2;
    else {
        char got[96];
        shape_str(got, sizeof got, kiln_weights_ndim(w, (size_t)up0), kiln_weights_shape(w, (size_t)up0));
        return kiln_fail(KILN_ERR_ARCH,
                         "EDSR: tail.0.0.weight has shape %s, expected [%d,%d,3,3] (x2, x4) or [%d,%d,3,3] (x3)", got,
                         4 * F, F, 9 * F, F);
    }
    if (opts && opts->scale && opts->scale != scale)
        return kiln_fail(KILN_ERR_INVALID, "EDSR: the checkpoint is x%d, scale x%d was asked for", scale, opts->scale);
    if (opts && (opts->res_scale < 0 || !isfinite(opts->res_scale)))
        return kiln_fail(KILN_ERR_INVALID, "res_scale must be a positive number");
    float rs = opts && opts->res_scale > 0 ? opts->res_scale : (F >= 256 ? 0.1f : 1.0f);
    return edsr_build(im, R, F, scale, rs);
}

kiln_status kiln_arch_edsr_topology(int R, int F, int scale, float res_scale, kiln_graph **out)
{
    *out = NULL;
    if (R < 0 || R > 1024 || F < 1 || F > 4096 || (scale != 2 && scale != 3 && scale != 4) || !isfinite(res_scale) ||
        res_scale <= 0)
        return kiln_fail(KILN_ERR_FORMAT, "EDSR: %d blocks, %d features, x%d, res_scale %g is no EDSR", R, F, scale,
                         (double)res_scale);
    imp im = {NULL, NULL, NULL, "EDSR"};
    kiln_status st = kiln_graph_create("edsr", "input", &im.g);
    if (st == KILN_OK) st = edsr_build(&im, R, F, scale, res_scale);
    if (st != KILN_OK) {
        kiln_graph_destroy(im.g);
        return st;
    }
    *out = im.g;
    return KILN_OK;
}

/* ---- CARN and CARN-M -------------------------------------------------------- */

/* conv + fused ReLU: "<prefix>.body.0" conv, "<prefix>.body.1" relu. */
static kiln_status basic_block(imp *im, const char *prefix, const char *sfx, int in, int cout, int *out)
{
    char p[2 * KILN_GRAPH_NAME_MAX], t[3 * KILN_GRAPH_NAME_MAX], r[2 * KILN_GRAPH_NAME_MAX];
    snprintf(p, sizeof p, "%s.body.0", prefix);
    snprintf(t, sizeof t, "%s%s", p, sfx);
    snprintf(r, sizeof r, "%s.body.1", prefix);
    kiln_status st = conv(im, p, t, in, cout, 1, 1, out);
    snprintf(t, sizeof t, "%s%s", r, sfx);
    return st != KILN_OK ? st : kiln_graph_unary(im->g, KILN_OP_RELU, r, t, *out, 0, out);
}

/* A conv node on an existing weight (the shared unit of CARN-M), or a new
 * weight on its first call. */
static kiln_status conv_shared(imp *im, const char *wname, const char *tname, int in, int cout, int k, int groups,
                               int *out)
{
    long wid = kiln_graph_weight_find(im->g, wname);
    if (wid < 0) return conv(im, wname, tname, in, cout, k, groups, out);
    return kiln_graph_conv(im->g, wname, tname, in, (int)wid, out);
}

/* One residual unit at `prefix` (call number `call` for tensor names):
 * CARN: conv3 -> relu -> conv3, + x, relu; CARN-M: grouped conv3 -> relu ->
 * grouped conv3 -> relu -> conv1, + x, relu. */
static kiln_status residual_unit(imp *im, const char *prefix, int call, int mobile, int x, int *out)
{
    const int F = 64, groups = mobile ? 4 : 1;
    char sfx[8] = "", w[2 * KILN_GRAPH_NAME_MAX], t[3 * KILN_GRAPH_NAME_MAX];
    if (call > 1) snprintf(sfx, sizeof sfx, ":%d", call);
    int a;
#define NAME(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)
    NAME(w, "%s.body.0", prefix), NAME(t, "%s%s", w, sfx);
    kiln_status st = conv_shared(im, w, t, x, F, 3, groups, &a);
    NAME(w, "%s.body.1", prefix), NAME(t, "%s%s", w, sfx);
    if (st == KILN_OK) st = kiln_graph_unary(im->g, KILN_OP_RELU, w, t, a, 0, &a);
    NAME(w, "%s.body.2", prefix), NAME(t, "%s%s", w, sfx);
    if (st == KILN_OK) st = conv_shared(im, w, t, a, F, 3, groups, &a);
    if (mobile) {
        NAME(w, "%s.body.3", prefix), NAME(t, "%s%s", w, sfx);
        if (st == KILN_OK) st = kiln_graph_unary(im->g, KILN_OP_RELU, w, t, a, 0, &a);
        NAME(w, "%s.body.4", prefix), NAME(t, "%s%s", w, sfx);
        if (st == KILN_OK) st = conv_shared(im, w, t, a, F, 1, 1, &a);
    }
    NAME(w, "%s.add", prefix), NAME(t, "%s%s", w, sfx);
    if (st == KILN_OK) st = kiln_graph_binary(im->g, KILN_OP_ADD, w, t, a, x, &a);
    NAME(w, "%s.relu", prefix), NAME(t, "%s%s", w, sfx);
    if (st == KILN_OK) st = kiln_graph_unary(im->g, KILN_OP_RELU, w, t, a, 0, out);
#undef NAME
    return st;
}

/* The cascade of CARN: three units, each followed by a 1x1 fusion conv over
 * the concatenation of the input and every unit output so far. `unit`
 * names the unit of step i (CARN: prefix.b{i}; CARN-M: prefix.b1 always),
 * fusion convs are prefix.c{i}. */
static kiln_status cascade(imp *im, const char *prefix, int mobile, int x, int *out)
{
    int cat[4] = {x, -1, -1, -1}, o = x;
    kiln_status st = KILN_OK;
    char u[32], c[32], t[32];
    for (int i = 1; st == KILN_OK && i <= 3; i++) {
        int b;
        snprintf(u, sizeof u, "%s%sb%d", prefix, *prefix ? "." : "", mobile ? 1 : i);
        st = residual_unit(im, u, mobile ? i : 1, mobile, o, &b);
        if (st != KILN_OK) break;
        cat[i] = b;
        snprintf(t, sizeof t, "%s%scat%d", prefix, *prefix ? "." : "", i);
        /* concat of everything so far: the previous concat and b */
        int parts[2] = {cat[0], b};
        st = kiln_graph_concat(im->g, t, t, parts, 2, &cat[0]);
        snprintf(c, sizeof c, "%s%sc%d", prefix, *prefix ? "." : "", i);
        if (st == KILN_OK) st = basic_block(im, c, "", cat[0], 64, &o);
    }
    *out = o;
    return st;
}

static kiln_status carn_upsampler(imp *im, int mobile, int scale, int x, int *out)
{
    const int groups = mobile ? 4 : 1;
    const int stages = scale == 4 ? 2 : 1, r = scale == 4 ? 2 : scale;
    kiln_status st = KILN_OK;
    char w[KILN_GRAPH_NAME_MAX];
    for (int j = 0; st == KILN_OK && j < stages; j++) {
        snprintf(w, sizeof w, "upsample.up%d.body.%d", scale, 3 * j);
        st = conv(im, w, w, x, 64 * r * r, 3, groups, &x);
        snprintf(w, sizeof w, "upsample.up%d.body.%d", scale, 3 * j + 1);
        if (st == KILN_OK) st = kiln_graph_unary(im->g, KILN_OP_RELU, w, w, x, 0, &x);
        snprintf(w, sizeof w, "upsample.up%d.body.%d", scale, 3 * j + 2);
        if (st == KILN_OK) st = kiln_graph_unary(im->g, KILN_OP_PIXEL_SHUFFLE, w, w, x, (float)r, &x);
    }
    *out = x;
    return st;
}

static kiln_status carn_import(imp *im, int mobile, const kiln_arch_opts *opts)
{
    const kiln_weights *wt = im->w;
    int scales[3] = {2, 3, 4}, scale = 0;
    char key[64];
    if (opts && opts->scale) {
        snprintf(key, sizeof key, "upsample.up%d.body.0.weight", opts->scale);
        if (kiln_weights_find(wt, key) < 0)
            return kiln_fail(KILN_ERR_INVALID, "%s: scale x%d asked for, but the checkpoint has no such upsampler (missing %s)", im->arch,
                             opts->scale, key);
        scale = opts->scale;
    }
    for (int i = 0; !scale && i < 3; i++) {
        snprintf(key, sizeof key, "upsample.up%d.body.0.weight", scales[i]);
        if (kiln_weights_find(wt, key) >= 0) scale = scales[i];
    }
    if (!scale) return kiln_fail(KILN_ERR_ARCH, "%s: missing upsample.up2.body.0.weight (no upsampler)", im->arch);
    int t, wid, x;
    kiln_status st = add_conv_weight(im, "sub_mean.shifter", 3, 3, 1, 1, 1, &wid);
    if (st == KILN_OK) st = kiln_graph_conv(im->g, "sub_mean.shifter", "sub_mean", 0, wid, &t);
    if (st == KILN_OK) st = conv(im, "entry", "entry", t, 64, 3, 1, &x);
    /* the network-level cascade: blocks b1..b3 in place of units */
    int cat = x, o = x;
    for (int i = 1; st == KILN_OK && i <= 3; i++) {
        char b[16], c[16], n[16];
        int bo;
        snprintf(b, sizeof b, "b%d", i);
        st = cascade(im, b, mobile, o, &bo);
        snprintf(n, sizeof n, "cat%d", i);
        int parts[2] = {cat, bo};
        if (st == KILN_OK) st = kiln_graph_concat(im->g, n, n, parts, 2, &cat);
        snprintf(c, sizeof c, "c%d", i);
        if (st == KILN_OK) st = basic_block(im, c, "", cat, 64, &o);
    }
    if (st == KILN_OK) st = carn_upsampler(im, mobile, scale, o, &t);
    if (st == KILN_OK) st = conv(im, "exit", "exit", t, 3, 3, 1, &t);
    if (st == KILN_OK) st = add_conv_weight(im, "add_mean.shifter", 3, 3, 1, 1, 1, &wid);
    if (st == KILN_OK) st = kiln_graph_conv(im->g, "add_mean.shifter", "add_mean", t, wid, &t);
    /* the upsamplers of other scales in a multi-scale file are not used */
    for (size_t i = 0; st == KILN_OK && i < kiln_weights_count(wt); i++) {
        const char *nm = kiln_weights_name(wt, i);
        int s;
        if (!im->used[i] && sscanf(nm, "upsample.up%d.", &s) == 1 && s != scale && (s == 2 || s == 3 || s == 4))
            im->used[i] = 1;
    }
    if (st == KILN_OK) st = check_unused(im, mobile ? "CARN-M" : "CARN");
    if (st == KILN_OK) st = kiln_graph_finish(im->g, t, 1.0f);
    if (st == KILN_OK) {
        char d[96];
        snprintf(d, sizeof d, "%s, x%d", mobile ? "CARN-M" : "CARN", scale);
        kiln_graph_set_desc(im->g, d);
    }
    return st;
}

/* ---- choice ------------------------------------------------------------------ */

kiln_status kiln_arch_import(const kiln_weights *w, const kiln_arch_opts *opts, kiln_graph **out)
{
    *out = NULL;
    size_t n = kiln_weights_count(w);
    if (n == 0) return kiln_fail(KILN_ERR_ARCH, "the state dict holds no tensors");
    int is_edsr = kiln_weights_find(w, "head.0.weight") >= 0;
    int is_carn = kiln_weights_find(w, "entry.weight") >= 0;
    if (!is_edsr && !is_carn)
        return kiln_fail(KILN_ERR_ARCH,
                         "not a state dict of an architecture kiln knows (%s: EDSR has head.0.weight, CARN and "
                         "CARN-M have entry.weight); first key is %s; export other networks to ONNX",
                         kiln_arch_known(), kiln_weights_name(w, 0));
    int mobile = is_carn && kiln_weights_find(w, "b1.b1.body.4.weight") >= 0;
    imp im = {w, calloc(n, 1), NULL, is_edsr ? "EDSR" : mobile ? "CARN-M" : "CARN"};
    if (!im.used) return kiln_fail(KILN_ERR_NOMEM, "arch: out of memory");
    kiln_status st = kiln_graph_create(is_edsr ? "edsr" : mobile ? "carn_m" : "carn", "input", &im.g);
    if (st == KILN_OK) st = is_edsr ? edsr_import(&im, opts) : carn_import(&im, mobile, opts);
    free(im.used);
    if (st != KILN_OK) {
        kiln_graph_destroy(im.g);
        return st;
    }
    *out = im.g;
    return KILN_OK;
}

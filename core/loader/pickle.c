/*
 * pickle.c — a restricted pickle virtual machine for PyTorch state dicts.
 *
 * Python's unpickler executes arbitrary callables; this one only *describes*:
 * it knows the protocol 2..5 opcodes torch.save emits for a state dict and
 * five globals (OrderedDict, _rebuild_tensor_v2, _rebuild_parameter and the
 * Float/Half/BFloat16 storage classes). REDUCE on those globals builds a
 * plain description (a dict, a tensor view of a storage); persistent ids
 * become storage references that the format (zip entry, legacy blob) resolves
 * later. Any other opcode or global is KILN_ERR_UNSUPPORTED, named.
 *
 * Memory: every object lives in one arena (vm->obj) and refers to others by
 * index, so shared and even cyclic references (through the memo) cost nothing
 * and destruction is one loop. Strings point into the input buffer. The VM is
 * iterative (no recursion); the stack, mark stack, memo, object count and
 * string lengths are bounded (KILN_PICKLE_MAX_*), so hostile input fails with
 * KILN_ERR_LIMIT instead of exhausting memory. Every read is bounds-checked
 * against the input length.
 *
 * Semantics follow CPython's _pickle.c: MARK starts a new stack frame, so no
 * opcode may pop below the innermost mark.
 */
#include <stdlib.h>
#include <string.h>

#include "loader_internal.h"

#define NO_OBJ UINT32_MAX

struct kiln__pickle {
    kiln__pval *obj;
    uint32_t nobj, capobj;
    uint32_t *stack;
    uint32_t sp, capstack;
    uint32_t marks[KILN_PICKLE_MAX_MARKS];
    uint32_t nmarks;
    uint32_t *memo; /* memo index -> object index, NO_OBJ when unset */
    uint32_t capmemo, nmemo;
};

static const char *kind_name(kiln__pkind k)
{
    switch (k) {
    case KILN__P_NONE: return "None";
    case KILN__P_BOOL: return "bool";
    case KILN__P_INT: return "int";
    case KILN__P_BIGINT: return "long int";
    case KILN__P_FLOAT: return "float";
    case KILN__P_STR: return "str";
    case KILN__P_BYTES: return "bytes";
    case KILN__P_TUPLE: return "tuple";
    case KILN__P_LIST: return "list";
    case KILN__P_DICT: return "dict";
    case KILN__P_GLOBAL: return "global";
    case KILN__P_STORAGE: return "storage";
    case KILN__P_TENSOR: return "tensor";
    }
    return "?";
}

void kiln__pickle_destroy(kiln__pickle *vm)
{
    if (!vm) return;
    for (uint32_t i = 0; i < vm->nobj; i++) {
        kiln__pkind k = vm->obj[i].kind;
        if (k == KILN__P_TUPLE || k == KILN__P_LIST || k == KILN__P_DICT)
            free(vm->obj[i].u.seq.items);
    }
    free(vm->obj);
    free(vm->stack);
    free(vm->memo);
    free(vm);
}

const kiln__pval *kiln__pickle_obj(const kiln__pickle *vm, uint32_t idx)
{
    return idx < vm->nobj ? &vm->obj[idx] : NULL;
}

/* ---- arena, stack, memo ------------------------------------------------- */

static kiln_status new_obj(kiln__pickle *vm, kiln__pkind kind, uint32_t *idx)
{
    if (vm->nobj >= KILN_PICKLE_MAX_OBJECTS)
        return kiln_fail(KILN_ERR_LIMIT, "pickle: more than %u objects",
                         KILN_PICKLE_MAX_OBJECTS);
    if (vm->nobj == vm->capobj) {
        uint32_t cap = vm->capobj ? vm->capobj * 2 : 256;
        kiln__pval *o = realloc(vm->obj, (size_t)cap * sizeof *o);
        if (!o) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
        vm->obj = o;
        vm->capobj = cap;
    }
    memset(&vm->obj[vm->nobj], 0, sizeof vm->obj[0]);
    vm->obj[vm->nobj].kind = kind;
    *idx = vm->nobj++;
    return KILN_OK;
}

static kiln_status push(kiln__pickle *vm, uint32_t idx)
{
    if (vm->sp >= KILN_PICKLE_MAX_STACK)
        return kiln_fail(KILN_ERR_LIMIT, "pickle: stack deeper than %u",
                         KILN_PICKLE_MAX_STACK);
    if (vm->sp == vm->capstack) {
        uint32_t cap = vm->capstack ? vm->capstack * 2 : 64;
        uint32_t *s = realloc(vm->stack, (size_t)cap * sizeof *s);
        if (!s) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
        vm->stack = s;
        vm->capstack = cap;
    }
    vm->stack[vm->sp++] = idx;
    return KILN_OK;
}

static uint32_t frame_floor(const kiln__pickle *vm)
{
    return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
}

/* Push a new object of kind and return a pointer to it (valid until the
 * next allocation). */
static kiln_status push_new(kiln__pickle *vm, kiln__pkind kind, kiln__pval **out)
{
    uint32_t idx;
    kiln_status st = new_obj(vm, kind, &idx);
    if (st) return st;
    if ((st = push(vm, idx))) return st;
    *out = &vm->obj[idx];
    return KILN_OK;
}

static kiln_status seq_append(kiln__pickle *vm, uint32_t seq, uint32_t item)
{
    kiln__pval *v = &vm->obj[seq];
    if (v->u.seq.n == v->u.seq.cap) {
        if (v->u.seq.cap >= KILN_PICKLE_MAX_OBJECTS * 2u)
            return kiln_fail(KILN_ERR_LIMIT, "pickle: container with more than %u items",
                             KILN_PICKLE_MAX_OBJECTS * 2u);
        uint32_t cap = v->u.seq.cap ? v->u.seq.cap * 2 : 8;
        uint32_t *it = realloc(v->u.seq.items, (size_t)cap * sizeof *it);
        if (!it) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
        v->u.seq.items = it;
        v->u.seq.cap = cap;
    }
    v->u.seq.items[v->u.seq.n++] = item;
    return KILN_OK;
}

static kiln_status memo_put(kiln__pickle *vm, uint64_t key, size_t off)
{
    if (vm->sp <= frame_floor(vm))
        return kiln_fail(KILN_ERR_FORMAT, "pickle: memo put on an empty stack at offset %zu",
                         off);
    if (key >= KILN_PICKLE_MAX_MEMO)
        return kiln_fail(KILN_ERR_LIMIT, "pickle: memo key %llu at offset %zu exceeds %u",
                         (unsigned long long)key, off, KILN_PICKLE_MAX_MEMO);
    if (key >= vm->capmemo) {
        uint64_t cap = vm->capmemo ? vm->capmemo : 256;
        while (cap <= key) cap *= 2;
        if (cap > KILN_PICKLE_MAX_MEMO) cap = KILN_PICKLE_MAX_MEMO;
        uint32_t *m = realloc(vm->memo, (size_t)cap * sizeof *m);
        if (!m) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
        for (uint64_t i = vm->capmemo; i < cap; i++) m[i] = NO_OBJ;
        vm->memo = m;
        vm->capmemo = (uint32_t)cap;
    }
    vm->memo[key] = vm->stack[vm->sp - 1];
    if (key >= vm->nmemo) vm->nmemo = (uint32_t)key + 1;
    return KILN_OK;
}

static kiln_status memo_get(kiln__pickle *vm, uint64_t key, size_t off)
{
    if (key >= vm->capmemo || vm->memo[key] == NO_OBJ)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: memo key %llu at offset %zu is unset",
                         (unsigned long long)key, off);
    return push(vm, vm->memo[key]);
}

/* ---- globals -------------------------------------------------------------- */

static const struct {
    const char *module, *name;
    kiln__pglobal g;
} ALLOWED[] = {
    { "collections", "OrderedDict", KILN__G_ORDERED_DICT },
    { "torch._utils", "_rebuild_tensor_v2", KILN__G_REBUILD_TENSOR_V2 },
    { "torch._utils", "_rebuild_parameter", KILN__G_REBUILD_PARAMETER },
    { "torch", "FloatStorage", KILN__G_FLOAT_STORAGE },
    { "torch", "HalfStorage", KILN__G_HALF_STORAGE },
    { "torch", "BFloat16Storage", KILN__G_BFLOAT16_STORAGE },
};

static int str_is(const uint8_t *p, size_t n, const char *s)
{
    return strlen(s) == n && memcmp(p, s, n) == 0;
}

/* Copy at most 80 bytes of untrusted text into a message, '?' for anything
 * that is not printable ASCII. */
static const char *printable(const uint8_t *p, size_t n, char out[84])
{
    size_t k = n > 80 ? 80 : n;
    for (size_t i = 0; i < k; i++) out[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    if (n > k) { out[k++] = '.'; out[k++] = '.'; }
    out[k] = '\0';
    return out;
}

static kiln_status push_global(kiln__pickle *vm, const uint8_t *mod, size_t modn,
                               const uint8_t *name, size_t namen)
{
    for (size_t i = 0; i < sizeof ALLOWED / sizeof ALLOWED[0]; i++) {
        if (str_is(mod, modn, ALLOWED[i].module) && str_is(name, namen, ALLOWED[i].name)) {
            kiln__pval *v;
            kiln_status st = push_new(vm, KILN__P_GLOBAL, &v);
            if (st) return st;
            v->u.global = ALLOWED[i].g;
            return KILN_OK;
        }
    }
    char a[84], b[84];
    return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: global %s.%s is not allowed",
                     printable(mod, modn, a), printable(name, namen, b));
}

/* ---- REDUCE / BINPERSID ------------------------------------------------- */

static const kiln__pval *item(const kiln__pickle *vm, const kiln__pval *seq, uint32_t i)
{
    return &vm->obj[seq->u.seq.items[i]];
}

static kiln_status int_tuple(const kiln__pickle *vm, const kiln__pval *t, const char *what,
                             int64_t *out, int *n)
{
    if (t->kind != KILN__P_TUPLE)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor %s is a %s, expected a tuple",
                         what, kind_name(t->kind));
    if (t->u.seq.n > KILN_MAX_DIMS)
        return kiln_fail(KILN_ERR_LIMIT, "pickle: tensor %s has %u dims (max %d)", what,
                         t->u.seq.n, KILN_MAX_DIMS);
    for (uint32_t i = 0; i < t->u.seq.n; i++) {
        const kiln__pval *e = item(vm, t, i);
        if (e->kind != KILN__P_INT || e->u.i < 0)
            return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor %s[%u] is not a "
                             "non-negative int", what, i);
        out[i] = e->u.i;
    }
    *n = (int)t->u.seq.n;
    return KILN_OK;
}

/* A view must name each storage element at most once: a stride of 0 on a
 * dimension longer than 1, or strides whose dimensions interleave, would let
 * a few bytes of storage decode into an unbounded tensor. Sorted by stride,
 * every dimension must step past everything the smaller ones reach (the
 * layouts torch.save writes, contiguous or permuted, all pass). */
static kiln_status view_is_one_to_one(const int64_t *shape, const int64_t *stride, int nd)
{
    int ord[KILN_MAX_DIMS], n = 0;
    for (int d = 0; d < nd; d++) {
        if (shape[d] <= 1) continue;
        if (stride[d] <= 0)
            return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor stride dim %d is %lld for a "
                             "size of %lld (a view that repeats storage elements)", d,
                             (long long)stride[d], (long long)shape[d]);
        int k = n++;
        while (k > 0 && stride[ord[k - 1]] > stride[d]) { ord[k] = ord[k - 1]; k--; }
        ord[k] = d;
    }
    uint64_t reach = 0; /* largest element offset the smaller dims reach */
    for (int k = 0; k < n; k++) {
        int d = ord[k];
        if ((uint64_t)stride[d] <= reach)
            return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor stride dim %d (%lld) overlaps "
                             "the smaller dims (a view that repeats storage elements)", d,
                             (long long)stride[d]);
        reach += (uint64_t)(shape[d] - 1) * (uint64_t)stride[d]; /* bounded by the caller */
    }
    return KILN_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]): check the view lies inside its storage. */
static kiln_status rebuild_tensor(kiln__pickle *vm, uint32_t args)
{
    const kiln__pval *a = &vm->obj[args];
    if (a->u.seq.n != 6 && a->u.seq.n != 7)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: _rebuild_tensor_v2 takes 6 or 7 "
                         "arguments, got %u", a->u.seq.n);
    uint32_t sidx = a->u.seq.items[0];
    const kiln__pval *s = &vm->obj[sidx], *off = item(vm, a, 1);
    if (s->kind != KILN__P_STORAGE)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: _rebuild_tensor_v2 storage argument is "
                         "a %s", kind_name(s->kind));
    if (off->kind != KILN__P_INT || off->u.i < 0)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor storage offset is not a "
                         "non-negative int");
    int64_t shape[KILN_MAX_DIMS], stride[KILN_MAX_DIMS];
    int nd, nds;
    kiln_status st;
    if ((st = int_tuple(vm, item(vm, a, 2), "size", shape, &nd))) return st;
    if ((st = int_tuple(vm, item(vm, a, 3), "stride", stride, &nds))) return st;
    if (nd != nds)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor size has %d dims but stride %d",
                         nd, nds);
    uint64_t numel = 1, last = (uint64_t)off->u.i;
    for (int d = 0; d < nd; d++)
        if (__builtin_mul_overflow(numel, (uint64_t)shape[d], &numel) ||
            numel > KILN_WEIGHTS_MAX_BYTES / sizeof(float))
            return kiln_fail(KILN_ERR_LIMIT, "pickle: tensor size dim %d (%lld) makes it "
                             "exceed %zu bytes", d, (long long)shape[d],
                             KILN_WEIGHTS_MAX_BYTES);
    if (numel > 0) {
        for (int d = 0; d < nd; d++) {
            uint64_t span;
            if (__builtin_mul_overflow((uint64_t)(shape[d] - 1), (uint64_t)stride[d], &span) ||
                __builtin_add_overflow(last, span, &last))
                return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor stride dim %d (%lld) "
                                 "overflows", d, (long long)stride[d]);
        }
        if (last >= (uint64_t)s->u.storage.numel)
            return kiln_fail(KILN_ERR_FORMAT, "pickle: tensor view (offset %lld) reaches "
                             "element %llu of a storage of %lld elements",
                             (long long)off->u.i, (unsigned long long)last,
                             (long long)s->u.storage.numel);
    }
    if ((st = view_is_one_to_one(shape, stride, nd))) return st;
    kiln__pval *t;
    if ((st = push_new(vm, KILN__P_TENSOR, &t))) return st;
    t->u.tensor.storage = sidx;
    t->u.tensor.offset = vm->obj[vm->obj[args].u.seq.items[1]].u.i;
    t->u.tensor.ndim = nd;
    memcpy(t->u.tensor.shape, shape, sizeof shape);
    memcpy(t->u.tensor.stride, stride, sizeof stride);
    return KILN_OK;
}

static kiln_status reduce(kiln__pickle *vm, size_t off)
{
    if (vm->sp < frame_floor(vm) + 2)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: REDUCE at offset %zu needs 2 stack "
                         "items", off);
    uint32_t args = vm->stack[--vm->sp], fn = vm->stack[--vm->sp];
    const kiln__pval *f = &vm->obj[fn], *a = &vm->obj[args];
    if (f->kind != KILN__P_GLOBAL)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: REDUCE at offset %zu calls a %s", off,
                         kind_name(f->kind));
    if (a->kind != KILN__P_TUPLE)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: REDUCE at offset %zu with %s arguments",
                         off, kind_name(a->kind));
    switch ((kiln__pglobal)f->u.global) {
    case KILN__G_ORDERED_DICT: {
        if (a->u.seq.n != 0)
            return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: OrderedDict called with %u "
                             "arguments at offset %zu", a->u.seq.n, off);
        kiln__pval *d;
        return push_new(vm, KILN__P_DICT, &d);
    }
    case KILN__G_REBUILD_TENSOR_V2:
        return rebuild_tensor(vm, args);
    case KILN__G_REBUILD_PARAMETER:
        if (a->u.seq.n < 1 || item(vm, a, 0)->kind != KILN__P_TENSOR)
            return kiln_fail(KILN_ERR_FORMAT, "pickle: _rebuild_parameter at offset %zu "
                             "without a tensor", off);
        /* A Parameter is its tensor; requires_grad and hooks do not matter here. */
        return push(vm, a->u.seq.items[0]);
    default:
        return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: calling a storage class at offset "
                         "%zu is not supported", off);
    }
}

/* Persistent id ('storage', <StorageClass>, key, location, numel[, None]). */
static kiln_status persistent_load(kiln__pickle *vm, size_t off)
{
    if (vm->sp <= frame_floor(vm))
        return kiln_fail(KILN_ERR_FORMAT, "pickle: BINPERSID at offset %zu on an empty "
                         "stack", off);
    const kiln__pval *pid = &vm->obj[vm->stack[--vm->sp]];
    if (pid->kind != KILN__P_TUPLE || (pid->u.seq.n != 5 && pid->u.seq.n != 6))
        return kiln_fail(KILN_ERR_FORMAT, "pickle: persistent id at offset %zu is not a "
                         "5- or 6-tuple", off);
    const kiln__pval *tag = item(vm, pid, 0), *cls = item(vm, pid, 1),
                     *key = item(vm, pid, 2), *numel = item(vm, pid, 4);
    if (tag->kind != KILN__P_STR || !str_is(tag->u.s.p, tag->u.s.n, "storage"))
        return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: persistent id at offset %zu is not "
                         "a 'storage' reference", off);
    if (cls->kind != KILN__P_GLOBAL || cls->u.global < KILN__G_FLOAT_STORAGE)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: persistent id at offset %zu has no "
                         "storage class", off);
    if (key->kind != KILN__P_STR || key->u.s.n == 0)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: storage key at offset %zu is not a "
                         "non-empty str", off);
    if (numel->kind != KILN__P_INT || numel->u.i < 0)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: storage size at offset %zu is not a "
                         "non-negative int", off);
    if (pid->u.seq.n == 6 && item(vm, pid, 5)->kind != KILN__P_NONE)
        return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: storage views (legacy view "
                         "metadata) at offset %zu are not supported", off);
    kiln_dtype dt = cls->u.global == KILN__G_FLOAT_STORAGE  ? KILN_DTYPE_F32
                    : cls->u.global == KILN__G_HALF_STORAGE ? KILN_DTYPE_F16
                                                            : KILN_DTYPE_BF16;
    if ((uint64_t)numel->u.i > KILN_WEIGHTS_MAX_BYTES / kiln__dtype_size(dt))
        return kiln_fail(KILN_ERR_LIMIT, "pickle: storage of %lld elements exceeds %zu "
                         "bytes", (long long)numel->u.i, KILN_WEIGHTS_MAX_BYTES);
    const uint8_t *kp = key->u.s.p;
    size_t kn = key->u.s.n;
    int64_t n = numel->u.i;
    kiln__pval *s;
    kiln_status st = push_new(vm, KILN__P_STORAGE, &s);
    if (st) return st;
    s->u.storage.dtype = dt;
    s->u.storage.key = kp;
    s->u.storage.key_len = kn;
    s->u.storage.numel = n;
    return KILN_OK;
}

/* ---- the interpreter loop ------------------------------------------------- */

/* Pop everything above the innermost mark into a new TUPLE/LIST-like seq. */
static kiln_status pop_mark(kiln__pickle *vm, size_t off, uint32_t *base)
{
    if (!vm->nmarks)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: no MARK for the opcode at offset %zu",
                         off);
    *base = vm->marks[--vm->nmarks];
    return KILN_OK;
}

static kiln_status make_tuple(kiln__pickle *vm, uint32_t base)
{
    uint32_t idx;
    kiln_status st = new_obj(vm, KILN__P_TUPLE, &idx);
    if (st) return st;
    uint32_t n = vm->sp - base;
    if (n) {
        uint32_t *it = malloc((size_t)n * sizeof *it);
        if (!it) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
        memcpy(it, vm->stack + base, (size_t)n * sizeof *it);
        vm->obj[idx].u.seq.items = it;
        vm->obj[idx].u.seq.n = vm->obj[idx].u.seq.cap = n;
    }
    vm->sp = base;
    return push(vm, idx);
}

#define NEED(k)                                                                      \
    do {                                                                             \
        if (len - pos < (size_t)(k))                                                 \
            return kiln_fail(KILN_ERR_FORMAT, "pickle: opcode 0x%02x at offset %zu " \
                             "truncated (needs %zu bytes, %zu left)", op, off,       \
                             (size_t)(k), len - pos);                                \
    } while (0)

#define NEED_STACK(k)                                                                \
    do {                                                                             \
        if (vm->sp < frame_floor(vm) + (k))                                          \
            return kiln_fail(KILN_ERR_FORMAT, "pickle: opcode 0x%02x at offset %zu " \
                             "needs %d stack items", op, off, (int)(k));             \
    } while (0)

static kiln_status run(kiln__pickle *vm, const uint8_t *buf, size_t len, size_t *consumed,
                       uint32_t *root)
{
    size_t pos = 0;
    kiln_status st;
    while (pos < len) {
        size_t off = pos;
        uint8_t op = buf[pos++];
        kiln__pval *v;
        switch (op) {
        case 0x80: /* PROTO */
            NEED(1);
            if (buf[pos] < 2 || buf[pos] > 5)
                return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: protocol %u at offset %zu "
                                 "(only 2..5)", buf[pos], off);
            pos++;
            break;
        case 0x95: /* FRAME: a length hint only */
            NEED(8);
            if (kiln__rd_u64le(buf + pos) > len - pos - 8)
                return kiln_fail(KILN_ERR_FORMAT, "pickle: FRAME at offset %zu longer than "
                                 "the data", off);
            pos += 8;
            break;
        case '.': /* STOP */
            NEED_STACK(1);
            *root = vm->stack[vm->sp - 1];
            *consumed = pos;
            return KILN_OK;
        case 'N':
            if ((st = push_new(vm, KILN__P_NONE, &v))) return st;
            break;
        case 0x88: case 0x89: /* NEWTRUE, NEWFALSE */
            if ((st = push_new(vm, KILN__P_BOOL, &v))) return st;
            v->u.i = op == 0x88;
            break;
        case 'J': /* BININT */
            NEED(4);
            if ((st = push_new(vm, KILN__P_INT, &v))) return st;
            v->u.i = (int32_t)kiln__rd_u32le(buf + pos);
            pos += 4;
            break;
        case 'K': /* BININT1 */
            NEED(1);
            if ((st = push_new(vm, KILN__P_INT, &v))) return st;
            v->u.i = buf[pos++];
            break;
        case 'M': /* BININT2 */
            NEED(2);
            if ((st = push_new(vm, KILN__P_INT, &v))) return st;
            v->u.i = buf[pos] | buf[pos + 1] << 8;
            pos += 2;
            break;
        case 0x8a: { /* LONG1: n-byte two's complement, little endian */
            NEED(1);
            size_t n = buf[pos++];
            NEED(n);
            if (n <= 8) {
                if ((st = push_new(vm, KILN__P_INT, &v))) return st;
                uint64_t u = 0;
                for (size_t i = 0; i < n; i++) u |= (uint64_t)buf[pos + i] << (8 * i);
                if (n > 0 && n < 8 && (buf[pos + n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
                memcpy(&v->u.i, &u, sizeof u);
            } else {
                if ((st = push_new(vm, KILN__P_BIGINT, &v))) return st;
                v->u.s.p = buf + pos;
                v->u.s.n = n;
            }
            pos += n;
            break;
        }
        case 'G': { /* BINFLOAT: big-endian double */
            NEED(8);
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = (u << 8) | buf[pos + i];
            if ((st = push_new(vm, KILN__P_FLOAT, &v))) return st;
            memcpy(&v->u.f, &u, sizeof u);
            pos += 8;
            break;
        }
        case 'X': case 0x8c: case 0x8d: /* BINUNICODE, SHORT_BINUNICODE, BINUNICODE8 */
        case 'B': case 'C': case 0x8e: { /* BINBYTES, SHORT_BINBYTES, BINBYTES8 */
            size_t w = (op == 0x8c || op == 'C') ? 1 : (op == 'X' || op == 'B') ? 4 : 8;
            NEED(w);
            uint64_t n = w == 1 ? buf[pos] : w == 4 ? kiln__rd_u32le(buf + pos)
                                                     : kiln__rd_u64le(buf + pos);
            pos += w;
            if (n > KILN_PICKLE_MAX_STRING)
                return kiln_fail(KILN_ERR_LIMIT, "pickle: string of %llu bytes at offset "
                                 "%zu exceeds %zu", (unsigned long long)n, off,
                                 KILN_PICKLE_MAX_STRING);
            NEED(n);
            int is_str = op == 'X' || op == 0x8c || op == 0x8d;
            if ((st = push_new(vm, is_str ? KILN__P_STR : KILN__P_BYTES, &v))) return st;
            v->u.s.p = buf + pos;
            v->u.s.n = (size_t)n;
            pos += (size_t)n;
            break;
        }
        case ')':
            if ((st = make_tuple(vm, vm->sp))) return st;
            break;
        case 0x85: case 0x86: case 0x87: /* TUPLE1..3 */
            NEED_STACK(op - 0x84);
            if ((st = make_tuple(vm, vm->sp - (op - 0x84)))) return st;
            break;
        case 't': {
            uint32_t base = 0;
            if ((st = pop_mark(vm, off, &base))) return st;
            if ((st = make_tuple(vm, base))) return st;
            break;
        }
        case ']':
            if ((st = push_new(vm, KILN__P_LIST, &v))) return st;
            break;
        case '}':
            if ((st = push_new(vm, KILN__P_DICT, &v))) return st;
            break;
        case 'a': case 'e': { /* APPEND, APPENDS */
            uint32_t base = 0;
            if (op == 'a') {
                NEED_STACK(2);
                base = vm->sp - 1;
            } else if ((st = pop_mark(vm, off, &base))) {
                return st;
            }
            if (base < frame_floor(vm) + 1)
                return kiln_fail(KILN_ERR_FORMAT, "pickle: APPEND(S) at offset %zu without "
                                 "a list", off);
            uint32_t list = vm->stack[base - 1];
            if (vm->obj[list].kind != KILN__P_LIST)
                return kiln_fail(KILN_ERR_FORMAT, "pickle: APPEND(S) at offset %zu to a %s",
                                 off, kind_name(vm->obj[list].kind));
            for (uint32_t i = base; i < vm->sp; i++)
                if ((st = seq_append(vm, list, vm->stack[i]))) return st;
            vm->sp = base;
            break;
        }
        case 's': case 'u': { /* SETITEM, SETITEMS */
            uint32_t base = 0;
            if (op == 's') {
                NEED_STACK(3);
                base = vm->sp - 2;
            } else if ((st = pop_mark(vm, off, &base))) {
                return st;
            }
            if (base < frame_floor(vm) + 1 || (vm->sp - base) % 2)
                return kiln_fail(KILN_ERR_FORMAT, "pickle: SETITEM(S) at offset %zu without "
                                 "a dict or with an odd number of items", off);
            uint32_t dict = vm->stack[base - 1];
            if (vm->obj[dict].kind != KILN__P_DICT)
                return kiln_fail(KILN_ERR_FORMAT, "pickle: SETITEM(S) at offset %zu on a %s",
                                 off, kind_name(vm->obj[dict].kind));
            for (uint32_t i = base; i < vm->sp; i++)
                if ((st = seq_append(vm, dict, vm->stack[i]))) return st;
            vm->sp = base;
            break;
        }
        case '(': /* MARK */
            if (vm->nmarks >= KILN_PICKLE_MAX_MARKS)
                return kiln_fail(KILN_ERR_LIMIT, "pickle: MARKs nested deeper than %u at "
                                 "offset %zu", KILN_PICKLE_MAX_MARKS, off);
            vm->marks[vm->nmarks++] = vm->sp;
            break;
        case '0': /* POP */
            NEED_STACK(1);
            vm->sp--;
            break;
        case '1': { /* POP_MARK */
            uint32_t base = 0;
            if ((st = pop_mark(vm, off, &base))) return st;
            vm->sp = base;
            break;
        }
        case '2': /* DUP */
            NEED_STACK(1);
            if ((st = push(vm, vm->stack[vm->sp - 1]))) return st;
            break;
        case 'q': /* BINPUT */
            NEED(1);
            if ((st = memo_put(vm, buf[pos++], off))) return st;
            break;
        case 'r': /* LONG_BINPUT */
            NEED(4);
            if ((st = memo_put(vm, kiln__rd_u32le(buf + pos), off))) return st;
            pos += 4;
            break;
        case 0x94: /* MEMOIZE */
            if ((st = memo_put(vm, vm->nmemo, off))) return st;
            break;
        case 'h': /* BINGET */
            NEED(1);
            if ((st = memo_get(vm, buf[pos++], off))) return st;
            break;
        case 'j': /* LONG_BINGET */
            NEED(4);
            if ((st = memo_get(vm, kiln__rd_u32le(buf + pos), off))) return st;
            pos += 4;
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            const uint8_t *mod = buf + pos, *nl1, *nl2;
            size_t lim = len - pos < 512 ? len - pos : 512;
            if (!(nl1 = memchr(mod, '\n', lim)))
                return kiln_fail(KILN_ERR_FORMAT, "pickle: GLOBAL at offset %zu without a "
                                 "module line", off);
            const uint8_t *name = nl1 + 1;
            size_t rest = len - (size_t)(name - buf);
            if (!(nl2 = memchr(name, '\n', rest < 512 ? rest : 512)))
                return kiln_fail(KILN_ERR_FORMAT, "pickle: GLOBAL at offset %zu without a "
                                 "name line", off);
            pos = (size_t)(nl2 + 1 - buf);
            if ((st = push_global(vm, mod, (size_t)(nl1 - mod), name, (size_t)(nl2 - name))))
                return st;
            break;
        }
        case 0x93: { /* STACK_GLOBAL */
            NEED_STACK(2);
            const kiln__pval *name = &vm->obj[vm->stack[vm->sp - 1]],
                             *mod = &vm->obj[vm->stack[vm->sp - 2]];
            if (name->kind != KILN__P_STR || mod->kind != KILN__P_STR)
                return kiln_fail(KILN_ERR_FORMAT, "pickle: STACK_GLOBAL at offset %zu needs "
                                 "two str", off);
            vm->sp -= 2;
            if ((st = push_global(vm, mod->u.s.p, mod->u.s.n, name->u.s.p, name->u.s.n)))
                return st;
            break;
        }
        case 'R':
            if ((st = reduce(vm, off))) return st;
            break;
        case 'b': { /* BUILD: set attributes; only a dict's (_metadata) is accepted */
            NEED_STACK(2);
            uint32_t target = vm->stack[vm->sp - 2];
            if (vm->obj[target].kind != KILN__P_DICT)
                return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: BUILD at offset %zu on a "
                                 "%s", off, kind_name(vm->obj[target].kind));
            vm->sp--; /* the state (e.g. {'_metadata': ...}) does not matter to kiln */
            break;
        }
        case 'Q':
            if ((st = persistent_load(vm, off))) return st;
            break;
        default: {
            char c = (op >= 0x20 && op < 0x7f) ? (char)op : '?';
            return kiln_fail(KILN_ERR_UNSUPPORTED, "pickle: opcode 0x%02x ('%c') at offset "
                             "%zu is not supported", op, c, off);
        }
        }
    }
    return kiln_fail(KILN_ERR_FORMAT, "pickle: truncated: no STOP opcode before the end of "
                     "the data (%zu bytes)", len);
}

kiln_status kiln__pickle_run(const uint8_t *buf, size_t len, kiln__pickle **out,
                             size_t *consumed, const kiln__pval **root)
{
    *out = NULL;
    kiln__pickle *vm = calloc(1, sizeof *vm);
    if (!vm) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
    uint32_t r = NO_OBJ;
    size_t used = 0;
    kiln_status st = run(vm, buf, len, &used, &r);
    if (st) {
        kiln__pickle_destroy(vm);
        return st;
    }
    *out = vm;
    *consumed = used;
    *root = &vm->obj[r];
    return KILN_OK;
}

/* ---- state dict collection ------------------------------------------------ */

static const kiln__pval *dict_get(const kiln__pickle *vm, const kiln__pval *d,
                                  const char *key)
{
    for (uint32_t i = 0; i + 1 < d->u.seq.n; i += 2) {
        const kiln__pval *k = item(vm, d, i);
        if (k->kind == KILN__P_STR && str_is(k->u.s.p, k->u.s.n, key))
            return item(vm, d, i + 1);
    }
    return NULL;
}

/* Copy a (possibly strided) view out of its storage as contiguous float32. */
static void gather(const kiln__pval *t, kiln_dtype dt, const uint8_t *data, size_t numel,
                   float *dst)
{
    size_t es = kiln__dtype_size(dt);
    int nd = t->u.tensor.ndim;
    int contiguous = 1;
    int64_t expect = 1;
    for (int d = nd - 1; d >= 0; d--) {
        if (t->u.tensor.shape[d] != 1 && t->u.tensor.stride[d] != expect) contiguous = 0;
        expect *= t->u.tensor.shape[d];
    }
    if (contiguous) {
        kiln__convert_to_f32(dt, data + (size_t)t->u.tensor.offset * es, numel, dst);
        return;
    }
    /* Odometer over the index space; sizes are padded to 4 dims with 1s. */
    int64_t shape[KILN_MAX_DIMS] = { 1, 1, 1, 1 }, stride[KILN_MAX_DIMS] = { 0, 0, 0, 0 };
    for (int d = 0; d < nd; d++) {
        shape[KILN_MAX_DIMS - nd + d] = t->u.tensor.shape[d];
        stride[KILN_MAX_DIMS - nd + d] = t->u.tensor.stride[d];
    }
    size_t k = 0;
    for (int64_t a = 0; a < shape[0]; a++)
        for (int64_t b = 0; b < shape[1]; b++)
            for (int64_t c = 0; c < shape[2]; c++)
                for (int64_t e = 0; e < shape[3]; e++) {
                    int64_t at = t->u.tensor.offset + a * stride[0] + b * stride[1] +
                                 c * stride[2] + e * stride[3];
                    kiln__convert_to_f32(dt, data + (size_t)at * es, 1, &dst[k++]);
                }
}

/* Storages are named by their key: two persistent ids with one key are one
 * storage (each reference builds its own object). */
static int storage_key_cmp(const kiln__pval *a, const kiln__pval *b)
{
    size_t an = a->u.storage.key_len, bn = b->u.storage.key_len;
    int r = memcmp(a->u.storage.key, b->u.storage.key, an < bn ? an : bn);
    return r ? r : (an > bn) - (an < bn);
}

typedef struct view_ref {
    const kiln__pval *t, *s; /* the tensor and its storage */
    uint64_t first, last; /* element range the view spans */
} view_ref;

/* Same offset, shape and strides (the storage is compared by the caller). */
static int same_view(const kiln__pval *a, const kiln__pval *b)
{
    if (a->u.tensor.offset != b->u.tensor.offset ||
        a->u.tensor.ndim != b->u.tensor.ndim)
        return 0;
    for (int d = 0; d < a->u.tensor.ndim; d++)
        if (a->u.tensor.shape[d] != b->u.tensor.shape[d] ||
            a->u.tensor.stride[d] != b->u.tensor.stride[d])
            return 0;
    return 1;
}

static int view_cmp(const void *x, const void *y)
{
    const view_ref *a = x, *b = y;
    int r = storage_key_cmp(a->s, b->s);
    if (r) return r;
    return a->first < b->first ? -1 : a->first > b->first;
}

/* Several tensors on one storage: the same view under several names is kept
 * (tied weights, such as CARN-M's shared blocks, are saved that way; the
 * decoded-size budget of kiln__weights_reserve bounds how often a file may
 * repeat it); different views must span disjoint element ranges, so together
 * they never decode more elements than the storage holds. */
static kiln_status storages_one_to_one(const kiln__pickle *vm, const kiln__pval *sd)
{
    uint32_t n = 0;
    view_ref *v = malloc((sd->u.seq.n / 2 + 1) * sizeof *v);
    if (!v) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
    for (uint32_t i = 0; i + 1 < sd->u.seq.n; i += 2) {
        const kiln__pval *t = item(vm, sd, i + 1);
        if (t->kind != KILN__P_TENSOR) continue;
        uint64_t last = (uint64_t)t->u.tensor.offset, numel = 1;
        for (int d = 0; d < t->u.tensor.ndim; d++) {
            numel *= (uint64_t)t->u.tensor.shape[d];
            if (t->u.tensor.shape[d] > 0)
                last += (uint64_t)(t->u.tensor.shape[d] - 1) * (uint64_t)t->u.tensor.stride[d];
        }
        if (numel == 0) continue; /* an empty view touches nothing */
        v[n++] = (view_ref){ t, &vm->obj[t->u.tensor.storage], (uint64_t)t->u.tensor.offset,
                             last };
    }
    qsort(v, n, sizeof *v, view_cmp);
    kiln_status st = KILN_OK;
    uint64_t end = 0; /* the furthest element the storage's ranges so far reach */
    for (uint32_t i = 0; i < n && !st; i++) {
        const view_ref *p = i ? &v[i - 1] : NULL, *c = &v[i];
        if (!p || storage_key_cmp(p->s, c->s) != 0) {
            end = c->last;
            continue;
        }
        if (same_view(p->t, c->t)) continue;
        if (c->first <= end)
            st = kiln_fail(KILN_ERR_FORMAT, "pickle: two different tensor views of one storage "
                           "overlap (elements %llu..%llu and %llu..%llu)",
                           (unsigned long long)p->first, (unsigned long long)p->last,
                           (unsigned long long)c->first, (unsigned long long)c->last);
        if (c->last > end) end = c->last;
    }
    free(v);
    return st;
}

typedef struct collect_item {
    const kiln__pval *storage;
    uint32_t key, tensor; /* object indices */
    uint32_t pos;                  /* order in the state dict */
    float *data;
} collect_item;

static int item_storage_cmp(const void *x, const void *y)
{
    const collect_item *a = x, *b = y;
    int r = storage_key_cmp(a->storage, b->storage);
    if (r) return r;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

static int item_pos_cmp(const void *x, const void *y)
{
    const collect_item *a = x, *b = y;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

kiln_status kiln__pickle_collect(const kiln__pickle *vm, const kiln__pval *root,
                                 kiln__storage_fn fn, void *ctx, kiln_weights *w)
{
    if (root->kind != KILN__P_DICT)
        return kiln_fail(KILN_ERR_FORMAT, "pickle: top-level object is a %s, expected a "
                         "state dict", kind_name(root->kind));
    const kiln__pval *sd = root, *sub;
    if ((sub = dict_get(vm, root, "state_dict")) && sub->kind == KILN__P_DICT)
        sd = sub;
    else if ((sub = dict_get(vm, root, "model")) && sub->kind == KILN__P_DICT)
        sd = sub;
    kiln_status st = storages_one_to_one(vm, sd);
    if (st) return st;
    collect_item *it = calloc(sd->u.seq.n / 2 + 1, sizeof *it);
    if (!it) return kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory");
    uint32_t n = 0;
    for (uint32_t i = 0; i + 1 < sd->u.seq.n; i += 2) {
        const kiln__pval *k = item(vm, sd, i), *t = item(vm, sd, i + 1);
        if (t->kind != KILN__P_TENSOR) continue; /* only tensors are weights */
        if (k->kind != KILN__P_STR) {
            st = kiln_fail(KILN_ERR_FORMAT, "pickle: state dict key %u is a %s, expected "
                           "a str", i / 2, kind_name(k->kind));
            goto done;
        }
        it[n] = (collect_item){ &vm->obj[t->u.tensor.storage], sd->u.seq.items[i],
                                sd->u.seq.items[i + 1], n, NULL };
        n++;
    }
    /* Decode grouped by storage, so the format reads each storage once (a zip
     * entry is inflated once however many views it has), then add the
     * tensors in the state dict's order. */
    qsort(it, n, sizeof *it, item_storage_cmp);
    for (uint32_t j = 0; j < n; j++) {
        const kiln__pval *k = &vm->obj[it[j].key], *t = &vm->obj[it[j].tensor];
        const kiln__pval *s = &vm->obj[t->u.tensor.storage];
        size_t numel = 1;
        for (int d = 0; d < t->u.tensor.ndim; d++) numel *= (size_t)t->u.tensor.shape[d];
        const uint8_t *data = NULL;
        if ((st = kiln__weights_reserve(w, numel * sizeof(float))) ||
            (numel > 0 && (st = fn(ctx, s, &data)))) {
            char nm[84];
            kiln_errmsg_prefix("tensor '%s': ", printable(k->u.s.p, k->u.s.n, nm));
            goto done;
        }
        float *f = malloc((numel ? numel : 1) * sizeof *f);
        if (!f) {
            st = kiln_fail(KILN_ERR_NOMEM, "pickle: out of memory for %zu floats", numel);
            goto done;
        }
        if (numel) gather(t, s->u.storage.dtype, data, numel, f);
        it[j].data = f;
    }
    qsort(it, n, sizeof *it, item_pos_cmp);
    for (uint32_t j = 0; j < n; j++) {
        const kiln__pval *k = &vm->obj[it[j].key], *t = &vm->obj[it[j].tensor];
        const kiln__pval *s = &vm->obj[t->u.tensor.storage];
        float *f = it[j].data;
        it[j].data = NULL; /* owned by w from here, even on failure */
        if ((st = kiln__weights_put(w, (const char *)k->u.s.p, k->u.s.n, t->u.tensor.ndim,
                                    t->u.tensor.shape, f, s->u.storage.dtype)))
            goto done;
    }
done:
    for (uint32_t j = 0; j < n; j++) free(it[j].data);
    free(it);
    return st;
}

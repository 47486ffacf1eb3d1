/*
 * bench_int8.c — EDSR-baseline x2 forward pass: the INT8 engine (int8.h)
 * against kiln's FP32 forward, on the first B100 LR image (101085x2.png,
 * 240x160 -> 480x320).
 *
 * The artifact is made here (preset w8a8, calibrated on 1 image: speed does
 * not depend on the calibration; the PSNR printed is only a sanity check).
 * Each figure is the median of RUNS timed runs after one warm-up (best run
 * shown too) plus the median CPU time of the process, all threads summed
 * (on a shared, loaded machine the CPU time is the steadier figure: wall
 * time with T idle cores is about cpu / T). GOP/s counts 2 ops per multiply-accumulate. INT8 kernels:
 * AVX2, AVX-VNNI and AMX (optional, when the CPU has them; AUTO runs the
 * fastest available) and the
 * scalar reference (one run, skipped with KILN_BENCH_QUICK=1).
 *
 * usage: bench_int8 [runs]     (threads: KILN_THREADS, default 2;
 *                               data: KILN_DATA, default ../shared/data;
 *                               KILN_BENCH_INT8=amx|avxvnni|avx2|reference
 *                               times that family only)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compress.h"
#include "dataset.h"
#include "eval.h"
#include "int8.h"
#include "quant.h"
#include "metrics.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int fail(const char *what, kiln_status st)
{
    fprintf(stderr, "bench_int8: %s: %s: %s\n", what, kiln_status_str(st), kiln_errmsg());
    return 1;
}

typedef struct timing {
    double median, best; /* wall seconds                                  */
    double cpu;          /* median CPU seconds of the process (all threads) */
} timing;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static timing time_runs(int runs, kiln_status (*fn)(void *), void *ctx, kiln_status *st)
{
    double *t = calloc((size_t)runs, sizeof *t), *c = calloc((size_t)runs, sizeof *c);
    timing r = {0, 0, 0};
    *st = fn(ctx); /* warm-up: buffers, caches */
    for (int i = 0; *st == KILN_OK && i < runs; i++) {
        double t0 = kiln_now(), c0 = cpu_now();
        *st = fn(ctx);
        t[i] = kiln_now() - t0;
        c[i] = cpu_now() - c0;
    }
    if (*st == KILN_OK) {
        qsort(t, (size_t)runs, sizeof *t, cmp_d);
        qsort(c, (size_t)runs, sizeof *c, cmp_d);
        r.median = t[runs / 2];
        r.best = t[0];
        r.cpu = c[runs / 2];
    }
    free(t);
    free(c);
    return r;
}

typedef struct ctx {
    kiln_model *m;
    kiln_int8 *e;
    const kiln_image *lr;
    float *sr;
    kiln_pool *pool;
} ctx;

static kiln_status run_fp32(void *p)
{
    ctx *c = p;
    return kiln_model_forward(c->m, c->lr, c->sr, c->pool, NULL);
}

static kiln_status run_int8(void *p)
{
    ctx *c = p;
    return kiln_int8_forward(c->e, c->lr, c->sr, c->pool);
}

/* The artifact every case times: the reference W8A8 recipe calibrated on
 * the first image. Returns non-zero on failure. */
static int w8a8_of(const kiln_model *m, const kiln_dataset *ds, kiln_pool *pool, kiln_artifact **a)
{
    kiln_recipe *rec;
    kiln_status st = kiln_recipe_preset("w8a8", &rec);
    if (st != KILN_OK) return fail("recipe", st);
    kiln_compress_opts co = {.pool = pool};
    st = kiln_compress(m, rec, ds, 0, 1, NULL, &co, a, NULL);
    kiln_recipe_destroy(rec);
    return st != KILN_OK ? fail("compress", st) : 0;
}

/* The zoo networks (CARN x2, CARN-M x2): W8A8 from one calibration image,
 * then FP32 and the INT8 engine AUTO picks, timed the same way as EDSR.
 * Returns non-zero on failure. */
static int zoo_case(const char *data, const char *file, int runs, kiln_pool *pool, const kiln_dataset *ds)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/models/zoo/%s", data, file);
    kiln_model *m;
    kiln_artifact *a;
    kiln_status st;
    if ((st = kiln_model_load(path, NULL, &m)) != KILN_OK) return fail(file, st);
    if (w8a8_of(m, ds, pool, &a)) return 1;
    kiln_image lr = {0}, hr = {0};
    if ((st = kiln_dataset_load(ds, 0, &lr, &hr)) != KILN_OK) return fail("image", st);
    float *sr = malloc((size_t)3 * lr.w * 2 * lr.h * 2 * sizeof *sr);
    ctx c = {m, NULL, &lr, sr, pool};
    timing tf = time_runs(runs, run_fp32, &c, &st);
    if (st != KILN_OK) return fail("fp32 forward", st);
    double flops = kiln_model_flops(m, lr.h, lr.w);
    if ((st = kiln_int8_create(a, KILN_INT8_AUTO, &c.e)) != KILN_OK) return fail("int8 engine", st);
    timing ti = time_runs(runs, run_int8, &c, &st);
    if (st != KILN_OK) return fail("int8 forward", st);
    printf("%-12s %dx%d threads=%d  fp32 median %7.3f s (%6.1f GFLOP/s)  int8 (%s) median %7.3f s  %.2fx fp32\n",
           kiln_model_describe(m), lr.w, lr.h, kiln_pool_threads(pool), tf.median, flops / tf.median * 1e-9,
           kiln_int8_impl_name(kiln_int8_impl_of(c.e)), ti.median, tf.median / ti.median);
    kiln_int8_destroy(c.e);
    free(sr);
    kiln_image_free(&lr);
    kiln_image_free(&hr);
    kiln_artifact_free(a);
    kiln_model_destroy(m);
    return 0;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 5;
    if (runs < 1) runs = 5;
    const char *env = getenv("KILN_THREADS");
    int threads = env ? atoi(env) : 2;
    const char *data = getenv("KILN_DATA") ? getenv("KILN_DATA") : "../shared/data";
    int quick = getenv("KILN_BENCH_QUICK") && strcmp(getenv("KILN_BENCH_QUICK"), "1") == 0;
    const char *only = getenv("KILN_BENCH_INT8"); /* one kernel family: amx, avxvnni, avx2, reference */
    char path[1024];
    kiln_status st;
    kiln_pool *pool;
    kiln_model *m;
    kiln_dataset *ds;
    kiln_artifact *a;
    if ((st = kiln_pool_create(threads, &pool)) != KILN_OK) return fail("pool", st);
    snprintf(path, sizeof path, "%s/models/edsr_r16f64_x2.pt", data);
    if ((st = kiln_model_load(path, NULL, &m)) != KILN_OK) return fail("model", st);
    snprintf(path, sizeof path, "%s/B100", data);
    if ((st = kiln_dataset_open(path, 2, &ds)) != KILN_OK) return fail("dataset", st);
    if (w8a8_of(m, ds, pool, &a)) return 1;
    kiln_image lr = {0}, hr = {0};
    if ((st = kiln_dataset_load(ds, 0, &lr, &hr)) != KILN_OK) return fail("image", st);
    float *sr = malloc((size_t)3 * lr.w * 2 * lr.h * 2 * sizeof *sr);
    ctx c = {m, NULL, &lr, sr, pool};
    double macs = 0;
    kiln_metric_opts mo = {0};
    double psnr = 0;

    timing tf = time_runs(runs, run_fp32, &c, &st);
    if (st != KILN_OK) return fail("fp32 forward", st);
    kiln_metric_score(&mo, sr, lr.w * 2, lr.h * 2, &hr, &psnr);
    double flops = kiln_model_flops(m, lr.h, lr.w);
    printf("edsr x2 %dx%d fp32 (model default) threads=%d  median %7.3f s  %6.1f GFLOP/s  %5.2f images/s  (best %.3f s, cpu %.3f s)  PSNR %.4f dB\n",
           lr.w, lr.h, kiln_pool_threads(pool), tf.median,
           flops / tf.median * 1e-9, 1.0 / tf.median, tf.best, tf.cpu, psnr);

    static const kiln_int8_impl impls[] = {KILN_INT8_AVX2, KILN_INT8_AVXVNNI, KILN_INT8_AVX512VNNI, KILN_INT8_AMX,
                                           KILN_INT8_REFERENCE};
    double med[sizeof impls / sizeof impls[0]] = {0};
    for (size_t q = 0; q < sizeof impls / sizeof impls[0]; q++) {
        kiln_int8_impl impl = impls[q];
        if (impl == KILN_INT8_REFERENCE && quick) break;
        if (only && strcmp(only, kiln_int8_impl_name(impl)) != 0) continue;
        if (impl == KILN_INT8_AVXVNNI && !kiln__cpu_avxvnni()) {
            printf("edsr x2 int8 (avxvnni  ) skipped: this CPU has no AVX-VNNI\n");
            continue;
        }
        if (impl == KILN_INT8_AVX512VNNI && !kiln__cpu_avx512vnni()) {
            printf("edsr x2 int8 (avx512vnni) skipped: this CPU has no AVX-512 VNNI\n");
            continue;
        }
        if (impl == KILN_INT8_AMX && !kiln__cpu_amx()) {
            printf("edsr x2 int8 (amx      ) skipped: this CPU (or OS) offers no AMX-INT8\n");
            continue;
        }
        if ((st = kiln_int8_create(a, impl, &c.e)) != KILN_OK) return fail("int8 engine", st);
        macs = kiln_int8_macs(c.e, lr.h, lr.w);
        int r = impl == KILN_INT8_REFERENCE ? 1 : runs;
        timing ti = time_runs(r, run_int8, &c, &st);
        if (st != KILN_OK) return fail("int8 forward", st);
        kiln_metric_score(&mo, sr, lr.w * 2, lr.h * 2, &hr, &psnr);
        printf("edsr x2 %dx%d int8 (%-9s) threads=%d  median %7.3f s  %6.1f GOP/s    %5.2f images/s  (best %.3f s, cpu %.3f s)  PSNR %.4f dB  speedup vs fp32 %.2fx (cpu %.2fx)\n",
               lr.w, lr.h, kiln_int8_impl_name(kiln_int8_impl_of(c.e)), kiln_pool_threads(pool), ti.median,
               2 * macs / ti.median * 1e-9, 1.0 / ti.median, ti.best, ti.cpu, psnr, tf.median / ti.median,
               tf.cpu / ti.cpu);
        med[q] = ti.median;
        kiln_int8_destroy(c.e);
        c.e = NULL;
    }
    /* the figure users get: the kernels AUTO picks on this CPU */
    if ((st = kiln_int8_create(a, KILN_INT8_AUTO, &c.e)) != KILN_OK) return fail("int8 engine", st);
    kiln_int8_impl autoimpl = kiln_int8_impl_of(c.e);
    kiln_int8_destroy(c.e);
    c.e = NULL;
    for (size_t q = 0; q < sizeof impls / sizeof impls[0]; q++)
        if (impls[q] == autoimpl && med[q] > 0)
            printf("int8 engine default (auto = %s) threads=%d median %.3f s  %.2f images/s  %.2fx kiln fp32\n",
                   kiln_int8_impl_name(autoimpl), kiln_pool_threads(pool), med[q], 1.0 / med[q], tf.median / med[q]);
    free(sr);
    kiln_image_free(&lr);
    kiln_image_free(&hr);
    kiln_artifact_free(a);
    kiln_model_destroy(m);
    int rc = 0;
    if (!only) {
        rc |= zoo_case(data, "carn_x2.pt", runs, pool, ds);
        rc |= zoo_case(data, "carn_m.pth", runs, pool, ds);
    }
    kiln_dataset_close(ds);
    kiln_pool_destroy(pool);
    return rc;
}

/*
 * bench_conv.c — GFLOP/s of the FP32 convolution implementations.
 *
 * Fixed seed and shapes. Default case: EDSR's dominant layer, 3x3 64->64 on a
 * 160x240 map, with 1 and 2 threads, reference vs every SIMD implementation
 * on every instruction set the CPU has (the Winograd kernel with
 * KILN_CONV_ISA=avx2 and =avx512, see conv.h; the isa column names the
 * kernel family that ran);
 * also the other EDSR-baseline x2 layer shapes (head 3->64, upsampler
 * 64->256, tail 64->3, MeanShift 1x1 3->3) with the default implementation.
 * Each figure is the median of RUNS timed runs after one warm-up run (the
 * best run is shown too: on a shared machine it is the steadier figure; with
 * one thread, so is the median over the thread's CPU time).
 *
 * usage: bench_conv [runs]        (KILN_BENCH_QUICK=1: only the main case)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conv.h"

static unsigned seed = 12345u;
static float frand(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 17;
    seed ^= seed << 5;
    return (float)(seed >> 8) / 16777216.0f - 0.5f;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU time of the calling thread: with one thread this is robust to other
 * processes sharing the machine (time spent descheduled is not counted). */
static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int die(const char *what, kiln_status st)
{
    fprintf(stderr, "bench_conv: %s: %s: %s\n", what, kiln_status_str(st), kiln_errmsg());
    exit(1);
}

/* Median seconds of `runs` runs; prints one line. isa: the KILN_CONV_ISA
 * the conv is created under (NULL: the environment as it is). */
static double bench_case(const char *label, int cout, int cin, int k, int h, int w, kiln_impl impl,
                         const char *isa, int threads, int runs, int relu)
{
    const char *env = getenv("KILN_CONV_ISA");
    char saved[64] = "";
    if (env) snprintf(saved, sizeof saved, "%s", env);
    size_t nw = (size_t)cout * cin * k * k;
    float *wt = malloc(nw * sizeof *wt), *bias = malloc((size_t)cout * sizeof *bias);
    for (size_t i = 0; i < nw; i++) wt[i] = frand() * 0.1f;
    for (int i = 0; i < cout; i++) bias[i] = frand();
    kiln_fmap in, out;
    kiln_status st;
    if ((st = kiln_fmap_alloc(&in, cin, h, w))) die("fmap_alloc", st);
    if ((st = kiln_fmap_alloc(&out, cout, h, w))) die("fmap_alloc", st);
    for (int c = 0; c < cin; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) *kiln_fmap_at(&in, c, y, x) = frand();
    kiln_conv *conv;
    if (isa) setenv("KILN_CONV_ISA", isa, 1);
    st = kiln_conv_create(cout, cin, k, wt, bias, impl, &conv);
    if (isa) {
        if (env) setenv("KILN_CONV_ISA", saved, 1);
        else unsetenv("KILN_CONV_ISA");
    }
    if (st) die("conv_create", st);
    kiln_pool *pool;
    if ((st = kiln_pool_create(threads, &pool))) die("pool_create", st);
    kiln_conv_epilogue ep = {.relu = relu};
    double *t = malloc((size_t)runs * sizeof *t), *tc = malloc((size_t)runs * sizeof *tc);
    if ((st = kiln_conv_run(conv, &in, &out, &ep, pool))) die("conv_run", st); /* warm-up */
    for (int r = 0; r < runs; r++) {
        double t0 = now(), c0 = thread_cpu();
        kiln_conv_run(conv, &in, &out, &ep, pool);
        t[r] = now() - t0;
        tc[r] = thread_cpu() - c0;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_double);
    qsort(tc, (size_t)runs, sizeof *tc, cmp_double);
    double med = t[runs / 2];
    double gf = kiln_conv_flops(conv, h, w) / med * 1e-9;
    double best = kiln_conv_flops(conv, h, w) / t[0] * 1e-9;
    printf("conv %-10s %dx%d %3d->%-3d %dx%d  %-9s %-6s threads=%d  median %8.3f ms %7.1f GFLOP/s  (best %7.1f)",
           label, k, k, cin, cout, h, w, kiln_impl_name(kiln_conv_impl(conv)), kiln_conv_isa(conv), threads,
           med * 1e3, gf, best);
    if (threads == 1)
        printf("  cpu-time %7.1f GFLOP/s", kiln_conv_flops(conv, h, w) / tc[runs / 2] * 1e-9);
    printf("\n");
    fflush(stdout);
    free(t);
    free(tc);
    kiln_pool_destroy(pool);
    kiln_conv_destroy(conv);
    kiln_fmap_free(&in);
    kiln_fmap_free(&out);
    free(wt);
    free(bias);
    return med;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 7;
    if (runs < 1) runs = 1;
    const char *q = getenv("KILN_BENCH_QUICK");
    int quick = q && strcmp(q, "1") == 0;
    __builtin_cpu_init();
    const int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    const struct { kiln_impl impl; const char *isa; } simd[] = {
        {KILN_IMPL_AVX2, "avx2"}, {KILN_IMPL_AVX2, "avx512"}, {KILN_IMPL_WINOGRAD, "avx2"},
        {KILN_IMPL_WINOGRAD, "avx512"}};
    for (int threads = 1; threads <= 2; threads++) {
        bench_case("body", 64, 64, 3, 160, 240, KILN_IMPL_REFERENCE, NULL, threads, quick ? 1 : 3, 1);
        for (size_t i = 0; i < sizeof simd / sizeof simd[0]; i++)
            if (has512 || strcmp(simd[i].isa, "avx512") != 0)
                bench_case("body", 64, 64, 3, 160, 240, simd[i].impl, simd[i].isa, threads, runs, 1);
    }
    if (quick) return 0;
    /* The other EDSR-baseline x2 layers, each implementation, 2 threads
     * (the direct method also on AVX2 where the CPU has AVX-512). */
    const kiln_impl impls[] = {KILN_IMPL_AVX2, KILN_IMPL_WINOGRAD, KILN_IMPL_AUTO};
    if (has512) {
        bench_case("head", 64, 3, 3, 160, 240, KILN_IMPL_AVX2, "avx2", 2, runs, 0);
        bench_case("tail", 3, 64, 3, 320, 480, KILN_IMPL_AVX2, "avx2", 2, runs, 0);
    }
    for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++) {
        bench_case("head", 64, 3, 3, 160, 240, impls[i], NULL, 2, runs, 0);
        bench_case("upsampler", 256, 64, 3, 160, 240, impls[i], NULL, 2, runs, 0);
        bench_case("tail", 3, 64, 3, 320, 480, impls[i], NULL, 2, runs, 0);
        bench_case("meanshift", 3, 3, 1, 160, 240, impls[i], NULL, 2, runs, 0);
    }
    return 0;
}

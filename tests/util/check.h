/*
 * check.h — the tiny test harness every tests/test_*.c uses.
 *
 * Each test file is its own process (a crash or leak fails only that file).
 * Write `TEST(name) { CHECK(cond); CHECK_EQ_INT(a, b); ... }` and list the
 * tests in `int main(void) { RUN(name); ...; return check_summary(); }`.
 * A failed CHECK prints file:line and the expression, marks the current test
 * failed and goes on (so one run reports every broken assertion).
 *
 * Data: kiln_test_data("B100/HR") returns "$KILN_DATA/B100/HR", with
 * KILN_DATA defaulting to ../shared/data relative to the repository root.
 * kiln_test_full() is 1 in the release run (KILN_TEST_FULL=1), 0 under the
 * sanitizers, where tests that sweep a whole benchmark use fewer images.
 */
#ifndef KILN_CHECK_H
#define KILN_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int check_failed_current;
extern int check_tests_run, check_tests_failed;

#define TEST(name) static void test_##name(void)

#define RUN(name)                                                              \
    do {                                                                       \
        check_failed_current = 0;                                              \
        fprintf(stderr, "  %-50s", #name);                                     \
        test_##name();                                                         \
        check_tests_run++;                                                     \
        if (check_failed_current) check_tests_failed++;                        \
        fprintf(stderr, "%s\n", check_failed_current ? "FAIL" : "ok");         \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "\n    %s:%d: CHECK(%s) failed\n", __FILE__,      \
                    __LINE__, #cond);                                          \
            check_failed_current = 1;                                          \
        }                                                                      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                   \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "\n    %s:%d: CHECK(%s) failed: ", __FILE__,      \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
            check_failed_current = 1;                                          \
        }                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                     \
    do {                                                                       \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);        \
        CHECK_MSG(check_a_ == check_b_, "%lld != %lld", check_a_, check_b_);   \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                  \
    do {                                                                       \
        double check_a_ = (double)(a), check_b_ = (double)(b);                 \
        CHECK_MSG(fabs(check_a_ - check_b_) <= (tol), "%.9g vs %.9g (tol %g)", \
                  check_a_, check_b_, (double)(tol));                          \
    } while (0)

#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *check_a_ = (a), *check_b_ = (b);                           \
        CHECK_MSG(check_a_ && check_b_ && strcmp(check_a_, check_b_) == 0,    \
                  "\"%s\" != \"%s\"", check_a_ ? check_a_ : "(null)",         \
                  check_b_ ? check_b_ : "(null)");                             \
    } while (0)

/* A kiln_status call that must succeed; prints kiln_errmsg() otherwise. */
#define CHECK_OK(call)                                                         \
    do {                                                                       \
        int check_st_ = (int)(call);                                           \
        CHECK_MSG(check_st_ == 0, "%s -> status %d: %s", #call, check_st_,    \
                  kiln_errmsg());                                              \
    } while (0)

int check_summary(void);

/* "$KILN_DATA/<rel>" in a static buffer (one at a time per thread). */
const char *kiln_test_data(const char *rel);
/* 1 if the data folder exists (tests need it: absence is a failure). */
int kiln_test_have_data(void);
int kiln_test_full(void);
/* A fresh temporary directory (removed by the test when done, or left for
 * post-mortem when it failed). */
const char *kiln_test_tmpdir(void);
/* Read a whole file; returns malloc'ed buffer or NULL. */
void *kiln_test_read_file(const char *path, size_t *len);
/* Deterministic pseudo-random numbers (xorshift), for reproducible inputs. */
unsigned kiln_test_rand(unsigned *state);
float kiln_test_randf(unsigned *state, float lo, float hi);

#endif

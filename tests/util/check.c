/* check.c — the support functions of check.h. */
#include "check.h"

#include <sys/stat.h>
#include <unistd.h>

int check_failed_current, check_tests_run, check_tests_failed;

int check_summary(void)
{
    fprintf(stderr, "%d tests, %d failed\n", check_tests_run, check_tests_failed);
    return check_tests_failed ? 1 : 0;
}

static const char *data_root(void)
{
    const char *env = getenv("KILN_DATA");
    return env && *env ? env : "../shared/data";
}

const char *kiln_test_data(const char *rel)
{
    static _Thread_local char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", data_root(), rel);
    return buf;
}

int kiln_test_have_data(void)
{
    struct stat st;
    return stat(data_root(), &st) == 0 && S_ISDIR(st.st_mode);
}

int kiln_test_full(void)
{
    const char *env = getenv("KILN_TEST_FULL");
    return env && strcmp(env, "1") == 0;
}

const char *kiln_test_tmpdir(void)
{
    static char buf[256];
    if (!buf[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(buf, sizeof buf, "%s/kiln-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(buf)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return buf;
}

void *kiln_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long n = ftell(f);
    if (n < 0) { fclose(f); return NULL; }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (len) *len = (size_t)n; }
    return buf;
}

unsigned kiln_test_rand(unsigned *state)
{
    unsigned x = *state ? *state : 2463534242u;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return *state = x;
}

float kiln_test_randf(unsigned *state, float lo, float hi)
{
    return lo + (hi - lo) * (float)(kiln_test_rand(state) >> 8) / 16777216.0f;
}

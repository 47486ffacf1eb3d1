/*
 * util.c — small helpers the daemon's modules share (see kilnd.h): clock and
 * ISO timestamps, random ids from getrandom(2), one-line logging, directory
 * creation/removal and directory fsync. Nothing here allocates memory that
 * outlives a call.
 */
#include "kilnd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"

double kilnd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void kilnd_iso8601(double t, char *buf, size_t n)
{
    if (t <= 0) {
        if (n) buf[0] = '\0';
        return;
    }
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

kiln_status kilnd_random_hex(char *out, size_t nbytes)
{
    uint8_t buf[64];
    if (nbytes > sizeof buf) return kiln_fail(KILN_ERR_INVALID, "random: %zu bytes asked, 64 max", nbytes);
    size_t got = 0;
    while (got < nbytes) {
        ssize_t r = getrandom(buf + got, nbytes - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return kiln_fail(KILN_ERR_IO, "getrandom: %s", strerror(errno));
        }
        got += (size_t)r;
    }
    kiln_hex(buf, nbytes, out);
    return KILN_OK;
}

kiln_status kilnd_new_id(const char *prefix, char *out, size_t n)
{
    char hex[17];
    kiln_status st = kilnd_random_hex(hex, 8);
    if (st) return st;
    if ((size_t)snprintf(out, n, "%s_%s", prefix, hex) >= n)
        return kiln_fail(KILN_ERR_INTERNAL, "id buffer too small for prefix \"%s\"", prefix);
    return KILN_OK;
}

void kilnd_log(const char *fmt, ...)
{
    char ts[32], msg[1024];
    kilnd_iso8601(kilnd_now(), ts, sizeof ts);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s kilnd: %s\n", ts, msg);
}

kiln_status kilnd_mkdirs(const char *path)
{
    char buf[KILND_PATH_MAX];
    if (strlen(path) >= sizeof buf) return kiln_fail(KILN_ERR_INVALID, "path too long: %s", path);
    strcpy(buf, path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return kiln_fail(KILN_ERR_IO, "mkdir %s: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    return KILN_OK;
}

void kilnd_rmtree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                char sub[KILND_PATH_MAX];
                if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) < sizeof sub)
                    kilnd_rmtree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

kiln_status kilnd_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return kiln_fail(KILN_ERR_IO, "open dir %s: %s", path, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0) return kiln_fail(KILN_ERR_IO, "fsync dir %s: %s", path, strerror(e));
    return KILN_OK;
}

int kilnd_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) return 0;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= '0' && s[0] <= '9')))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

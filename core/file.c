/* file.c — see file.h. */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

kiln_status kiln_file_read(const char *path, size_t max, void **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kiln_fail(errno == ENOENT ? KILN_ERR_NOT_FOUND : KILN_ERR_IO, "%s: cannot open: %s", path,
                         strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return kiln_fail(KILN_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)max) {
        close(fd);
        return kiln_fail(KILN_ERR_LIMIT, "%s: %lld bytes, more than the %zu this reader takes", path,
                         (long long)sb.st_size, max);
    }
    size_t len = (size_t)sb.st_size, got = 0;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return kiln_fail(KILN_ERR_NOMEM, "%s: out of memory for %zu bytes", path, len);
    }
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != len) {
        free(buf);
        return kiln_fail(KILN_ERR_IO, "%s: short read (%zu of %zu bytes)", path, got, len);
    }
    *out = buf;
    *out_len = len;
    return KILN_OK;
}

static kiln_status write_all(int fd, const void *buf, size_t n, const char *path)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return kiln_fail(KILN_ERR_IO, "%s: write failed: %s", path,
                             w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return KILN_OK;
}

kiln_status kiln_file_write_atomic(const char *path, const void *buf, size_t len)
{
    /* The temporary file sits in the target's folder so rename is atomic. */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    char *dir = malloc(plen + 2);
    kiln_status st = KILN_OK;
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return kiln_fail(KILN_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, plen + 2, ".");
    else if (slash == path) snprintf(dir, plen + 2, "/");
    else snprintf(dir, plen + 2, "%.*s", (int)(slash - path), path);

    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = kiln_fail(KILN_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
        goto out;
    }
    st = write_all(fd, buf, len, tmp);
    if (st == KILN_OK && fchmod(fd, 0644) != 0)
        st = kiln_fail(KILN_ERR_IO, "%s: chmod failed: %s", tmp, strerror(errno));
    if (st == KILN_OK && fsync(fd) != 0)
        st = kiln_fail(KILN_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == KILN_OK)
        st = kiln_fail(KILN_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (st == KILN_OK && rename(tmp, path) != 0)
        st = kiln_fail(KILN_ERR_IO, "%s: rename from %s failed: %s", path, tmp, strerror(errno));
    if (st != KILN_OK) {
        unlink(tmp);
        goto out;
    }
    /* Make the rename itself durable. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0 || fsync(dfd) != 0)
        st = kiln_fail(KILN_ERR_IO, "%s: fsync of folder %s failed: %s", path, dir, strerror(errno));
    if (dfd >= 0) close(dfd);
out:
    free(tmp);
    free(dir);
    return st;
}

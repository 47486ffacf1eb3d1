/*
 * store.c — content-addressed files under the state directory (see store.h
 * for the layout and the write-then-rename protocol). Paths are built only
 * from the state directory, fixed folder names, random hex and sha256 hex:
 * nothing a client sends ever becomes part of a path here.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kilnd.h"

struct kiln_store {
    char root[KILND_PATH_MAX];
    char blobs[KILND_PATH_MAX + 16];
    char tmp[KILND_PATH_MAX + 8];
    char datasets[KILND_PATH_MAX + 16];
};

kiln_status kiln_store_open(const char *state_dir, kiln_store **out)
{
    if (strlen(state_dir) >= KILND_PATH_MAX - 32)
        return kiln_fail(KILN_ERR_INVALID, "state dir path too long: %s", state_dir);
    kiln_store *s = calloc(1, sizeof *s);
    if (!s) return kiln_fail(KILN_ERR_NOMEM, "store: out of memory");
    snprintf(s->root, sizeof s->root, "%s", state_dir);
    snprintf(s->blobs, sizeof s->blobs, "%s/blobs/sha256", state_dir);
    snprintf(s->tmp, sizeof s->tmp, "%s/tmp", state_dir);
    snprintf(s->datasets, sizeof s->datasets, "%s/datasets", state_dir);
    kiln_status st = kilnd_mkdirs(s->blobs);
    if (!st) st = kilnd_mkdirs(s->datasets);
    if (!st) {
        /* Leftovers of a crash: partial uploads, unfinished artifacts. */
        kilnd_rmtree(s->tmp);
        st = kilnd_mkdirs(s->tmp);
    }
    if (st) {
        free(s);
        return st;
    }
    *out = s;
    return KILN_OK;
}

void kiln_store_close(kiln_store *s) { free(s); }

const char *kiln_store_root(const kiln_store *s) { return s->root; }
const char *kiln_store_tmp_dir(const kiln_store *s) { return s->tmp; }
const char *kiln_store_datasets_dir(const kiln_store *s) { return s->datasets; }

kiln_status kiln_store_tmp_name(kiln_store *s, const char *prefix, char *path, size_t n)
{
    char hex[33];
    kiln_status st = kilnd_random_hex(hex, 16);
    if (st) return st;
    if ((size_t)snprintf(path, n, "%s/%s-%s", s->tmp, prefix, hex) >= n)
        return kiln_fail(KILN_ERR_INVALID, "tmp path too long under %s", s->tmp);
    return KILN_OK;
}

kiln_status kiln_store_tmp_create(kiln_store *s, const char *prefix, char *path, size_t n, int *fd)
{
    kiln_status st = kiln_store_tmp_name(s, prefix, path, n);
    if (st) return st;
    *fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (*fd < 0) return kiln_fail(KILN_ERR_IO, "create %s: %s", path, strerror(errno));
    return KILN_OK;
}

void kiln_store_blob_path(const kiln_store *s, const char *sha_hex, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", s->blobs, sha_hex);
}

static int is_hex64(const char *h)
{
    if (strlen(h) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return 0;
    return 1;
}

kiln_status kiln_store_adopt(kiln_store *s, const char *tmp_path, const char *sha_hex)
{
    if (!is_hex64(sha_hex)) return kiln_fail(KILN_ERR_INTERNAL, "store: bad sha256 \"%s\"", sha_hex);
    char dst[KILND_PATH_MAX + 96];
    kiln_store_blob_path(s, sha_hex, dst, sizeof dst);
    struct stat sb;
    if (stat(dst, &sb) == 0) {
        /* Same content already stored (blobs are immutable). */
        unlink(tmp_path);
        return KILN_OK;
    }
    int fd = open(tmp_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kiln_fail(KILN_ERR_IO, "open %s: %s", tmp_path, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0) return kiln_fail(KILN_ERR_IO, "fsync %s: %s", tmp_path, strerror(e));
    if (rename(tmp_path, dst) != 0)
        return kiln_fail(KILN_ERR_IO, "rename %s -> %s: %s", tmp_path, dst, strerror(errno));
    return kilnd_fsync_dir(s->blobs);
}

int kiln_store_tmp_count(const kiln_store *s)
{
    DIR *d = opendir(s->tmp);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

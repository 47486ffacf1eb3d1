/*
 * dataset.c — benchmark folders in the EDSR layout:
 *   DIR/HR/<id>.png   DIR/LR_bicubic/X<s>/<id>x<s>.png
 *
 * Invariants established by kiln_dataset_open and relied on by the rest:
 *   - names[] holds the HR file names ending in ".png", regular files only
 *     (symlinks, folders, dot-files are skipped so a dataset cannot pull in
 *     files from outside its folder), sorted byte-wise with strcmp (SPEC §2:
 *     "119082.png" sorts before "12084.png");
 *   - has_lr is 1 when every image has its LR file, 0 when none has (LR is
 *     then made with kiln_image_downscale); a folder with some LR files but
 *     not all is refused, naming the first missing one, because silently
 *     mixing stored and recomputed LR would make results depend on which.
 * The dataset is immutable after open, so kiln_dataset_load may be called
 * from several threads at once.
 *
 * Memory: the dataset owns its folder path and names; images returned by
 * kiln_dataset_load are owned by the caller (kiln_image_free).
 */
#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct kiln_dataset {
    char *dir;
    int scale;
    int has_lr;
    size_t n;
    char **names;
};

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_png_name(const char *s)
{
    size_t l = strlen(s);
    return s[0] != '.' && l > 4 && strcmp(s + l - 4, ".png") == 0;
}

static int is_regular_at(int dfd, const char *name)
{
    struct stat st;
    return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* "<id>x<s>.png" for HR name "<id>.png" into buf. */
static void lr_name(const char *hr_name, int scale, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.*sx%d.png", (int)(strlen(hr_name) - 4), hr_name, scale);
}

void kiln_dataset_close(kiln_dataset *ds)
{
    if (!ds) return;
    for (size_t i = 0; i < ds->n; i++) free(ds->names[i]);
    free(ds->names);
    free(ds->dir);
    free(ds);
}

static kiln_status list_hr(kiln_dataset *ds, const char *hrdir)
{
    DIR *d = opendir(hrdir);
    if (!d) {
        int e = errno;
        return kiln_fail(e == ENOENT || e == ENOTDIR ? KILN_ERR_NOT_FOUND : KILN_ERR_IO,
                         "dataset: %s: cannot open HR folder: %s", hrdir, strerror(e));
    }
    int dfd = dirfd(d);
    size_t cap = 0;
    kiln_status st = KILN_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno != 0)
                st = kiln_fail(KILN_ERR_IO, "dataset: %s: readdir failed: %s", hrdir, strerror(errno));
            break;
        }
        if (!is_png_name(e->d_name) || !is_regular_at(dfd, e->d_name)) continue;
        if (ds->n >= KILN_DATASET_MAX_IMAGES) {
            st = kiln_fail(KILN_ERR_LIMIT, "dataset: %s holds more than %d PNG files", hrdir,
                           KILN_DATASET_MAX_IMAGES);
            break;
        }
        if (ds->n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char **p = realloc(ds->names, nc * sizeof *p);
            if (!p) { st = kiln_fail(KILN_ERR_NOMEM, "dataset: cannot grow name list"); break; }
            ds->names = p;
            cap = nc;
        }
        char *name = strdup(e->d_name);
        if (!name) { st = kiln_fail(KILN_ERR_NOMEM, "dataset: cannot copy name"); break; }
        ds->names[ds->n++] = name;
    }
    closedir(d);
    if (st != KILN_OK) return st;
    if (ds->n == 0) return kiln_fail(KILN_ERR_NOT_FOUND, "dataset: %s has no .png file", hrdir);
    qsort(ds->names, ds->n, sizeof *ds->names, cmp_names);
    return KILN_OK;
}

/* Decide has_lr: all LR files present, or none. */
static kiln_status check_lr(kiln_dataset *ds)
{
    char lrdir[4096];
    snprintf(lrdir, sizeof lrdir, "%s/LR_bicubic/X%d", ds->dir, ds->scale);
    int dfd = open(lrdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        ds->has_lr = 0; /* no LR folder for this scale: made from HR */
        return KILN_OK;
    }
    size_t present = 0, first_missing = ds->n;
    for (size_t i = 0; i < ds->n; i++) {
        char name[1024];
        lr_name(ds->names[i], ds->scale, name, sizeof name);
        if (is_regular_at(dfd, name))
            present++;
        else if (first_missing == ds->n)
            first_missing = i;
    }
    close(dfd);
    if (present == ds->n || present == 0) {
        ds->has_lr = present == ds->n;
        return KILN_OK;
    }
    char name[1024];
    lr_name(ds->names[first_missing], ds->scale, name, sizeof name);
    return kiln_fail(KILN_ERR_NOT_FOUND,
                     "dataset: %s/%s missing for HR/%s (%zu of %zu LR files exist)", lrdir, name,
                     ds->names[first_missing], present, ds->n);
}

kiln_status kiln_dataset_open(const char *dir, int scale, kiln_dataset **out)
{
    *out = NULL;
    if (!dir || !*dir) return kiln_fail(KILN_ERR_INVALID, "dataset: empty folder path");
    if (scale < 2 || scale > 8)
        return kiln_fail(KILN_ERR_INVALID, "dataset: scale %d outside 2..8", scale);
    if (strlen(dir) > 3000) return kiln_fail(KILN_ERR_INVALID, "dataset: folder path too long");
    kiln_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return kiln_fail(KILN_ERR_NOMEM, "dataset: out of memory");
    ds->scale = scale;
    ds->dir = strdup(dir);
    if (!ds->dir) {
        free(ds);
        return kiln_fail(KILN_ERR_NOMEM, "dataset: out of memory");
    }
    char hrdir[4096];
    snprintf(hrdir, sizeof hrdir, "%s/HR", dir);
    kiln_status st = list_hr(ds, hrdir);
    if (st == KILN_OK) st = check_lr(ds);
    if (st != KILN_OK) {
        kiln_dataset_close(ds);
        return st;
    }
    *out = ds;
    return KILN_OK;
}

size_t kiln_dataset_count(const kiln_dataset *ds) { return ds->n; }
int kiln_dataset_scale(const kiln_dataset *ds) { return ds->scale; }
int kiln_dataset_has_lr(const kiln_dataset *ds) { return ds->has_lr; }

const char *kiln_dataset_name(const kiln_dataset *ds, size_t i)
{
    return i < ds->n ? ds->names[i] : NULL;
}

void kiln_dataset_split(const kiln_dataset *ds, kiln_split split, size_t calib, size_t *first,
                        size_t *count)
{
    size_t c = calib < ds->n ? calib : ds->n;
    switch (split) {
    case KILN_SPLIT_CALIB: *first = 0; *count = c; return;
    case KILN_SPLIT_EVAL: *first = c; *count = ds->n - c; return;
    case KILN_SPLIT_ALL: break;
    }
    *first = 0;
    *count = ds->n;
}

kiln_status kiln_split_parse(const char *s, kiln_split *out)
{
    if (s && strcmp(s, "all") == 0) { *out = KILN_SPLIT_ALL; return KILN_OK; }
    if (s && strcmp(s, "calib") == 0) { *out = KILN_SPLIT_CALIB; return KILN_OK; }
    if (s && strcmp(s, "eval") == 0) { *out = KILN_SPLIT_EVAL; return KILN_OK; }
    return kiln_fail(KILN_ERR_INVALID, "split: unknown name \"%s\" (want calib, eval or all)",
                     s ? s : "(null)");
}

static kiln_status read_png(const char *path, kiln_image *img)
{
    /* Alpha or 16-bit in a benchmark file is converted as documented; the
     * dataset has no channel to warn through, and the conversion is exact
     * for the 8-bit RGB files the benchmarks ship. */
    return kiln_png_read(path, img, NULL);
}

kiln_status kiln_dataset_load(const kiln_dataset *ds, size_t i, kiln_image *lr, kiln_image *hr)
{
    if (lr) memset(lr, 0, sizeof *lr);
    if (hr) memset(hr, 0, sizeof *hr);
    if (i >= ds->n)
        return kiln_fail(KILN_ERR_INVALID, "dataset: image index %zu out of range (%zu images)", i,
                         ds->n);
    char hrpath[4200], lrpath[4200], name[1024];
    snprintf(hrpath, sizeof hrpath, "%s/HR/%s", ds->dir, ds->names[i]);
    lr_name(ds->names[i], ds->scale, name, sizeof name);
    snprintf(lrpath, sizeof lrpath, "%s/LR_bicubic/X%d/%s", ds->dir, ds->scale, name);

    kiln_image h = {0, 0, NULL}, l = {0, 0, NULL};
    kiln_status st = KILN_OK;
    int need_hr = hr != NULL || (lr != NULL && !ds->has_lr);
    if (need_hr) st = read_png(hrpath, &h);
    if (st == KILN_OK && lr) {
        if (ds->has_lr) {
            st = read_png(lrpath, &l);
            /* LR must be floor(HR / s) so SR (= LR * s) fits inside HR */
            if (st == KILN_OK && hr && (l.w != h.w / ds->scale || l.h != h.h / ds->scale))
                st = kiln_fail(KILN_ERR_FORMAT,
                               "dataset: %s is %dx%d, expected %dx%d (HR %dx%d / %d)", lrpath,
                               l.w, l.h, h.w / ds->scale, h.h / ds->scale, h.w, h.h, ds->scale);
        } else {
            st = kiln_image_downscale(&h, ds->scale, &l);
            if (st != KILN_OK) kiln_errmsg_prefix("dataset: %s: ", hrpath);
        }
    }
    if (st != KILN_OK) {
        kiln_image_free(&h);
        kiln_image_free(&l);
        return st;
    }
    if (hr) *hr = h; else kiln_image_free(&h);
    if (lr) *lr = l;
    return KILN_OK;
}

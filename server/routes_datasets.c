/*
 * routes_datasets.c — datasets: the benchmark folders registered on the
 * server (found under the data root at start) and the teams' own uploads.
 *
 * Clients name datasets by id or name only; a path never comes from a
 * request. Uploads are tar archives (optionally compressed) read with
 * libarchive from the temporary upload file. Every member is checked before
 * anything is kept: regular files and directories only (no symlinks,
 * hardlinks, devices), no absolute path or `..` component, only
 * HR/<name>.png and LR_bicubic/X<s>/<name>.png (optionally under one common
 * top folder), each a decodable PNG within the image limits, at most
 * KILN_DS_MAX_MEMBERS members of at most KILN_DS_MAX_MEMBER bytes. Members
 * are extracted into a staging folder under state/tmp, fsynced, and the
 * folder is renamed into state/datasets/<id> before the row is inserted;
 * any failure removes the staging folder.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "image.h"
#include "routes.h"
#include "store.h"

#define KILN_DS_MAX_MEMBERS 2000
#define KILN_DS_MAX_MEMBER ((int64_t)64 << 20)

json_t *kiln_dataset_json(const kiln_db_dataset *d)
{
    json_t *scales = json_array();
    const char *p = d->scales;
    while (*p) {
        json_array_append_new(scales, json_integer(strtol(p, (char **)&p, 10)));
        if (*p == ',') p++;
        else break;
    }
    return json_pack("{s:s, s:s, s:i, s:o, s:s, s:o}", "id", d->id, "name", d->name, "images", d->images,
                     "scales", scales, "source", d->source, "created_at", kiln_json_time(d->created_at));
}

static int has_png_suffix(const char *s)
{
    size_t n = strlen(s);
    return n > 4 && strcasecmp(s + n - 4, ".png") == 0;
}

/* PNG count in dir/HR and the X<s> folders of dir/LR_bicubic ("2,3"). */
static int scan_layout(const char *dir, char *scales, size_t n)
{
    char p[KILND_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/HR", dir);
    DIR *d = opendir(p);
    if (!d) return 0;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.' && has_png_suffix(e->d_name)) count++;
    closedir(d);
    scales[0] = '\0';
    snprintf(p, sizeof p, "%s/LR_bicubic", dir);
    if ((d = opendir(p)) != NULL) {
        int have[9] = {0};
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == 'X' && e->d_name[1] >= '2' && e->d_name[1] <= '8' && e->d_name[2] == '\0')
                have[e->d_name[1] - '0'] = 1;
        }
        closedir(d);
        for (int s = 2; s <= 8; s++)
            if (have[s]) {
                size_t l = strlen(scales);
                snprintf(scales + l, n - l, "%s%d", l ? "," : "", s);
            }
    }
    return count;
}

kiln_status kiln_datasets_register_root(kilnd_ctx *ctx, int *n)
{
    *n = 0;
    DIR *d = opendir(ctx->cfg.data_dir);
    if (!d) return KILN_OK; /* no data root: nothing to register */
    struct dirent *e;
    kiln_status st = KILN_OK;
    while (!st && (e = readdir(d)) != NULL) {
        if (!kilnd_name_ok(e->d_name, 64)) continue;
        char dir[KILND_PATH_MAX + 300], scales[64];
        snprintf(dir, sizeof dir, "%s/%s", ctx->cfg.data_dir, e->d_name);
        int images = scan_layout(dir, scales, sizeof scales);
        if (images <= 0) continue;
        st = kiln_db_dataset_register_server(ctx->db, e->d_name, e->d_name, images, scales);
        if (!st) (*n)++;
    }
    closedir(d);
    return st;
}

static void dataset_cb(void *ctx, const kiln_db_dataset *d) { json_array_append_new(ctx, kiln_dataset_json(d)); }

void kiln_route_datasets_list(kiln_req *r)
{
    json_t *a = json_array();
    if (kiln_db_datasets_list(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, dataset_cb, a)) {
        json_decref(a);
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        return;
    }
    kiln_reply_json(r, 200, json_pack("{s:o}", "datasets", a));
}

void kiln_route_dataset_get(kiln_req *r)
{
    kiln_db_dataset d;
    kiln_status st = kiln_db_dataset_get(kiln_req_ctx(r)->db, kiln_req_who(r)->team_seq, kiln_req_param(r), &d);
    if (st == KILN_ERR_NOT_FOUND) kiln_reply_error(r, 404, "not_found", "id", "dataset \"%s\" not found", kiln_req_param(r));
    else if (st) kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
    else kiln_reply_json(r, 200, kiln_dataset_json(&d));
}

/* ---- upload --------------------------------------------------------------- */

typedef struct ds_upload {
    kiln_req *r;
    char stage[KILND_PATH_MAX + 64];
    char top[256]; /* common top folder, "" if none */
    int members;
    int64_t total;
    int hr_files;
} ds_upload;

/* Split a member path into components, refusing unsafe ones. Returns the
 * number of components, or -1 after replying. */
static int split_member(ds_upload *u, const char *name, char comps[4][256])
{
    if (name[0] == '/') {
        kiln_reply_error(u->r, 422, "unsafe_archive_member", name, "member \"%s\": absolute paths are not allowed", name);
        return -1;
    }
    int n = 0;
    const char *p = name;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t l = slash ? (size_t)(slash - p) : strlen(p);
        if (l == 2 && p[0] == '.' && p[1] == '.') {
            kiln_reply_error(u->r, 422, "unsafe_archive_member", name, "member \"%s\": \"..\" is not allowed in paths", name);
            return -1;
        }
        if (!(l == 0 || (l == 1 && p[0] == '.'))) {
            if (n == 4 || l >= 256) {
                kiln_reply_error(u->r, 422, "invalid_archive", name,
                                 "member \"%s\": not part of the benchmark layout (HR/*.png, LR_bicubic/X<s>/*.png)", name);
                return -1;
            }
            memcpy(comps[n], p, l);
            comps[n][l] = '\0';
            n++;
        }
        p = slash ? slash + 1 : p + l;
    }
    return n;
}

static int is_scale_dir(const char *s) { return s[0] == 'X' && s[1] >= '2' && s[1] <= '8' && s[2] == '\0'; }

static int write_member(ds_upload *u, const char *rel, const void *buf, size_t len)
{
    char path[KILND_PATH_MAX + 700];
    snprintf(path, sizeof path, "%s/%s", u->stage, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    if (kilnd_mkdirs(path)) return -1;
    *slash = '/';
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        kiln_fail(KILN_ERR_IO, "create %s: %s", path, strerror(errno));
        return -1;
    }
    const char *p = buf;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    int ok = left == 0 && fsync(fd) == 0;
    if (!ok) kiln_fail(KILN_ERR_IO, "write %s: %s", path, strerror(errno));
    close(fd);
    return ok ? 0 : -1;
}

/* Validate and extract every member; 0 on success, -1 after replying. */
static int extract(ds_upload *u, const char *tar_path)
{
    kiln_req *r = u->r;
    kilnd_ctx *ctx = kiln_req_ctx(r);
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, tar_path, 65536) != ARCHIVE_OK) {
        kiln_reply_error(r, 422, "invalid_archive", NULL, "not a tar archive: %s", archive_error_string(a));
        archive_read_free(a);
        return -1;
    }
    int rc = 0;
    struct archive_entry *e;
    void *buf = NULL;
    for (;;) {
        int h = archive_read_next_header(a, &e);
        if (h == ARCHIVE_EOF) break;
        if (h != ARCHIVE_OK && h != ARCHIVE_WARN) {
            kiln_reply_error(r, 422, "invalid_archive", NULL, "archive is damaged after %d member%s: %s",
                             u->members, u->members == 1 ? "" : "s", archive_error_string(a));
            rc = -1;
            break;
        }
        const char *name = archive_entry_pathname(e);
        if (!name) name = "";
        if (++u->members > KILN_DS_MAX_MEMBERS) {
            kiln_reply_error(r, 413, "payload_too_large", NULL, "archive has more than %d members", KILN_DS_MAX_MEMBERS);
            rc = -1;
            break;
        }
        mode_t type = archive_entry_filetype(e);
        if (archive_entry_symlink(e) || archive_entry_hardlink(e) || (type != AE_IFREG && type != AE_IFDIR)) {
            kiln_reply_error(r, 422, "unsafe_archive_member", name,
                             "member \"%s\": only regular files and directories are allowed (no links or devices)", name);
            rc = -1;
            break;
        }
        char comps[4][256];
        int n = split_member(u, name, comps);
        if (n < 0) {
            rc = -1;
            break;
        }
        int off = 0;
        if (n > 0 && strcmp(comps[0], "HR") && strcmp(comps[0], "LR_bicubic")) {
            /* One common top folder ("B100/HR/...") is allowed. */
            if (!u->top[0]) snprintf(u->top, sizeof u->top, "%s", comps[0]);
            if (strcmp(u->top, comps[0]) != 0) {
                kiln_reply_error(r, 422, "invalid_archive", name,
                                 "member \"%s\": members must share one top folder (\"%s\")", name, u->top);
                rc = -1;
                break;
            }
            off = 1;
        }
        int m = n - off;
        char (*c)[256] = comps + off;
        if (type == AE_IFDIR) {
            int ok = m == 0 || (m == 1 && (!strcmp(c[0], "HR") || !strcmp(c[0], "LR_bicubic"))) ||
                     (m == 2 && !strcmp(c[0], "LR_bicubic") && is_scale_dir(c[1]));
            if (!ok) {
                kiln_reply_error(r, 422, "invalid_archive", name,
                                 "member \"%s\": unexpected folder (the layout is HR/ and LR_bicubic/X<s>/)", name);
                rc = -1;
                break;
            }
            continue;
        }
        int ok = (m == 2 && !strcmp(c[0], "HR")) || (m == 3 && !strcmp(c[0], "LR_bicubic") && is_scale_dir(c[1]));
        const char *file = m >= 2 ? c[m - 1] : "";
        if (!ok || !kilnd_name_ok(file, 200) || !has_png_suffix(file)) {
            kiln_reply_error(r, 422, "invalid_archive", name,
                             "member \"%s\": only PNG images under HR/ and LR_bicubic/X<s>/ are allowed", name);
            rc = -1;
            break;
        }
        int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
        if (size < 0 || size > KILN_DS_MAX_MEMBER) {
            kiln_reply_error(r, 413, "payload_too_large", name, "member \"%s\": size %lld is over the %lld-byte member limit",
                             name, (long long)size, (long long)KILN_DS_MAX_MEMBER);
            rc = -1;
            break;
        }
        u->total += size;
        if ((uint64_t)u->total > ctx->cfg.max_upload * 4) {
            kiln_reply_error(r, 413, "payload_too_large", NULL, "archive expands to more than %llu bytes",
                             (unsigned long long)ctx->cfg.max_upload * 4);
            rc = -1;
            break;
        }
        free(buf);
        buf = malloc(size > 0 ? (size_t)size : 1);
        if (!buf) {
            kiln_reply_error(r, 500, "internal", NULL, "out of memory reading \"%s\"", name);
            rc = -1;
            break;
        }
        la_ssize_t got = archive_read_data(a, buf, (size_t)size);
        if (got != (la_ssize_t)size) {
            kiln_reply_error(r, 422, "invalid_archive", name, "member \"%s\": truncated (%s)", name,
                             got < 0 ? archive_error_string(a) : "short read");
            rc = -1;
            break;
        }
        kiln_image img = {0};
        int warn = 0;
        if (kiln_png_read_mem(buf, (size_t)size, &img, &warn) != KILN_OK) {
            kiln_reply_error(r, 422, "invalid_archive", name, "member \"%s\": not a usable PNG: %s", name, kiln_errmsg());
            rc = -1;
            break;
        }
        kiln_image_free(&img);
        char rel[600];
        if (m == 2) snprintf(rel, sizeof rel, "HR/%s", file);
        else snprintf(rel, sizeof rel, "LR_bicubic/%s/%s", c[1], file);
        if (write_member(u, rel, buf, (size_t)size) != 0) {
            kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
            rc = -1;
            break;
        }
        if (m == 2) u->hr_files++;
    }
    free(buf);
    archive_read_free(a);
    if (rc == 0 && u->hr_files == 0) {
        kiln_reply_error(r, 422, "invalid_archive", NULL, "the archive has no HR/*.png image");
        rc = -1;
    }
    return rc;
}

void kiln_route_dataset_upload(kiln_req *r)
{
    kilnd_ctx *ctx = kiln_req_ctx(r);
    const kiln_db_principal *who = kiln_req_who(r);
    const char *name = kiln_req_query(r, "name");
    if (!strcmp(kiln_req_media_type(r), "application/json")) {
        kiln_reply_error(r, 415, "unsupported_media_type", "Content-Type",
                         "POST /v1/datasets takes a tar archive (application/x-tar), not JSON");
        return;
    }
    if (!name || !kilnd_name_ok(name, 64)) {
        kiln_reply_error(r, 400, "invalid_request", "name",
                         "name: query parameter required ([A-Za-z0-9][A-Za-z0-9._-], at most 64)");
        return;
    }
    kiln_db_dataset d;
    memset(&d, 0, sizeof d);
    if (kiln_db_dataset_get(ctx->db, who->team_seq, name, &d) == KILN_OK && d.team_seq == who->team_seq) {
        kiln_reply_error(r, 409, "already_exists", "name", "the team already has a dataset \"%s\"", name);
        return;
    }
    char sha[65];
    uint64_t size = 0;
    const char *tar = kiln_req_upload(r, sha, &size);
    if (!tar) {
        kiln_reply_error(r, 500, "internal", NULL, "upload body was not stored");
        return;
    }
    ds_upload u;
    memset(&u, 0, sizeof u);
    u.r = r;
    if (kiln_store_tmp_name(ctx->store, "dataset", u.stage, sizeof u.stage) || kilnd_mkdirs(u.stage)) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        return;
    }
    if (extract(&u, tar) != 0) goto fail;

    /* The core's own reader must accept it too (LR pairing, sizes). */
    char scales[64];
    scan_layout(u.stage, scales, sizeof scales);
    int scale = scales[0] ? atoi(scales) : 2;
    kiln_dataset *ds = NULL;
    if (kiln_dataset_open(u.stage, scale, &ds) != KILN_OK) {
        kiln_reply_error(r, 422, "invalid_archive", NULL, "not a usable dataset: %s", kiln_errmsg());
        goto fail;
    }
    d.images = (int)kiln_dataset_count(ds);
    kiln_dataset_close(ds);

    d.team_seq = who->team_seq;
    snprintf(d.name, sizeof d.name, "%s", name);
    snprintf(d.scales, sizeof d.scales, "%s", scales);
    if (kilnd_new_id("ds", d.id, sizeof d.id)) {
        kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        goto fail;
    }
    snprintf(d.dir, sizeof d.dir, "datasets/%s", d.id);
    char final[KILND_PATH_MAX + 600];
    snprintf(final, sizeof final, "%s/%s", ctx->cfg.state_dir, d.dir);
    if (rename(u.stage, final) != 0 || kilnd_fsync_dir(kiln_store_datasets_dir(ctx->store))) {
        kiln_reply_error(r, 500, "internal", NULL, "storing the dataset: %s", strerror(errno));
        goto fail;
    }
    int existed = 0;
    if (kiln_db_dataset_insert(ctx->db, &d, &existed) || existed) {
        if (existed) kiln_reply_error(r, 409, "already_exists", "name", "the team already has a dataset \"%s\"", name);
        else kiln_reply_error(r, 500, "internal", NULL, "%s", kiln_errmsg());
        kilnd_rmtree(final);
        return;
    }
    kilnd_log("team %s uploaded dataset %s (%s, %d images)", who->team, d.id, d.name, d.images);
    kiln_reply_json(r, 201, kiln_dataset_json(&d));
    return;
fail:
    kilnd_rmtree(u.stage);
}

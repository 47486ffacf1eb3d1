/* http_client.c — kilnd test helpers (see http_client.h). */
#include "http_client.h"

#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "image.h"

double http_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void curl_init_once(void)
{
    static int done;
    if (!done) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        done = 1;
    }
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    int port = -1;
    if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(s, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (s >= 0) close(s);
    return port;
}

static const char *daemon_bin(void)
{
    const char *b = getenv("KILN_DAEMON");
    return b && *b ? b : "build/kilnd";
}

static const char *data_dir(void)
{
    const char *b = getenv("KILN_DATA");
    return b && *b ? b : "../shared/data";
}

int http_daemon_start(http_daemon *d, const char *state_dir, const char *const *extra)
{
    curl_init_once();
    if (!d->port) d->port = free_port();
    if (d->port <= 0) return -1;
    snprintf(d->state, sizeof d->state, "%s", state_dir);
    snprintf(d->base, sizeof d->base, "http://127.0.0.1:%d", d->port);
    snprintf(d->log, sizeof d->log, "%s.log", state_dir);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", d->port);
    const char *argv[40];
    int n = 0;
    argv[n++] = daemon_bin();
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--state";
    argv[n++] = state_dir;
    argv[n++] = "--data";
    argv[n++] = data_dir();
    for (int i = 0; extra && extra[i] && n < 38; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    double t0 = http_now();
    while (http_now() - t0 < 60) {
        http_resp r;
        if (http_request(d, "GET", "/v1/health", NULL, NULL, NULL, 0, NULL, &r) == 0 && r.status == 200) {
            http_resp_free(&r);
            return 0;
        }
        http_resp_free(&r);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "kilnd exited during start (see %s)\n", d->log);
            d->pid = 0;
            return -1;
        }
        usleep(50000);
    }
    http_daemon_stop(d, SIGKILL);
    return -1;
}

int http_daemon_stop(http_daemon *d, int sig)
{
    if (d->pid <= 0) return -1;
    kill(d->pid, sig);
    int st = 0;
    double t0 = http_now();
    while (waitpid(d->pid, &st, WNOHANG) == 0) {
        if (http_now() - t0 > 120) { /* a stop that hangs is a failure, not a hung suite */
            fprintf(stderr, "kilnd pid %d did not stop within 120 s; killing it\n", (int)d->pid);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &st, 0);
            d->pid = 0;
            return -2;
        }
        usleep(20000);
    }
    d->pid = 0;
    return st;
}

int http_token_create(const char *state_dir, const char *team, int admin, char *out)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --state '%s' token create --team '%s'%s 2>/dev/null", daemon_bin(), state_dir, team,
             admin ? " --admin" : "");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    out[0] = '\0';
    if (!fgets(out, 64, p)) out[0] = '\0';
    int rc = pclose(p);
    size_t l = strlen(out);
    while (l && (out[l - 1] == '\n' || out[l - 1] == '\r')) out[--l] = '\0';
    return rc == 0 && l > 0 ? 0 : -1;
}

typedef struct buf {
    char *p;
    size_t n;
} buf;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    buf *b = ud;
    size_t n = size * nmemb;
    char *q = realloc(b->p, b->n + n + 1);
    if (!q) return 0;
    memcpy(q + b->n, ptr, n);
    b->p = q;
    b->n += n;
    q[b->n] = '\0';
    return n;
}

int http_request(const http_daemon *d, const char *method, const char *path, const char *token,
                 const char *ctype, const void *body, size_t len, const char *const *headers,
                 http_resp *out)
{
    curl_init_once();
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    if (!c) return -1;
    char url[1024], auth[128], ct[160];
    snprintf(url, sizeof url, "%s%s", d->base, path);
    struct curl_slist *h = NULL;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    if (ctype) {
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
        h = curl_slist_append(h, ct);
    }
    for (int i = 0; headers && headers[i]; i++) h = curl_slist_append(h, headers[i]);
    buf b = {0}, hb = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (!strcmp(method, "HEAD")) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body || !strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &out->seconds);
    curl_off_t up = 0;
    curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &up);
    out->uploaded = (double)up;
    out->body = b.p ? b.p : calloc(1, 1);
    out->len = b.n;
    out->headers = hb.p ? hb.p : calloc(1, 1);
    out->curl_error = (int)rc;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return (int)rc;
}

void http_resp_free(http_resp *r)
{
    free(r->body);
    free(r->headers);
    r->body = r->headers = NULL;
}

json_t *http_json(const http_resp *r)
{
    json_error_t e;
    return r->body ? json_loadb(r->body, r->len, 0, &e) : NULL;
}

const char *http_header(const http_resp *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = r->headers;
    while (p && *p) {
        const char *eol = strstr(p, "\r\n");
        size_t l = eol ? (size_t)(eol - p) : strlen(p);
        if (l > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            while (*v == ' ') v++;
            size_t vl = l - (size_t)(v - p);
            if (vl >= n) vl = n - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return out;
        }
        p = eol ? eol + 2 : NULL;
    }
    return NULL;
}

static const char *error_part(const http_resp *r, const char *key)
{
    static char out[256];
    out[0] = '\0';
    json_t *j = http_json(r);
    const char *s = json_string_value(json_object_get(json_object_get(j, "error"), key));
    if (s) snprintf(out, sizeof out, "%s", s);
    json_decref(j);
    return out;
}

const char *http_error_code(const http_resp *r) { return error_part(r, "code"); }
const char *http_error_field(const http_resp *r) { return error_part(r, "field"); }

json_t *http_get_json(const http_daemon *d, const char *path, const char *token, long *status)
{
    http_resp r;
    json_t *j = NULL;
    if (http_request(d, "GET", path, token, NULL, NULL, 0, NULL, &r) == 0) j = http_json(&r);
    if (status) *status = r.status;
    http_resp_free(&r);
    return j;
}

json_t *http_post_json(const http_daemon *d, const char *path, const char *token, const char *json,
                       long *status)
{
    http_resp r;
    json_t *j = NULL;
    if (http_request(d, "POST", path, token, "application/json", json, strlen(json), NULL, &r) == 0)
        j = http_json(&r);
    if (status) *status = r.status;
    http_resp_free(&r);
    return j;
}

int http_make_mini_dataset(const char *dir, int n, int size)
{
    char p[1024];
    snprintf(p, sizeof p, "%s", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/HR", dir);
    mkdir(p, 0755);
    char src[1024];
    const char *data = data_dir();
    snprintf(src, sizeof src, "%s/B100/HR", data);
    DIR *dd = opendir(src);
    if (!dd) return -1;
    /* First n names in byte order, as the dataset reader sorts them. */
    char names[256][256];
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dd)) != NULL && count < 256)
        if (strstr(e->d_name, ".png")) snprintf(names[count++], 256, "%s", e->d_name);
    closedir(dd);
    qsort(names, (size_t)count, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    if (count < n) return -1;
    for (int i = 0; i < n; i++) {
        char in[1200], outp[1200];
        snprintf(in, sizeof in, "%.900s/%.200s", src, names[i]);
        snprintf(outp, sizeof outp, "%.900s/HR/%.200s", dir, names[i]);
        kiln_image img = {0}, crop = {0};
        if (kiln_png_read(in, &img, NULL) != 0) return -1;
        int w = img.w < size ? img.w : size, h = img.h < size ? img.h : size;
        if (kiln_image_alloc(&crop, w, h) != 0) return -1;
        for (int y = 0; y < h; y++) memcpy(crop.rgb + (size_t)y * w * 3, img.rgb + (size_t)y * img.w * 3, (size_t)w * 3);
        int rc = kiln_png_write(outp, &crop);
        kiln_image_free(&img);
        kiln_image_free(&crop);
        if (rc != 0) return -1;
    }
    return 0;
}

typedef struct memtar {
    char *p;
    size_t n;
} memtar;

static la_ssize_t tar_write(struct archive *a, void *ud, const void *b, size_t n)
{
    memtar *m = ud;
    char *q = realloc(m->p, m->n + n);
    if (!q) return -1;
    memcpy(q + m->n, b, n);
    m->p = q;
    m->n += n;
    return (la_ssize_t)n;
}

static int tar_close(struct archive *a, void *ud) { return ARCHIVE_OK; }

static void add_member(struct archive *a, const char *name, const void *data, size_t len, const char *link)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    if (link) {
        archive_entry_set_filetype(e, AE_IFLNK);
        archive_entry_set_symlink(e, link);
        archive_entry_set_size(e, 0);
        archive_entry_set_perm(e, 0777);
    } else {
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_size(e, (la_int64_t)len);
        archive_entry_set_perm(e, 0644);
    }
    archive_write_header(a, e);
    if (!link && len) archive_write_data(a, data, len);
    archive_entry_free(e);
}

void *http_tar_members(int n, const char *const *names, const void *const *data, const size_t *lens,
                       const char *const *links, size_t *len)
{
    memtar m = {0};
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_set_bytes_in_last_block(a, 1);
    archive_write_open(a, &m, NULL, tar_write, tar_close);
    for (int i = 0; i < n; i++) add_member(a, names[i], data ? data[i] : NULL, lens ? lens[i] : 0, links ? links[i] : NULL);
    archive_write_close(a);
    archive_write_free(a);
    *len = m.n;
    return m.p;
}

void *http_tar_dir(const char *dir, size_t *len)
{
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    char hr[1024];
    snprintf(hr, sizeof hr, "%s/HR", dir);
    DIR *dd = opendir(hr);
    if (!dd) return NULL;
    const char *names[256];
    const void *datas[256];
    size_t lens[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd)) != NULL && n < 256) {
        if (e->d_name[0] == '.') continue;
        char p[1300], name[600];
        snprintf(p, sizeof p, "%s/%s", hr, e->d_name);
        snprintf(name, sizeof name, "%s/HR/%s", base, e->d_name);
        size_t l = 0;
        void *b = NULL;
        FILE *f = fopen(p, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            l = (size_t)ftell(f);
            rewind(f);
            b = malloc(l ? l : 1);
            if (b && fread(b, 1, l, f) != l) l = 0;
            fclose(f);
        }
        names[n] = strdup(name);
        datas[n] = b;
        lens[n] = l;
        n++;
    }
    closedir(dd);
    void *t = http_tar_members(n, names, datas, lens, NULL, len);
    for (int i = 0; i < n; i++) {
        free((void *)names[i]);
        free((void *)datas[i]);
    }
    return t;
}

json_t *http_wait_job(const http_daemon *d, const char *token, const char *id, double timeout)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    double t0 = http_now();
    while (http_now() - t0 < timeout) {
        long st = 0;
        json_t *j = http_get_json(d, path, token, &st);
        const char *s = json_string_value(json_object_get(j, "status"));
        if (st == 200 && s && strcmp(s, "queued") && strcmp(s, "running")) return j;
        json_decref(j);
        usleep(200000);
    }
    return NULL;
}

int http_count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

char *http_b64(const unsigned char *p, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc(n / 3 * 4 + 8), *q = o;
    if (!o) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        *q++ = t[v >> 18], *q++ = t[(v >> 12) & 63], *q++ = t[(v >> 6) & 63], *q++ = t[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
        *q++ = t[v >> 18], *q++ = t[(v >> 12) & 63];
        *q++ = i + 1 < n ? t[(v >> 6) & 63] : '=';
        *q++ = '=';
    }
    *q = '\0';
    return o;
}

/*
 * main.c — kilnd's entry point: flags and defaults, start-up (state dir,
 * database and migrations, crash recovery of the queue, data-root datasets,
 * first admin token), the worker pool and the HTTP server, and an orderly
 * stop on SIGINT/SIGTERM (running jobs are handed back to the queue).
 *
 *   kilnd [--listen HOST:PORT] [--state DIR] [--data DIR] [--workers N]
 *         [--max-upload BYTES] [--http-threads N] [--lease SECONDS]
 *   kilnd [--state DIR] token create --team NAME [--user NAME] [--admin]
 *   kilnd routes
 *
 * Defaults: 127.0.0.1:8080, ./var, $KILN_DATA or ../shared/data, workers =
 * cores, kernel threads per job = max(1, cores / workers). Environment:
 * KILND_LISTEN, KILND_STATE, KILN_DATA, KILND_WORKERS.
 *
 * Signals are blocked in every thread and taken synchronously by sigwait in
 * the main thread, so no handler runs inside libmicrohttpd or a worker.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "db.h"
#include "http.h"
#include "kilnd.h"
#include "pool.h"
#include "queue.h"
#include "routes.h"
#include "store.h"
#include "workers.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kilnd [--listen HOST:PORT] [--state DIR] [--data DIR] [--workers N]\n"
            "             [--max-upload BYTES] [--http-threads N] [--lease SECONDS]\n"
            "       kilnd [--state DIR] token create --team NAME [--user NAME] [--admin]\n"
            "       kilnd routes\n");
}

static int parse_listen(const char *s, kilnd_config *c)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof c->host) return -1;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535) return -1;
    memcpy(c->host, s, (size_t)(colon - s));
    c->host[colon - s] = '\0';
    c->port = (int)port;
    return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static void defaults(kilnd_config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->host, "127.0.0.1");
    c->port = 8080;
    snprintf(c->state_dir, sizeof c->state_dir, "%s", getenv("KILND_STATE") ? getenv("KILND_STATE") : "var");
    snprintf(c->data_dir, sizeof c->data_dir, "%s", getenv("KILN_DATA") ? getenv("KILN_DATA") : "../shared/data");
    c->workers = kiln_cpu_count();
    c->max_upload = (uint64_t)256 << 20;
    c->max_json = (size_t)1 << 20;
    c->http_threads = 4;
    c->conn_limit = 512;
    c->conn_timeout_s = 60;
    c->conn_memory = 128 * 1024;
    c->lease_s = 30;
    const char *l = getenv("KILND_LISTEN");
    if (l && parse_listen(l, c) != 0) fprintf(stderr, "kilnd: ignoring KILND_LISTEN=%s (want HOST:PORT)\n", l);
    const char *w = getenv("KILND_WORKERS");
    long v;
    if (w && parse_int(w, 1, 256, &v) == 0) c->workers = (int)v;
}

static int token_command(kilnd_ctx *ctx, int argc, char **argv)
{
    const char *team = NULL, *user = NULL;
    int admin = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--team") && i + 1 < argc) team = argv[++i];
        else if (!strcmp(argv[i], "--user") && i + 1 < argc) user = argv[++i];
        else if (!strcmp(argv[i], "--admin")) admin = 1;
        else {
            fprintf(stderr, "kilnd token create: unknown argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (!team) {
        fprintf(stderr, "kilnd token create: --team NAME is required\n");
        return 2;
    }
    char tok[KILN_TOKEN_LEN + 1];
    if (kiln_auth_token_create(ctx->db, team, user, admin, 1, tok)) {
        fprintf(stderr, "kilnd token create: %s\n", kiln_errmsg());
        return 1;
    }
    printf("%s\n", tok);
    return 0;
}

int main(int argc, char **argv)
{
    kilnd_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    defaults(&ctx.cfg);
    kilnd_config *c = &ctx.cfg;
    int cmd = 0; /* 0 serve, 1 token create, 2 routes */
    int cmd_at = argc;
    int workers_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        long v;
        if (!strcmp(a, "token") && val && !strcmp(val, "create")) {
            cmd = 1;
            cmd_at = i + 2;
            break;
        } else if (!strcmp(a, "routes")) {
            cmd = 2;
            break;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!val) {
            fprintf(stderr, "kilnd: %s: missing value or unknown argument\n", a);
            usage(stderr);
            return 2;
        } else if (!strcmp(a, "--listen")) {
            if (parse_listen(val, c)) {
                fprintf(stderr, "kilnd: --listen: \"%s\" is not HOST:PORT\n", val);
                return 2;
            }
        } else if (!strcmp(a, "--state")) {
            snprintf(c->state_dir, sizeof c->state_dir, "%s", val);
        } else if (!strcmp(a, "--data")) {
            snprintf(c->data_dir, sizeof c->data_dir, "%s", val);
        } else if (!strcmp(a, "--workers")) {
            if (parse_int(val, 1, 256, &v)) {
                fprintf(stderr, "kilnd: --workers: \"%s\" is not an integer from 1 to 256\n", val);
                return 2;
            }
            c->workers = (int)v;
            workers_set = 1;
        } else if (!strcmp(a, "--max-upload")) {
            if (parse_int(val, 1024, 1L << 40, &v)) {
                fprintf(stderr, "kilnd: --max-upload: \"%s\" is not a byte count >= 1024\n", val);
                return 2;
            }
            c->max_upload = (uint64_t)v;
        } else if (!strcmp(a, "--http-threads")) {
            if (parse_int(val, 1, 64, &v)) {
                fprintf(stderr, "kilnd: --http-threads: \"%s\" is not an integer from 1 to 64\n", val);
                return 2;
            }
            c->http_threads = (int)v;
        } else if (!strcmp(a, "--lease")) {
            if (parse_int(val, 2, 3600, &v)) {
                fprintf(stderr, "kilnd: --lease: \"%s\" is not a number of seconds from 2 to 3600\n", val);
                return 2;
            }
            c->lease_s = (double)v;
        } else {
            fprintf(stderr, "kilnd: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
        i++;
    }
    (void)workers_set;
    if (cmd == 2) {
        for (int i = 0; i < kiln_n_routes; i++) printf("%s %s\n", kiln_routes[i].method, kiln_routes[i].pattern);
        return 0;
    }
    int cores = kiln_cpu_count();
    c->kernel_threads = cores / c->workers > 1 ? cores / c->workers : 1;

    char dbpath[KILND_PATH_MAX + 16];
    snprintf(dbpath, sizeof dbpath, "%s/kilnd.db", c->state_dir);
    if (kilnd_mkdirs(c->state_dir) || kiln_store_open(c->state_dir, &ctx.store) || kiln_db_open(dbpath, &ctx.db)) {
        fprintf(stderr, "kilnd: %s\n", kiln_errmsg());
        return 1;
    }
    if (cmd == 1) {
        int rc = token_command(&ctx, argc - cmd_at, argv + cmd_at);
        kiln_db_close(ctx.db);
        kiln_store_close(ctx.store);
        return rc;
    }

    char host[64] = "host", rnd[9];
    gethostname(host, sizeof host - 1);
    if (kilnd_random_hex(rnd, 4)) strcpy(rnd, "0");
    snprintf(ctx.instance, sizeof ctx.instance, "%.24s:%d:%s", host, (int)getpid(), rnd);

    /* A single-node daemon owns every running job in its database: any left
     * running belonged to a process that died. */
    int requeued = 0, nds = 0;
    kiln_status st = kiln_queue_recover(&ctx, 1, &requeued);
    if (!st && requeued) kilnd_log("requeued %d job(s) left running by a previous process", requeued);
    if (!st) st = kiln_datasets_register_root(&ctx, &nds);
    int64_t ntok = 0;
    if (!st) st = kiln_db_token_count(ctx.db, &ntok);
    if (!st && ntok == 0) {
        char tok[KILN_TOKEN_LEN + 1];
        st = kiln_auth_token_create(ctx.db, "admin", "admin", 1, 1, tok);
        if (!st) {
            printf("kilnd: first start: admin token for team \"admin\" (shown once, keep it):\n%s\n", tok);
            fflush(stdout);
        }
    }
    if (st) {
        fprintf(stderr, "kilnd: %s\n", kiln_errmsg());
        return 1;
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    kiln_http *http = NULL;
    if (kiln_workers_start(&ctx, &ctx.workers) || kiln_http_start(&ctx, &http)) {
        fprintf(stderr, "kilnd: %s\n", kiln_errmsg());
        kiln_workers_stop(ctx.workers);
        return 1;
    }
    kilnd_log("listening on http://%s:%d (state %s, data %s: %d dataset%s, %d worker%s x %d kernel thread%s)",
              c->host, c->port, c->state_dir, c->data_dir, nds, nds == 1 ? "" : "s", c->workers,
              c->workers == 1 ? "" : "s", c->kernel_threads, c->kernel_threads == 1 ? "" : "s");

    int sig = 0;
    while (sigwait(&set, &sig) != 0) {}
    kilnd_log("signal %d: stopping (running jobs go back to the queue)", sig);
    kiln_http_stop(http);
    kiln_workers_stop(ctx.workers);
    kiln_db_close(ctx.db);
    kiln_store_close(ctx.store);
    kilnd_log("stopped");
    return 0;
}

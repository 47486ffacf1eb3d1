/* util.c — option parsing, errors, progress bar and file output for the CLI. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            return cli_usage_error(cmd, "unexpected argument '%s' (options start with --)", a), -1;
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        cli_opt *o = NULL;
        for (cli_opt *p = opts; p->name; p++)
            if (strlen(p->name) == len && strncmp(p->name, name, len) == 0) o = p;
        if (!o) return cli_usage_error(cmd, "unknown option --%.*s", (int)len, name), -1;
        if (o->takes_value) {
            if (eq) o->value = eq + 1;
            else if (i + 1 < argc) o->value = argv[++i];
            else return cli_usage_error(cmd, "--%s needs a value", o->name), -1;
        } else {
            if (eq) return cli_usage_error(cmd, "--%s takes no value", o->name), -1;
            o->value = "1";
        }
    }
    return 0;
}

const char *cli_get(const cli_opt *opts, const char *name)
{
    for (const cli_opt *p = opts; p->name; p++)
        if (strcmp(p->name, name) == 0) return p->value;
    return NULL;
}

int cli_get_int(const char *cmd, const cli_opt *opts, const char *name, long def, long lo, long hi,
                long *out)
{
    const char *v = cli_get(opts, name);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return cli_usage_error(cmd, "--%s: '%s' is not an integer in [%ld, %ld]", name, v, lo, hi), -1;
    *out = x;
    return 0;
}

int cli_get_float(const char *cmd, const cli_opt *opts, const char *name, double def, double lo,
                  double hi, double *out)
{
    const char *v = cli_get(opts, name);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi)
        return cli_usage_error(cmd, "--%s: '%s' is not a number in [%g, %g]", name, v, lo, hi), -1;
    *out = x;
    return 0;
}

int cli_fail(const char *cmd, kiln_status st)
{
    cli_progress_end();
    const char *msg = kiln_errmsg();
    fprintf(stderr, "kiln %s: %s\n", cmd, msg && *msg ? msg : kiln_status_str(st));
    return 1;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kiln %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see kiln help)\n");
    va_end(ap);
    return 2;
}

static int progress_active;

void cli_progress(const char *label, size_t done, size_t total, const char *detail)
{
    if (!isatty(STDERR_FILENO)) return;
    int width = 30, fill = total ? (int)(width * done / total) : width;
    fprintf(stderr, "\r%-10s [", label);
    for (int i = 0; i < width; i++) fputc(i < fill ? '=' : ' ', stderr);
    fprintf(stderr, "] %zu/%zu %-28.28s", done, total, detail ? detail : "");
    fflush(stderr);
    progress_active = 1;
}

void cli_progress_end(void)
{
    if (progress_active) {
        fprintf(stderr, "\r%*s\r", 90, "");
        fflush(stderr);
        progress_active = 0;
    }
}

kiln_status cli_write_file(const char *path, const char *text)
{
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (!tmp) return kiln_fail(KILN_ERR_NOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        kiln_status st = kiln_fail(KILN_ERR_IO, "%s: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        kiln_status st = kiln_fail(KILN_ERR_IO, "%s: %s", path, strerror(errno));
        remove(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return KILN_OK;
}

/*
 * status.c — status names and the thread-local detail message.
 */
#include "status.h"

#include <stdio.h>
#include <string.h>

#define KILN_ERRMSG_MAX 512

static _Thread_local char errmsg[KILN_ERRMSG_MAX];

const char *kiln_status_str(kiln_status st)
{
    switch (st) {
    case KILN_OK: return "ok";
    case KILN_ERR_INVALID: return "invalid";
    case KILN_ERR_IO: return "io";
    case KILN_ERR_FORMAT: return "format";
    case KILN_ERR_UNSUPPORTED: return "unsupported";
    case KILN_ERR_ARCH: return "arch";
    case KILN_ERR_LIMIT: return "limit";
    case KILN_ERR_CHECKSUM: return "checksum";
    case KILN_ERR_CONFIG: return "config";
    case KILN_ERR_NOMEM: return "nomem";
    case KILN_ERR_NOT_FOUND: return "not_found";
    case KILN_ERR_CANCELED: return "canceled";
    case KILN_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

const char *kiln_errmsg(void) { return errmsg; }

void kiln_errmsg_clear(void) { errmsg[0] = '\0'; }

kiln_status kiln_failv(kiln_status st, const char *fmt, va_list ap)
{
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    return st;
}

kiln_status kiln_fail(kiln_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kiln_failv(st, fmt, ap);
    va_end(ap);
    return st;
}

void kiln_errmsg_prefix(const char *fmt, ...)
{
    char prefix[KILN_ERRMSG_MAX], old[KILN_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, errmsg, sizeof old);
    size_t n = strlen(prefix);
    if (n >= sizeof errmsg) n = sizeof errmsg - 1;
    memcpy(errmsg, prefix, n);
    size_t m = strnlen(old, sizeof old);
    if (m > sizeof errmsg - 1 - n) m = sizeof errmsg - 1 - n;
    memcpy(errmsg + n, old, m);
    errmsg[n + m] = '\0';
}

const char *kiln_version(void) { return "0.1.0"; }

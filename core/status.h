/*
 * status.h — the one status enum every fallible kiln function returns.
 *
 * A function that fails returns a kiln_status other than KILN_OK and leaves a
 * one-line detail message ("safetensors: header length 9e18 exceeds file size
 * 1024") in a thread-local buffer readable with kiln_errmsg() until the next
 * failure on the same thread. The enum says what kind of failure it was (so a
 * server can pick an HTTP status); the message says exactly what went wrong.
 */
#ifndef KILN_STATUS_H
#define KILN_STATUS_H

#include <stdarg.h>

typedef enum kiln_status {
    KILN_OK = 0,
    KILN_ERR_INVALID,     /* bad argument or option from the caller          */
    KILN_ERR_IO,          /* open/read/write/fsync failed                    */
    KILN_ERR_FORMAT,      /* malformed input: file, JSON, image, archive     */
    KILN_ERR_UNSUPPORTED, /* well-formed but outside what kiln handles        */
    KILN_ERR_ARCH,        /* tensors do not form an EDSR network             */
    KILN_ERR_LIMIT,       /* a size, count or dimension limit was exceeded   */
    KILN_ERR_CHECKSUM,    /* stored checksum does not match the content      */
    KILN_ERR_CONFIG,      /* compression config failed validation            */
    KILN_ERR_NOMEM,       /* allocation failed                               */
    KILN_ERR_NOT_FOUND,   /* named file, tensor, image or dataset missing    */
    KILN_ERR_CANCELED,    /* the caller asked to stop                        */
    KILN_ERR_INTERNAL     /* a kiln bug: an invariant did not hold           */
} kiln_status;

/* Stable lower-case name of a status ("format", "arch", ...). */
const char *kiln_status_str(kiln_status st);

/* Detail message of the last failure on this thread ("" if none). */
const char *kiln_errmsg(void);

/* Record a failure: formats the detail message and returns st, so callers
 * write `return kiln_fail(KILN_ERR_FORMAT, "png: %s", why);`. */
kiln_status kiln_fail(kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
kiln_status kiln_failv(kiln_status st, const char *fmt, va_list ap);

/* Prefix the current detail message ("model.pt: " + message). */
void kiln_errmsg_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Clear the detail message. */
void kiln_errmsg_clear(void);

/* kiln's version string ("0.1.0"). */
const char *kiln_version(void);

#endif

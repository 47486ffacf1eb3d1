/*
 * hash.h — SHA-256 (OpenSSL libcrypto) for content addressing: uploaded
 * checkpoints, artifacts, config hashes, indices in conformance tests.
 */
#ifndef KILN_HASH_H
#define KILN_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct kiln_sha256_ctx kiln_sha256_ctx;

/* One-shot digest; hex must hold 65 bytes (NUL-terminated lower-case). */
void kiln_sha256(const void *buf, size_t len, uint8_t digest[32]);
void kiln_sha256_hex(const void *buf, size_t len, char hex[65]);
void kiln_hex(const uint8_t *bytes, size_t n, char *out); /* out: 2n+1 bytes */
/* Streaming digest (files, uploads). */
kiln_status kiln_sha256_begin(kiln_sha256_ctx **out);
void kiln_sha256_update(kiln_sha256_ctx *c, const void *buf, size_t len);
/* Finishes and frees the context. */
void kiln_sha256_end(kiln_sha256_ctx *c, uint8_t digest[32]);
/* Digest of a whole file. */
kiln_status kiln_sha256_file(const char *path, char hex[65]);

#endif

/*
 * hash.c — SHA-256 through OpenSSL's EVP interface (libcrypto), so kiln does
 * not carry its own copy of a cryptographic primitive.
 */
#include "hash.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

struct kiln_sha256_ctx {
    EVP_MD_CTX *md;
};

void kiln_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

void kiln_sha256(const void *buf, size_t len, uint8_t digest[32])
{
    unsigned int n = 32;
    EVP_Digest(buf, len, digest, &n, EVP_sha256(), NULL);
}

void kiln_sha256_hex(const void *buf, size_t len, char hex[65])
{
    uint8_t d[32];
    kiln_sha256(buf, len, d);
    kiln_hex(d, 32, hex);
}

kiln_status kiln_sha256_begin(kiln_sha256_ctx **out)
{
    kiln_sha256_ctx *c = malloc(sizeof *c);
    if (!c) return kiln_fail(KILN_ERR_NOMEM, "sha256: out of memory");
    c->md = EVP_MD_CTX_new();
    if (!c->md || EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(c->md);
        free(c);
        return kiln_fail(KILN_ERR_INTERNAL, "sha256: EVP init failed");
    }
    *out = c;
    return KILN_OK;
}

void kiln_sha256_update(kiln_sha256_ctx *c, const void *buf, size_t len)
{
    EVP_DigestUpdate(c->md, buf, len);
}

void kiln_sha256_end(kiln_sha256_ctx *c, uint8_t digest[32])
{
    unsigned int n = 32;
    EVP_DigestFinal_ex(c->md, digest, &n);
    EVP_MD_CTX_free(c->md);
    free(c);
}

kiln_status kiln_sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f) return kiln_fail(KILN_ERR_IO, "%s: cannot open for hashing", path);
    kiln_sha256_ctx *c;
    kiln_status st = kiln_sha256_begin(&c);
    if (st != KILN_OK) { fclose(f); return st; }
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) kiln_sha256_update(c, buf, n);
    int err = ferror(f);
    fclose(f);
    uint8_t d[32];
    kiln_sha256_end(c, d);
    if (err) return kiln_fail(KILN_ERR_IO, "%s: read error while hashing", path);
    kiln_hex(d, 32, hex);
    return KILN_OK;
}

/*
 * fuzz_artifact.c — libFuzzer harness for the .kiln reader
 * (kiln_artifact_decode), the parser of uploaded/downloaded artifacts.
 *
 * Input: one flag byte, then the file. The sha256 over everything after the
 * 128-byte header stops almost every mutation at the checksum, so when the
 * flag's low bit is set the harness first repairs the header the way a
 * careful attacker would (file_length, manifest/blob offsets when they are
 * plausible, checksum) and the mutation reaches the manifest and blob
 * validation. Flag bit clear: the bytes are decoded as they are.
 *
 * A successful decode must re-encode, the re-encoding must decode, and that
 * must encode to the same bytes again (decode and encode are exact inverses
 * on everything the reader accepts), and every conv must dequantize.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "hash.h"

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Header offsets (docs/artifact-format.md). */
enum { H_MLEN = 32, H_BOFF = 40, H_BLEN = 48, H_FLEN = 56, H_SHA = 64, H_SIZE = 128 };

static void fix_up(uint8_t *p, size_t len)
{
    if (len < H_SIZE) return;
    uint64_t mlen = get_le64(p + H_MLEN);
    if (mlen <= len - H_SIZE) {
        uint64_t boff = (H_SIZE + mlen + 63) & ~(uint64_t)63;
        if (boff <= len) {
            put_le64(p + H_BOFF, boff);
            put_le64(p + H_BLEN, len - boff);
        }
    }
    put_le64(p + H_FLEN, len);
    kiln_sha256(p + H_SIZE, len - H_SIZE, p + H_SHA);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t len = size - 1;
    /* An exact-size copy, so ASan catches any read past the end. */
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return 0;
    memcpy(buf, data + 1, len);
    if (data[0] & 1) fix_up(buf, len);

    kiln_artifact *a = NULL;
    if (kiln_artifact_decode(buf, len, &a) == KILN_OK) {
        void *enc = NULL, *enc2 = NULL;
        size_t elen = 0, elen2 = 0;
        kiln_artifact *b = NULL;
        if (kiln_artifact_encode(a, &enc, &elen) != KILN_OK) abort();
        if (kiln_artifact_decode(enc, elen, &b) != KILN_OK) abort();
        if (kiln_artifact_encode(b, &enc2, &elen2) != KILN_OK) abort();
        if (elen != elen2 || memcmp(enc, enc2, elen) != 0) abort();
        if (kiln_artifact_weight_bytes(a) != kiln_artifact_weight_bytes(b)) abort();
        for (size_t i = 0; i < a->n_convs; i++) {
            const kiln_art_conv *c = &a->convs[i];
            size_t n = kiln_art_conv_numel(c);
            float *w = malloc(n * sizeof *w);
            if (w && kiln_art_conv_dequantize(c, w) != KILN_OK) abort();
            free(w);
        }
        kiln_artifact_free(b);
        free(enc);
        free(enc2);
    } else if (a) {
        abort(); /* a failed decode must not hand out an artifact */
    }
    kiln_artifact_free(a);
    free(buf);
    return 0;
}

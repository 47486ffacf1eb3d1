/*
 * weights_harness.h — the body shared by the weights-format harnesses
 * (fuzz_pt.c, fuzz_safetensors.c): both formats enter through
 * kiln_weights_load_mem, which detects the format; the harnesses differ in
 * their seed corpora, so each fuzzer explores one format's structure.
 */
#ifndef KILN_FUZZ_WEIGHTS_HARNESS_H
#define KILN_FUZZ_WEIGHTS_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "weights.h"

static int fuzz_weights_one(const uint8_t *data, size_t size)
{
    kiln_weights *w = NULL;
    kiln_status st = kiln_weights_load_mem(data, size, &w);
    if (st == KILN_OK) {
        /* Touch every tensor so ASan sees any short buffer. */
        volatile float sink = 0;
        for (size_t i = 0; i < kiln_weights_count(w); i++) {
            size_t n = kiln_weights_numel(w, i);
            const float *d = kiln_weights_data(w, i);
            if (n) sink += d[0] + d[n - 1];
            if (kiln_weights_find(w, kiln_weights_name(w, i)) != (long)i) __builtin_trap();
        }
        (void)sink;
    } else if (kiln_errmsg()[0] == '\0' || w != NULL) {
        __builtin_trap(); /* every failure must explain itself and return nothing */
    }
    kiln_weights_destroy(w);
    return 0;
}

#endif

/*
 * fuzz_pt.c — libFuzzer harness for the PyTorch loaders (zip and legacy) and
 * the restricted pickle VM behind them, through kiln_weights_load_mem.
 * Seeds: fuzz/corpus/fuzz_pt/ (from fuzz/make_corpus_weights.py).
 * Build: make build/fuzz/fuzz_pt; run: build/fuzz/fuzz_pt fuzz/corpus/fuzz_pt
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
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

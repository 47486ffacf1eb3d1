/*
 * fuzz_pt.c — libFuzzer harness for the PyTorch loaders (zip and legacy) and
 * the restricted pickle VM behind them, through kiln_weights_load_mem.
 * Seeds: fuzz/corpus/fuzz_pt/ (from fuzz/make_corpus_weights.py).
 * Build: make build/fuzz/fuzz_pt; run: build/fuzz/fuzz_pt fuzz/corpus/fuzz_pt
 */
#include "weights_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_weights_one(data, size); }

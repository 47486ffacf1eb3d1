/*
 * fuzz_safetensors.c — libFuzzer harness for the safetensors loader (header JSON,
 * offsets, dtypes), through kiln_weights_load_mem.
 * Seeds: fuzz/corpus/fuzz_safetensors/ (from fuzz/make_corpus_weights.py).
 * Build: make build/fuzz/fuzz_safetensors; run: build/fuzz/fuzz_safetensors fuzz/corpus/fuzz_safetensors
 */
#include "weights_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_weights_one(data, size); }

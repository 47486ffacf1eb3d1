/*
 * fuzz_onnx.c — libFuzzer harness for the ONNX importer: the protobuf
 * pre-scan, protobuf-c's decoding, constant conversion and graph building,
 * through kiln_onnx_parse without a directory (external data is refused, so
 * no input reaches the file system), plus kiln_onnx_sniff.
 *
 * A success must be a finished graph whose JSON form exists (names are
 * valid UTF-8) and whose weight buffers are whole; a failure must explain
 * itself and return no graph.
 *
 * Seed corpus: fuzz/corpus/fuzz_onnx/ (copied from tests/fixtures/onnx/ by
 * tests/fixtures/onnx/make_fixtures.py).
 * Build: make build/fuzz/fuzz_onnx; run: build/fuzz/fuzz_onnx fuzz/corpus/fuzz_onnx
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "onnx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)kiln_onnx_sniff(data, size);
    kiln_graph *g = NULL;
    kiln_status st = kiln_onnx_parse(data, size, NULL, &g);
    if (st == KILN_OK) {
        char *js = kiln_graph_to_json(g);
        if (!js || kiln_graph_output(g) < 0) __builtin_trap();
        free(js);
        volatile float sink = 0;
        for (size_t i = 0; i < kiln_graph_weight_count(g); i++) {
            const kiln_gweight *w = kiln_graph_weight(g, i);
            size_t n = (size_t)w->cout * (size_t)(w->cin / w->groups) * (size_t)w->k * (size_t)w->k;
            sink += w->w[0] + w->w[n - 1] + w->b[w->cout - 1];
        }
        (void)sink;
    } else if (kiln_errmsg()[0] == '\0' || g != NULL) {
        __builtin_trap();
    }
    kiln_graph_destroy(g);
    return 0;
}

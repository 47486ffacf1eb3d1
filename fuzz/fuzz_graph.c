/*
 * fuzz_graph.c — libFuzzer harness for the graph's JSON form
 * (kiln_graph_from_json), which every .kiln manifest carries.
 *
 * A graph that parses must be self-consistent: serializing it again and
 * parsing that must give the very same text (the round-trip invariant), and
 * the derived facts (sites, halo, FLOPs on a small input) must be computable
 * without faults.
 *
 * Seed corpus: fuzz/corpus/fuzz_graph/: kiln_graph_to_json of the EDSR
 * topologies x2/x3/x4 (kiln_arch_edsr_topology, R=2, F=8) and of the graphs
 * of the official CARN x2 and CARN-M checkpoints.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 20)) return 0;
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    kiln_graph *g = NULL;
    if (kiln_graph_from_json(text, &g) == KILN_OK) {
        char *a = kiln_graph_to_json(g);
        kiln_graph *h = NULL;
        if (!a || kiln_graph_from_json(a, &h) != KILN_OK) abort();
        char *b = kiln_graph_to_json(h);
        if (!b || strcmp(a, b) != 0) abort();
        for (size_t s = 0; s < kiln_graph_site_count(g); s++)
            if (kiln_graph_site_tensor(g, s) < 0 || (size_t)kiln_graph_site_tensor(g, s) >= kiln_graph_tensor_count(g))
                abort();
        (void)kiln_graph_halo(g);
        (void)kiln_graph_flops(g, 4, 4);
        (void)kiln_graph_params(g);
        for (size_t i = 0; i < kiln_graph_node_count(g); i++)
            if (kiln_graph_node(g, i)->op == KILN_OP_CONV) {
                kiln_gchain c;
                kiln_graph_chain(g, (int)i, &c);
            }
        free(a);
        free(b);
        kiln_graph_destroy(h);
    }
    kiln_graph_destroy(g);
    free(text);
    return 0;
}

/* fuzz_config.c — libFuzzer harness for kiln_recipe_parse (core/recipe.c).
 *
 * Beyond "no crash, no leak, no UB", it checks the recipe invariants on every
 * input that parses: the canonical JSON parses back to itself with the same
 * hash, resolution answers for every op/site of a small model the same for
 * both, the check against a small EDSR graph agrees for both, and a failed
 * parse always leaves at least one error with a message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "recipe.h"

static const char *const ops[] = {"sub_mean", "head.0", "body.0.body.0", "body.0.body.2",
                                  "body.1", "tail.0.0", "tail.0.2", "tail.1", "add_mean",
                                  "body.0.body.1", "nonsense"};
/* Activation sites by the op that makes them (name, op type). */
static const char *const act_ops[][2] = {{"input", "input"}, {"mul255", "mul"}, {"sub_mean", "conv"},
                                         {"head.0", "conv"}, {"body.0.body.1", "relu"},
                                         {"body.0.body.2", "conv"}, {"body.0.mul", "mul"},
                                         {"body.0.add", "add"}, {"add", "add"}, {"tail.0.1", "pixel_shuffle"},
                                         {"b1.cat1", "concat"}, {"bogus", "sigmoid"}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kiln_recipe *r = NULL;
    kiln_config_errors *e = NULL;
    kiln_status st = kiln_recipe_parse((const char *)data, size, &r, &e);
    if (st != KILN_OK) {
        if (r) abort();
        if ((st == KILN_ERR_CONFIG || st == KILN_ERR_FORMAT) &&
            (kiln_config_errors_count(e) == 0 || !kiln_errmsg()[0]))
            abort();
        for (size_t i = 0; i < kiln_config_errors_count(e); i++)
            if (!kiln_config_errors_path(e, i) || !kiln_config_errors_message(e, i)[0]) abort();
        free(kiln_config_errors_render(e));
        kiln_config_errors_free(e);
        return 0;
    }
    if (e) abort();
    char *j = kiln_recipe_to_json(r);
    char h[65], h2[65];
    kiln_recipe_hash(r, h);
    kiln_recipe *r2 = NULL;
    if (!j || kiln_recipe_parse(j, strlen(j), &r2, NULL) != KILN_OK) {
        fprintf(stderr, "canonical JSON does not parse: %s\n%s\n", kiln_errmsg(), j ? j : "");
        abort();
    }
    char *j2 = kiln_recipe_to_json(r2);
    kiln_recipe_hash(r2, h2);
    if (!j2 || strcmp(j, j2) != 0 || strcmp(h, h2) != 0) {
        fprintf(stderr, "canonical JSON not stable:\n%s\n%s\n", j, j2 ? j2 : "");
        abort();
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        kiln_qspec q;
        kiln_pspec p;
        int w = kiln_recipe_weight_qspec(r, ops[i], NULL, &q);
        int pal = kiln_recipe_pspec(r, ops[i], NULL, &p);
        if (w && pal) abort(); /* an op is never both */
        if (w != kiln_recipe_weight_qspec(r2, ops[i], NULL, &q)) abort();
        if (pal != kiln_recipe_pspec(r2, ops[i], NULL, &p)) abort();
    }
    for (size_t i = 0; i < sizeof act_ops / sizeof act_ops[0]; i++) {
        kiln_qspec q;
        if (kiln_recipe_act_qspec(r, act_ops[i][0], act_ops[i][1], &q) !=
            kiln_recipe_act_qspec(r2, act_ops[i][0], act_ops[i][1], &q))
            abort();
    }
    /* the check against a graph: a small EDSR, built once */
    static kiln_graph *g;
    if (!g && kiln_arch_edsr_topology(2, 8, 2, 1.0f, &g) != KILN_OK) abort();
    kiln_config_errors *ce = NULL;
    kiln_status cs = kiln_recipe_check_model(r, g, &ce);
    if (cs != KILN_OK && (cs != KILN_ERR_CONFIG || kiln_config_errors_count(ce) == 0)) abort();
    if (cs == KILN_OK && kiln_recipe_check_model(r2, g, NULL) != KILN_OK) abort();
    kiln_config_errors_free(ce);
    kiln_recipe_options o;
    kiln_recipe_get_options(r, &o);
    (void)kiln_recipe_has_activations(r, g);
    free(j), free(j2);
    kiln_recipe_destroy(r2);
    kiln_recipe_destroy(r);
    return 0;
}

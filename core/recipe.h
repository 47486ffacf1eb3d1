/*
 * recipe.h — compression configs (JSON, the schema of docs/config.md), the
 * built-in presets, validation with every problem reported by JSON path, and
 * the resolution the compression pipeline asks: "which qspec/pspec applies to
 * this conv / this activation site?".
 *
 * A config mirrors coreai_opt (SPEC §3.1, §4, §7): a global scope, per-op-type
 * and per-op-name (fnmatch glob) scopes, `null` to exempt. Resolution, per
 * role (weight / input / output) or per palettization spec:
 *   op_name (most specific matching pattern first) > op_type > global.
 * Among matching op_name patterns: an exact name (no wildcard) beats any glob;
 * then more literal characters; then fewer '*'; then the byte-wise smaller
 * pattern. A pattern mapped to `null` exempts the op from every role.
 *
 * Ops are a graph's (graph.h): op types are its op names (conv, relu,
 * leaky_relu, prelu, add, mul, concat, pixel_shuffle, global_avg_pool,
 * sigmoid, channel_mul, upsample, and input for the network input); op_name
 * patterns match weight names (the checkpoint's module paths, "body.3.body.0")
 * for weight specs and palettization, and the name of the node producing an
 * activation site for activation specs (docs/config.md has EDSR's).
 *
 * Parsing checks a config on its own (syntax, values, op_type keys and
 * roles); kiln_recipe_check_model checks it against a graph: every op_name
 * pattern of a config must name something there, and no conv may be both
 * palettized and weight-quantized (SPEC §4: the joint recipe palettizes, then
 * quantizes activations only). The presets apply to every architecture: an
 * op_name entry of a preset that names nothing in a graph does not apply.
 * kiln_recipe_weight_qspec() returns 0 for palettized convs either way.
 *
 * A kiln_recipe is immutable after parsing: share it freely between threads.
 */
#ifndef KILN_RECIPE_H
#define KILN_RECIPE_H

#include <stddef.h>

#include "graph.h"
#include "palette.h"
#include "quant.h"
#include "status.h"

typedef struct kiln_recipe kiln_recipe;
typedef struct kiln_config_errors kiln_config_errors;

/* Extras under "options" (kiln §7 techniques the pipeline may apply). */
typedef struct kiln_recipe_options {
    int bias_correction; /* correct conv biases with calibration-set means        */
    int equalization;    /* cross-layer equalization over conv→ReLU→conv blocks   */
} kiln_recipe_options;

/* ---- presets ------------------------------------------------------------ */

/* A built-in config by name ("fp32", "w8a8", "w8", "p4", "p4a8", "w8a8+", "p4a8+",
 * "p4g16", "p4g16a8+"); KILN_ERR_NOT_FOUND naming the known ones otherwise. */
kiln_status kiln_recipe_preset(const char *name, kiln_recipe **out);
/* NULL-terminated list of preset names, in a stable order. */
const char *const *kiln_preset_names(void);
/* {"<name>": <canonical config>, ...} for every preset; malloc'ed (free()),
 * NULL only when out of memory. */
char *kiln_presets_json(void);

/* ---- parsing ------------------------------------------------------------ */

/* Parse and validate a config. On success *out is the recipe (and *errs, if
 * errs is given, is NULL). On failure returns KILN_ERR_FORMAT (not JSON: one
 * error with line/column) or KILN_ERR_CONFIG (every validation problem, each
 * with its JSON path), *out is NULL, *errs (if errs is given) lists the
 * problems (free with kiln_config_errors_free) and kiln_errmsg() holds the
 * first one as "path: message". */
kiln_status kiln_recipe_parse(const char *json, size_t len, kiln_recipe **out,
                              kiln_config_errors **errs);
/* Read and parse a config file (errors prefixed with the path). */
kiln_status kiln_recipe_load_file(const char *path, kiln_recipe **out,
                                  kiln_config_errors **errs);
/* A preset name, or else the path of a JSON config file. */
kiln_status kiln_recipe_load(const char *preset_or_path, kiln_recipe **out,
                             kiln_config_errors **errs);
void kiln_recipe_destroy(kiln_recipe *r);

size_t kiln_config_errors_count(const kiln_config_errors *e);
/* JSON path of error i ("quantization.op_name[\"body.*\"].output.dtype";
 * "" for the document itself), and its message. */
const char *kiln_config_errors_path(const kiln_config_errors *e, size_t i);
const char *kiln_config_errors_message(const kiln_config_errors *e, size_t i);
/* "path: message\n" per error; malloc'ed (free()), NULL if out of memory. */
char *kiln_config_errors_render(const kiln_config_errors *e);
void kiln_config_errors_free(kiln_config_errors *e);

/* ---- identity ----------------------------------------------------------- */

const char *kiln_recipe_name(const kiln_recipe *r);
/* Canonical JSON: sorted keys, compact, every default filled in, so equal
 * configs print equal; parses back to the same recipe. malloc'ed (free()). */
char *kiln_recipe_to_json(const kiln_recipe *r);
/* SHA-256 (lower-case hex) of kiln_recipe_to_json(r). */
void kiln_recipe_hash(const kiln_recipe *r, char hex[65]);

/* ---- the check against a model ----------------------------------------- */

/* Validate r against graph g (the model it is about to compress), reporting
 * every problem by JSON path as kiln_recipe_parse does (KILN_ERR_CONFIG,
 * *errs if given, kiln_errmsg() = the first "path: message"):
 *   - an op_name pattern (either section) that matches nothing in g: no node,
 *     no weight, not the input (palettization: no weight); the message lists
 *     a few of g's op names. Entries of a preset are exempt: they do not
 *     apply where they name nothing;
 *   - an op_name entry whose weight role matches no weight, or whose output
 *     role matches no op that makes an activation site;
 *   - a conv (weight) both palettized and weight-quantized, at the path of
 *     the weight spec, naming the weight and the palettization scope. */
kiln_status kiln_recipe_check_model(const kiln_recipe *r, const kiln_graph *g,
                                    kiln_config_errors **errs);

/* ---- resolution (used by the compression pipeline) ---------------------- */

/* 1 = quantize the weights of conv weight op_name (a graph weight name) with
 * *out, 0 = leave them (exempt, palettized, or no weight spec). op_type may
 * be NULL: weights are convs ("conv"); any other type gives 0. */
int kiln_recipe_weight_qspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                             kiln_qspec *out);
/* 1 = palettize this conv weight with *out, 0 = not. */
int kiln_recipe_pspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                      kiln_pspec *out);
/* 1 = quantize the activation site made by op op_name of type op_type (a
 * kiln_op_name; "input"/"input" for the network input) with *out, 0 = not.
 * The network input uses the "input" role, every other site its op's
 * "output" role. out->asymmetric_relu is set only for relu ops and only when
 * the config asks for it. */
int kiln_recipe_act_qspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                          kiln_qspec *out);
/* The same for activation site `site` of g (SPEC §3.6 order), through the
 * node that produces it (kiln_graph_site_node). */
int kiln_recipe_site_qspec(const kiln_recipe *r, const kiln_graph *g, size_t site,
                           kiln_qspec *out);

/* Whether some weight / site of g gets each kind of compression. */
int kiln_recipe_has_activations(const kiln_recipe *r, const kiln_graph *g);
int kiln_recipe_has_palettization(const kiln_recipe *r, const kiln_graph *g);
int kiln_recipe_has_weight_quant(const kiln_recipe *r, const kiln_graph *g);
void kiln_recipe_get_options(const kiln_recipe *r, kiln_recipe_options *out);

#endif

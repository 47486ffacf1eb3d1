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
 * An op cannot be palettized AND weight-quantized (SPEC §4: the joint recipe
 * palettizes, then quantizes activations only): such a config is refused at
 * parse time, and kiln_recipe_weight_qspec() returns 0 for palettized ops.
 *
 * Ops (state-dict prefixes) and activation sites: see docs/config.md.
 *
 * A kiln_recipe is immutable after parsing: share it freely between threads.
 */
#ifndef KILN_RECIPE_H
#define KILN_RECIPE_H

#include <stddef.h>

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

/* ---- resolution (used by the compression pipeline) ---------------------- */

/* Op type of an EDSR op name ("conv", "relu", "mul", "add", "pixel_shuffle",
 * "input"), or NULL if the name is not an EDSR op. */
const char *kiln_recipe_op_type(const char *op_name);
/* The op of an activation site (SPEC §3.5 / model.h site names): writes the op
 * name into op (n bytes; "body.16" for body_conv when resblocks is 16) and
 * returns its type, or NULL for an unknown site name. */
const char *kiln_recipe_site_op(const char *site_name, int resblocks, char *op, size_t n);

/* 1 = quantize this conv's weights with *out, 0 = leave them (op not a conv,
 * exempt, palettized, or no weight spec). op_type may be NULL (derived from
 * the name). */
int kiln_recipe_weight_qspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                             kiln_qspec *out);
/* 1 = palettize this conv's weights with *out, 0 = not. */
int kiln_recipe_pspec(const kiln_recipe *r, const char *op_name, const char *op_type,
                      kiln_pspec *out);
/* 1 = quantize this activation site with *out, 0 = not. resblocks (R) names
 * the body conv ("body_conv" is op "body.R"). The network input uses the
 * "input" role, every other site its op's "output" role. out->asymmetric_relu
 * is set only on ReLU sites and only when the config asks for it. */
int kiln_recipe_site_qspec(const kiln_recipe *r, const char *site_name, int resblocks,
                           kiln_qspec *out);

/* Whether some EDSR op (R <= 256, any scale) gets each kind of compression. */
int kiln_recipe_has_activations(const kiln_recipe *r);
int kiln_recipe_has_palettization(const kiln_recipe *r);
int kiln_recipe_has_weight_quant(const kiln_recipe *r);
void kiln_recipe_get_options(const kiln_recipe *r, kiln_recipe_options *out);

#endif

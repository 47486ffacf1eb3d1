/*
 * graph.h — the network as data: named tensors and the nodes that make
 * them. Every importer (PyTorch/safetensors state dicts of the known SR
 * architectures, ONNX) builds one; every stage (the FP32 and simulated
 * engines in model.h, calibration, compression, the .kiln artifact, the
 * integer engine in int8.h, tiling) walks one.
 *
 * Tensors are 3-D feature maps [C, H, W] of the one image being processed
 * (no batch). Their height and width are the input's times an integer
 * factor (pixel shuffle and nearest upsampling multiply it), or 1 x 1 after
 * a global average pool ("pooled": broadcast again by a channel-wise mul).
 * Tensor 0 is the network input, 3 channels (RGB in [0, 1]). Nodes are kept
 * in execution order: a node reads only tensors made before it.
 *
 * Ops (SPEC §3.6 says which outputs are activation sites):
 *   conv          k x k, odd k, stride 1, "same" padding, groups >= 1, bias
 *                 optional; its parameters are a *weight* (below)
 *   relu, leaky_relu(alpha), prelu(slope per channel, or one slope)
 *   add           two tensors of one shape
 *   mul           by a constant (EDSR's 255·x and ·res_scale; a division by
 *                 a constant is a mul by its inverse, computed as a division
 *                 when the importer says so, see div below)
 *   concat        along channels, 2..KILN_GRAPH_MAX_IN inputs of one size
 *   pixel_shuffle factor r (C·r² -> C)
 *   global_avg_pool  [C,H,W] -> [C,1,1]
 *   sigmoid
 *   channel_mul   x [C,H,W] times s [C,1,1] (RCAN channel attention)
 *   upsample      nearest, integer factor (2)
 * MeanShift is a 1x1 conv (not folded): its weight is marked `meanshift`,
 * which changes nothing in the arithmetic and lets reports and the
 * parameter count treat it as the constant it is.
 *
 * Weights are separate from the nodes that use them: CARN-M runs one
 * residual unit three times, so three conv nodes share one weight, which is
 * compressed once, stored once and counted once. A weight's name is the
 * checkpoint's module path ("body.3.body.0", "b1.b1.body.0"); recipes match
 * op_name globs against weight names for weight specs and against node
 * names for activation specs.
 *
 * The graph's output is one 3-channel tensor; the network's result is that
 * tensor divided by `out_div` (EDSR's /255, not an op and not a site; 1 for
 * networks that work in [0, 1]).
 */
#ifndef KILN_GRAPH_H
#define KILN_GRAPH_H

#include <stddef.h>

#include "status.h"

#define KILN_GRAPH_NAME_MAX 96 /* tensor, node and weight names, NUL included */
#define KILN_GRAPH_MAX_IN 16   /* inputs of one concat                        */
#define KILN_GRAPH_MAX_NODES 100000
#define KILN_GRAPH_MAX_K 15    /* largest conv kernel                          */

typedef enum kiln_op {
    KILN_OP_INPUT = 0, /* the network input (tensor 0's producer, not a node) */
    KILN_OP_CONV,
    KILN_OP_RELU,
    KILN_OP_LEAKY_RELU,
    KILN_OP_PRELU,
    KILN_OP_ADD,
    KILN_OP_MUL,
    KILN_OP_CONCAT,
    KILN_OP_PIXEL_SHUFFLE,
    KILN_OP_GAP,
    KILN_OP_SIGMOID,
    KILN_OP_CHANNEL_MUL,
    KILN_OP_UPSAMPLE,
    KILN_OP_COUNT
} kiln_op;

/* "conv", "relu", "leaky_relu", "prelu", "add", "mul", "concat",
 * "pixel_shuffle", "global_avg_pool", "sigmoid", "channel_mul", "upsample";
 * "input" for KILN_OP_INPUT. These are the recipe's op_type keys. */
const char *kiln_op_name(kiln_op op);
/* The op of a name above, or -1. */
int kiln_op_from_name(const char *name);

typedef struct kiln_graph kiln_graph;

typedef struct kiln_gweight {
    char name[KILN_GRAPH_NAME_MAX];
    int cout, cin, k, groups; /* cin is the full input channel count       */
    int has_bias;             /* 0: the bias is zero and stored nowhere    */
    int meanshift;
    float *w; /* [cout][cin/groups][k][k]; NULL in a topology-only graph    */
    float *b; /* [cout] (zeros without bias); NULL in a topology-only graph */
} kiln_gweight;

typedef struct kiln_gnode {
    kiln_op op;
    char name[KILN_GRAPH_NAME_MAX];
    int nin;
    int in[KILN_GRAPH_MAX_IN]; /* tensor ids                                 */
    int out;                   /* tensor id                                  */
    int weight;                /* conv: weight id; else -1                   */
    float alpha;               /* leaky_relu slope; mul constant             */
    int div;                   /* mul: 1 = divide by alpha instead           */
    int factor;                /* pixel_shuffle / upsample factor            */
    int nslope;                /* prelu: 1 or C slopes                       */
    float *slope;
} kiln_gnode;

typedef struct kiln_gtensor {
    char name[KILN_GRAPH_NAME_MAX];
    int c;
    int sfac;     /* spatial size = input size * sfac (when not pooled) */
    int pooled;   /* 1 x 1 (global average pool and what follows it)    */
    int producer; /* node id, -1 for the input                           */
    int site;     /* activation-site index (SPEC §3.6), or -1            */
    int nuse;     /* consuming nodes (+1 for the graph output)           */
} kiln_gtensor;

/* ---- building (importers) ------------------------------------------------ */

/* A graph with its input tensor (id 0, 3 channels) named `input_name`. */
kiln_status kiln_graph_create(const char *arch, const char *input_name, kiln_graph **out);
void kiln_graph_destroy(kiln_graph *g);
kiln_status kiln_graph_clone(const kiln_graph *g, kiln_graph **out);

/* Add a weight; w and b (b may be NULL: no bias) are copied; w may be NULL
 * for a topology-only graph (then b must be NULL too; has_bias says whether
 * the real weight has one). Fails on a repeated name or a bad shape
 * (cout, cin >= 1, cin and cout divisible by groups, k odd <= MAX_K). */
kiln_status kiln_graph_add_weight(kiln_graph *g, const char *name, int cout, int cin, int k,
                                  int groups, const float *w, const float *b, int has_bias,
                                  int meanshift, int *id);
/* Nodes. Each makes a new tensor `out_name` (unique among tensors) and
 * returns its id; shapes are checked here, so a wrong wiring fails at once
 * with the node's name. */
kiln_status kiln_graph_conv(kiln_graph *g, const char *name, const char *out_name, int in, int weight,
                            int *out);
/* relu, sigmoid, global_avg_pool: param unused; leaky_relu: alpha; mul:
 * the constant (multiply); pixel_shuffle, upsample: the factor. */
kiln_status kiln_graph_unary(kiln_graph *g, kiln_op op, const char *name, const char *out_name, int in,
                             float param, int *out);
/* mul by a constant, as a division x / d (bit-exact to what a network that
 * divides computes). */
kiln_status kiln_graph_div(kiln_graph *g, const char *name, const char *out_name, int in, float d, int *out);
kiln_status kiln_graph_prelu(kiln_graph *g, const char *name, const char *out_name, int in,
                             const float *slope, int nslope, int *out);
/* add (a + b), channel_mul (a * b, b pooled with a's channels). */
kiln_status kiln_graph_binary(kiln_graph *g, kiln_op op, const char *name, const char *out_name, int a,
                              int b, int *out);
kiln_status kiln_graph_concat(kiln_graph *g, const char *name, const char *out_name, const int *in, int nin,
                              int *out);
/* Seal the graph: output tensor (3 channels, not pooled), the divisor of
 * the result, and the activation sites of SPEC §3.6. Nothing can be added
 * afterwards. */
kiln_status kiln_graph_finish(kiln_graph *g, int output, float out_div);

/* ---- reading ---------------------------------------------------------------- */

const char *kiln_graph_arch(const kiln_graph *g); /* "edsr", "carn", "carn_m", "onnx", ... */
/* A one-line description set by the importer ("EDSR, 16 blocks, 64
 * features, x2, res_scale 1"); "" when none. Kept in the JSON form. */
void kiln_graph_set_desc(kiln_graph *g, const char *desc);
const char *kiln_graph_desc(const kiln_graph *g);
size_t kiln_graph_tensor_count(const kiln_graph *g);
const kiln_gtensor *kiln_graph_tensor(const kiln_graph *g, size_t i);
size_t kiln_graph_node_count(const kiln_graph *g);
const kiln_gnode *kiln_graph_node(const kiln_graph *g, size_t i);
size_t kiln_graph_weight_count(const kiln_graph *g);
const kiln_gweight *kiln_graph_weight(const kiln_graph *g, size_t i);
long kiln_graph_weight_find(const kiln_graph *g, const char *name);
int kiln_graph_output(const kiln_graph *g);
float kiln_graph_out_div(const kiln_graph *g);
/* Overall upscaling factor (the output tensor's sfac). */
int kiln_graph_scale(const kiln_graph *g);

/* Activation sites, in execution order: site i is tensor site_tensor(i). */
size_t kiln_graph_site_count(const kiln_graph *g);
int kiln_graph_site_tensor(const kiln_graph *g, size_t site);
/* The node whose output is the site (its op name and op type answer the
 * recipe's per-op activation specs); -1 for the input site. */
int kiln_graph_site_node(const kiln_graph *g, size_t site);

/* The conv nodes that use weight w, and the input tensors they read. */
size_t kiln_graph_weight_uses(const kiln_graph *g, size_t w, int *nodes, size_t cap);

/* Replace a weight's data (copied). */
kiln_status kiln_graph_set_weight(kiln_graph *g, size_t w, const float *weight, const float *bias);

/* Learnable parameters: every weight once (MeanShift excluded), biases
 * with has_bias, PReLU slopes. */
size_t kiln_graph_params(const kiln_graph *g);
/* FLOPs of one pass on an h x w input (2 per multiply-add; convs only). */
double kiln_graph_flops(const kiln_graph *g, int h, int w);
/* Pixels of context one output pixel needs on each side, in input pixels
 * (the receptive-field radius, rounded up): the tiling halo. A pooled
 * tensor makes every output depend on the whole image: -1. */
int kiln_graph_halo(const kiln_graph *g);

/* ---- fusion -------------------------------------------------------------------
 * The chain of elementwise nodes a conv's epilogue can absorb, as both
 * engines fuse it (one rule for both): conv, then optionally a relu (SPEC
 * §3.6 fusion: the conv output is then no site), then optionally a mul by a
 * constant, then optionally an add of a tensor made before the conv, then
 * optionally a relu after the add (CARN's relu(h + x)); or, instead of
 * mul/add, a pixel shuffle. Each link consumes the previous link's output
 * alone, and no link but the last makes the graph output. */
typedef struct kiln_gchain {
    int conv;         /* the conv node                                          */
    int relu;         /* relu node fused into the conv, or -1                   */
    int mul;          /* mul node, or -1                                        */
    int add;          /* add node, or -1                                        */
    int residual;     /* with add: the tensor added (made before the conv)      */
    int post_relu;    /* relu node after the add, or -1                         */
    int shuffle;      /* pixel_shuffle node, or -1                              */
    int last;         /* the chain's last node                                  */
    int out;          /* the chain's output tensor                              */
} kiln_gchain;
/* The longest chain starting at conv node `conv` of a finished graph. */
void kiln_graph_chain(const kiln_graph *g, int conv, kiln_gchain *c);

/* ---- buffer reuse ----------------------------------------------------------------
 * The engines' one rule for which working buffer ("slot") holds which
 * tensor. An engine runs a plan of nsteps steps; step k makes tensor out[k]
 * (with tmp && tmp[k], it also needs a scratch slot while it runs) and reads
 * the tensors inputs(ctx, k, ins) returns (how many; at most
 * KILN_GRAPH_MAX_IN + 1). The input tensor takes slot 0; each step's output
 * takes the lowest slot free when the step starts (so never one of its own
 * inputs), then its scratch slot, which is free again right after the step;
 * an input's slot is free again after the last step that reads it; the
 * graph output's never is. slot_of[t] gets the slot of every tensor a step
 * makes (-1 for the others), tmp_slot[k] the scratch slot (-1 without).
 * Returns the number of slots, or -1 when out of memory. */
typedef int (*kiln_graph_step_inputs)(const void *ctx, size_t k, int *ins);
int kiln_graph_plan_slots(const kiln_graph *g, size_t nsteps, const int *out, const unsigned char *tmp,
                          kiln_graph_step_inputs inputs, const void *ctx, int *slot_of, int *tmp_slot);

/* ---- serialization (the .kiln manifest) -------------------------------------
 * The topology as a JSON object (nodes, tensors, weights' shapes and flags,
 * constants as exact floats), without weight data. */
char *kiln_graph_to_json(const kiln_graph *g);
/* Rebuild a topology-only graph (every check of the builder applies, so a
 * hostile manifest fails with a message). */
kiln_status kiln_graph_from_json(const char *json, kiln_graph **out);

#endif

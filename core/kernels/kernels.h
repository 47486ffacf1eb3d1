/*
 * kernels.h — internal interface between conv.c and the SIMD conv kernels.
 *
 * Not a public header: only core/conv.c and the kernel sources include it.
 * A kernel computes whole output rows for a range of output-channel blocks;
 * conv.c validates shapes, owns the packed weights and splits rows over the
 * pool. Every output element is produced by the same instruction sequence
 * whatever rows/blocks a call covers, which is what makes results
 * bit-identical for any thread count.
 */
#ifndef KILN_KERNELS_H
#define KILN_KERNELS_H

#include <stddef.h>

#include "conv.h"

/* Output channels per register block of the AVX2 direct kernel. */
#define KILN__AVX2_OB 4

typedef struct kiln__conv_job {
    const float *packed; /* kernel-specific packed weights (see the packer) */
    const float *bias;   /* [nblocks * OB], zero-padded past cout          */
    const kiln_fmap *in;
    kiln_fmap *out;
    const kiln_fmap *res; /* NULL or same shape as out                    */
    int cin, cout, k, nblocks;
    int relu;
    float res_scale;
    /* NULL, or the epilogue's three fake-quantization stages {out, scaled,
     * sum} (conv.h): only kernels that say so apply them (the AVX-512
     * Winograd kernel); for the others conv.c passes NULL and runs the
     * stages itself on each finished band. */
    const kiln_conv_fq *fq;
} kiln__conv_job;

/* Direct AVX2+FMA convolution (k = 1 or 3).
 * Packed layout: [block b][ci][ky][kx][o < OB], block b holding output
 * channels b*OB .. b*OB+OB-1 (zeros past cout). */
size_t kiln__conv_avx2_packed_floats(int cout, int cin, int k);
void kiln__conv_avx2_pack(int cout, int cin, int k, const float *oihw, float *packed);
/* Output row y (0-based interior row), output-channel blocks [b0, b1). */
void kiln__conv_avx2_rows(const kiln__conv_job *job, int y, int b0, int b1);

/* Direct AVX-512F+FMA convolution (k = 1 or 3): same packed layout and
 * packer as the AVX2 kernel (OB = KILN__AVX2_OB), same bits, 16-pixel
 * vectors. Output row y, output-channel blocks [b0, b1). */
void kiln__conv_avx512_rows(const kiln__conv_job *job, int y, int b0, int b1);

/* Winograd F(4x4, 3x3), AVX2+FMA (k = 3 only).
 * Packed layout: [xi < 36][block b][ci][o < OB], the transformed weights
 * U = G g G^T. Work items are (band of 4 rows, chunk of XT 4-pixel tiles);
 * each needs kiln__wino_scratch_floats(cin) floats of 64-byte aligned,
 * per-thread scratch. */
#define KILN__WINO_XT 48
size_t kiln__wino_packed_floats(int cout, int cin);
void kiln__wino_pack(int cout, int cin, const float *oihw, float *packed);
/* The same packing with blocks of ob output channels (both kernels use it). */
size_t kiln__wino_packed_floats_ob(int cout, int cin, int ob);
void kiln__wino_pack_ob(int cout, int cin, int ob, const float *oihw, float *packed);
size_t kiln__wino_scratch_floats(int cin);
int kiln__wino_chunks(int w);
void kiln__wino_item(const kiln__conv_job *job, int ty, int chunk, float *scratch);

/* Winograd F(4x4, 3x3), AVX-512F/DQ/BW/VL + FMA (k = 3 only): same math and
 * work items as the AVX2 kernel, 16-tile vectors, chunks of XT = 64 tiles
 * (one chunk per 240-wide row) and blocks of OB output channels; job.nblocks
 * must be kiln__wino512_nblocks(cout). Packed layout:
 * [xi < 36][block b][ci][o < OB]. */
#define KILN__W512_OB 6
#define KILN__W512_XT 64
size_t kiln__wino512_packed_floats(int cout, int cin);
void kiln__wino512_pack(int cout, int cin, const float *oihw, float *packed);
size_t kiln__wino512_scratch_floats(int cin);
int kiln__wino512_chunks(int w);
int kiln__wino512_nblocks(int cout);
void kiln__wino512_item(const kiln__conv_job *job, int ty, int chunk, float *scratch);

#endif

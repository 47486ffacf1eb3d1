/*
 * conv_u8_ref.c — scalar reference integer convolution, uint8 activations.
 *
 * Same contract and argument as conv_s8_ref.c (exact int32 sums, fixed
 * order (tap, ci)); the only difference is that activation bytes are read as
 * unsigned codes 0..255 (uint8 sites: asymmetric ReLU outputs, uint8 specs).
 */
#include "int8.h"

void kiln__conv_u8_ref(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc)
{
    const int k = p->k, kk = k * k, off = k == 1 ? 1 : 0;
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    for (int x = 0; x < npx; x++)
        for (int o = 0; o < p->coutp; o++) {
            int32_t s = 0;
            for (int t = 0; o < p->cout && t < kk; t++) {
                const int ky = t / k, kx = t % k;
                const uint8_t *a = in->data + ((size_t)(y + ky + off) * (size_t)in->rowpix +
                                               (size_t)(x + kx + off)) *
                                                  (size_t)in->cpad;
                const int8_t *w = p->w + ((size_t)o * kk + t) * (size_t)p->cinp;
                for (int ci = 0; ci < p->cin; ci++) s += (int32_t)w[ci] * (int32_t)a[ci];
            }
            acc[(size_t)x * p->coutp + o] = s;
        }
}

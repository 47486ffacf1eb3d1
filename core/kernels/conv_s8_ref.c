/*
 * conv_s8_ref.c — scalar reference integer convolution, int8 activations.
 *
 * The oracle every SIMD integer kernel is compared with bit for bit
 * (tests/test_int8_kernels.c). Plain C, one fixed order (tap, ci), exact:
 * a product of two 8-bit codes fits 16 bits and a sum of 9*cinp of them fits
 * int32 for cinp < 7300 (kiln__q8w_pack refuses more), so the result is the
 * mathematical sum whatever the order — which is why the SIMD kernels can
 * reorder freely and still match.
 *
 * Layouts: see int8.h (qmap NHWC with a 1-pixel border; weights
 * [cout][k*k][cinp]). k = 1 reads the centre pixel, k = 3 its neighbourhood.
 * Reads the map and weights; writes acc[npx * coutp] only.
 */
#include "int8.h"

void kiln__conv_s8_ref(const kiln__q8w *p, const kiln_qmap *in, int y, int32_t *acc)
{
    const int k = p->k, kk = k * k, off = k == 1 ? 1 : 0;
    const int npx = (in->w + KILN__Q8_PX - 1) / KILN__Q8_PX * KILN__Q8_PX;
    for (int x = 0; x < npx; x++)
        for (int o = 0; o < p->coutp; o++) {
            int32_t s = 0;
            for (int t = 0; o < p->cout && t < kk; t++) {
                const int ky = t / k, kx = t % k;
                const int8_t *a = (const int8_t *)in->data +
                                  ((size_t)(y + ky + off) * (size_t)in->rowpix + (size_t)(x + kx + off)) *
                                      (size_t)in->cpad;
                const int8_t *w = p->w + ((size_t)o * kk + t) * (size_t)p->cinp;
                for (int ci = 0; ci < p->cin; ci++) s += (int32_t)w[ci] * (int32_t)a[ci];
            }
            acc[(size_t)x * p->coutp + o] = s;
        }
}

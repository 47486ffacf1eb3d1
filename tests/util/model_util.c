/* model_util.c — see model_util.h. */
#include "model_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "check.h"

void kiln_test_image(kiln_image *img, int w, int h, unsigned seed)
{
    if (kiln_image_alloc(img, w, h) != KILN_OK) return;
    unsigned st = seed;
    float a = kiln_test_randf(&st, 0.05f, 0.3f), b = kiln_test_randf(&st, 0.05f, 0.3f);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float v = 128 + 90 * sinf(a * x + b * y + (float)c) + kiln_test_randf(&st, -30, 30);
                img->rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
}

float *kiln_test_forward(kiln_model *m, const kiln_image *lr, const kiln_site_hook *hook, size_t *n)
{
    int s = kiln_model_scale(m);
    *n = (size_t)3 * lr->w * s * lr->h * s;
    float *sr = malloc(*n * sizeof(float));
    if (sr && kiln_model_forward(m, lr, sr, NULL, hook) != KILN_OK) {
        fprintf(stderr, "\n    forward: %s\n", kiln_errmsg());
        free(sr);
        return NULL;
    }
    return sr;
}

const char *kiln_test_dataset(int n, int w, int h)
{
    static char root[512];
    char p[600];
    snprintf(root, sizeof root, "%s/ds", kiln_test_tmpdir());
    mkdir(root, 0755);
    snprintf(p, sizeof p, "%s/HR", root);
    mkdir(p, 0755);
    for (int i = 0; i < n; i++) {
        kiln_image hr;
        kiln_test_image(&hr, w + 2 * i, h, 300 + (unsigned)i);
        snprintf(p, sizeof p, "%s/HR/img%d.png", root, i);
        CHECK_OK(kiln_png_write(p, &hr));
        kiln_image_free(&hr);
    }
    return root;
}

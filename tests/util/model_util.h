/*
 * model_util.h — helpers the model-level tests share: deterministic test
 * images and a forward pass into a fresh buffer.
 */
#ifndef KILN_TEST_MODEL_UTIL_H
#define KILN_TEST_MODEL_UTIL_H

#include <stddef.h>

#include "image.h"
#include "model.h"

/* A smooth random RGB image (sines plus noise) of w x h, from seed. */
void kiln_test_image(kiln_image *img, int w, int h, unsigned seed);
/* kiln_model_forward into a malloc'ed buffer (*n floats); NULL on failure,
 * with the error printed. */
float *kiln_test_forward(kiln_model *m, const kiln_image *lr, const kiln_site_hook *hook, size_t *n);

/* An HR-only dataset of n test images (w + 2i) x h under the test's
 * temporary folder ("<tmp>/ds"); returns its path (a static buffer). */
const char *kiln_test_dataset(int n, int w, int h);

#endif

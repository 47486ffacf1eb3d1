/* test_dataset.c — dataset folders: the real B100 (order, split, pairs),
 * HR-only folders (LR made by downscale), and broken folders with the errors
 * they must produce. Temporary datasets are built in kiln_test_tmpdir(). */
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "util/check.h"

static char *path_join(char *buf, size_t cap, const char *a, const char *b)
{
    snprintf(buf, cap, "%s/%s", a, b);
    return buf;
}

static void write_random_png(const char *path, int w, int h, unsigned seed)
{
    kiln_image im;
    kiln_image_alloc(&im, w, h);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) im.rgb[i] = (uint8_t)kiln_test_rand(&seed);
    CHECK_OK(kiln_png_write(path, &im));
    kiln_image_free(&im);
}

/* A fresh dataset folder under the test tmpdir; HR ids given; returns its path. */
static const char *make_dataset(const char *tag, const char *const *ids, int n, int with_lr,
                                int scale)
{
    static char root[1024];
    char p[1400], q[1400];
    snprintf(root, sizeof root, "%s/%s", kiln_test_tmpdir(), tag);
    mkdir(root, 0755);
    mkdir(path_join(p, sizeof p, root, "HR"), 0755);
    if (with_lr) {
        mkdir(path_join(p, sizeof p, root, "LR_bicubic"), 0755);
        snprintf(p, sizeof p, "%s/LR_bicubic/X%d", root, scale);
        mkdir(p, 0755);
    }
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/HR/%s.png", root, ids[i]);
        int w = 20 + 3 * i, h = 17 + i;
        write_random_png(p, w, h, (unsigned)(i + 1) * 7919u);
        if (with_lr) {
            snprintf(q, sizeof q, "%s/LR_bicubic/X%d/%sx%d.png", root, scale, ids[i], scale);
            write_random_png(q, w / scale, h / scale, (unsigned)i + 5u);
        }
    }
    return root;
}

TEST(b100_order_split_pairs)
{
    kiln_dataset *ds = NULL;
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), 2, &ds));
    if (!ds) return;
    CHECK_EQ_INT(kiln_dataset_count(ds), 100);
    CHECK_EQ_INT(kiln_dataset_scale(ds), 2);
    CHECK_EQ_INT(kiln_dataset_has_lr(ds), 1);
    for (size_t i = 1; i < kiln_dataset_count(ds); i++)
        CHECK(strcmp(kiln_dataset_name(ds, i - 1), kiln_dataset_name(ds, i)) < 0);
    /* byte-wise: "119082.png" < "12084.png" even though 119082 > 12084 */
    long i119 = -1, i120 = -1;
    for (size_t i = 0; i < kiln_dataset_count(ds); i++) {
        if (strcmp(kiln_dataset_name(ds, i), "119082.png") == 0) i119 = (long)i;
        if (strcmp(kiln_dataset_name(ds, i), "12084.png") == 0) i120 = (long)i;
    }
    CHECK(i119 >= 0 && i120 >= 0 && i119 < i120);
    CHECK_STR(kiln_dataset_name(ds, 0), "101085.png");
    CHECK(kiln_dataset_name(ds, 100) == NULL);

    size_t first, count;
    kiln_dataset_split(ds, KILN_SPLIT_CALIB, 20, &first, &count);
    CHECK_EQ_INT(first, 0);
    CHECK_EQ_INT(count, 20);
    kiln_dataset_split(ds, KILN_SPLIT_EVAL, 20, &first, &count);
    CHECK_EQ_INT(first, 20);
    CHECK_EQ_INT(count, 80);
    kiln_dataset_split(ds, KILN_SPLIT_ALL, 20, &first, &count);
    CHECK_EQ_INT(first, 0);
    CHECK_EQ_INT(count, 100);
    kiln_dataset_split(ds, KILN_SPLIT_EVAL, 500, &first, &count); /* clamped */
    CHECK_EQ_INT(first, 100);
    CHECK_EQ_INT(count, 0);

    kiln_image lr, hr;
    CHECK_OK(kiln_dataset_load(ds, 0, &lr, &hr));
    CHECK_EQ_INT(hr.w, 321);
    CHECK_EQ_INT(hr.h, 481);
    CHECK_EQ_INT(lr.w, 160);
    CHECK_EQ_INT(lr.h, 240);
    /* the stored LR is the MATLAB bicubic of HR (the resize test checks all) */
    kiln_image mine;
    CHECK_OK(kiln_image_downscale(&hr, 2, &mine));
    CHECK(mine.rgb && lr.rgb && memcmp(mine.rgb, lr.rgb, (size_t)160 * 240 * 3) == 0);
    kiln_image_free(&mine);
    kiln_image_free(&lr);
    kiln_image_free(&hr);
    /* either pointer may be NULL */
    CHECK_OK(kiln_dataset_load(ds, 99, &lr, NULL));
    CHECK(lr.rgb != NULL);
    kiln_image_free(&lr);
    CHECK_OK(kiln_dataset_load(ds, 99, NULL, &hr));
    CHECK(hr.rgb != NULL);
    kiln_image_free(&hr);
    CHECK_EQ_INT(kiln_dataset_load(ds, 100, &lr, &hr), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "100") != NULL);
    CHECK(lr.rgb == NULL && hr.rgb == NULL);
    kiln_dataset_close(ds);

    /* B100 has no X3 folder: LR is made from HR */
    CHECK_OK(kiln_dataset_open(kiln_test_data("B100"), 3, &ds));
    if (ds) {
        CHECK_EQ_INT(kiln_dataset_has_lr(ds), 0);
        CHECK_OK(kiln_dataset_load(ds, 0, &lr, NULL));
        CHECK_EQ_INT(lr.w, 107);
        CHECK_EQ_INT(lr.h, 160);
        kiln_image_free(&lr);
        kiln_dataset_close(ds);
    }
}

TEST(hr_only_skips_non_png_and_non_regular)
{
    const char *ids[] = {"b", "a10", "a9"};
    const char *root = make_dataset("hronly", ids, 3, 0, 2);
    char p[1400], q[1400];
    /* things that must be ignored */
    snprintf(p, sizeof p, "%s/HR/notes.txt", root);
    FILE *f = fopen(p, "w");
    fputs("x", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/HR/folder.png", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/outside.png", root);
    write_random_png(p, 8, 8, 1);
    snprintf(q, sizeof q, "%s/HR/link.png", root);
    CHECK(symlink(p, q) == 0);
    snprintf(p, sizeof p, "%s/HR/.hidden.png", root);
    write_random_png(p, 8, 8, 2);

    kiln_dataset *ds = NULL;
    CHECK_OK(kiln_dataset_open(root, 2, &ds));
    if (!ds) return;
    CHECK_EQ_INT(kiln_dataset_count(ds), 3);
    CHECK_EQ_INT(kiln_dataset_has_lr(ds), 0);
    CHECK_STR(kiln_dataset_name(ds, 0), "a10.png");
    CHECK_STR(kiln_dataset_name(ds, 1), "a9.png");
    CHECK_STR(kiln_dataset_name(ds, 2), "b.png");
    kiln_image lr, hr, ref;
    CHECK_OK(kiln_dataset_load(ds, 2, &lr, &hr));
    CHECK_OK(kiln_image_downscale(&hr, 2, &ref));
    CHECK_EQ_INT(lr.w, (20 + 3 * 0) / 2); /* "b" was written first: 20x17 */
    CHECK_EQ_INT(lr.h, 17 / 2);
    CHECK(lr.rgb && ref.rgb && memcmp(lr.rgb, ref.rgb, (size_t)lr.w * lr.h * 3) == 0);
    kiln_image_free(&lr);
    kiln_image_free(&hr);
    kiln_image_free(&ref);
    /* LR only: HR is read internally and released */
    CHECK_OK(kiln_dataset_load(ds, 0, &lr, NULL));
    CHECK(lr.rgb != NULL);
    kiln_image_free(&lr);
    kiln_dataset_close(ds);
}

TEST(full_lr_dataset_scale3)
{
    const char *ids[] = {"img_002", "img_001"};
    const char *root = make_dataset("full3", ids, 2, 1, 3);
    kiln_dataset *ds = NULL;
    CHECK_OK(kiln_dataset_open(root, 3, &ds));
    if (!ds) return;
    CHECK_EQ_INT(kiln_dataset_has_lr(ds), 1);
    kiln_image lr, hr;
    CHECK_OK(kiln_dataset_load(ds, 0, &lr, &hr)); /* img_001 = index 1 written: 23x18 */
    CHECK_EQ_INT(hr.w, 23);
    CHECK_EQ_INT(lr.w, 23 / 3);
    CHECK_EQ_INT(lr.h, 18 / 3);
    /* the stored LR is used, not a recomputed one (it is random noise) */
    kiln_image ref;
    CHECK_OK(kiln_image_downscale(&hr, 3, &ref));
    CHECK(lr.rgb && ref.rgb && memcmp(lr.rgb, ref.rgb, (size_t)lr.w * lr.h * 3) != 0);
    kiln_image_free(&ref);
    kiln_image_free(&lr);
    kiln_image_free(&hr);
    kiln_dataset_close(ds);
}

TEST(errors_name_the_problem)
{
    kiln_dataset *ds = (kiln_dataset *)1;
    char p[1400];
    /* no HR folder */
    snprintf(p, sizeof p, "%s/nothing-here", kiln_test_tmpdir());
    CHECK_EQ_INT(kiln_dataset_open(p, 2, &ds), KILN_ERR_NOT_FOUND);
    CHECK(ds == NULL);
    CHECK(strstr(kiln_errmsg(), "nothing-here/HR") != NULL);
    /* HR folder without PNG */
    snprintf(p, sizeof p, "%s/emptyhr", kiln_test_tmpdir());
    mkdir(p, 0755);
    char q[1500];
    snprintf(q, sizeof q, "%s/HR", p);
    mkdir(q, 0755);
    CHECK_EQ_INT(kiln_dataset_open(p, 2, &ds), KILN_ERR_NOT_FOUND);
    CHECK(strstr(kiln_errmsg(), "no .png") != NULL);
    /* bad scale */
    CHECK_EQ_INT(kiln_dataset_open(kiln_test_data("B100"), 1, &ds), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "scale 1") != NULL);

    /* one LR file missing while others exist */
    const char *ids[] = {"x1", "x2", "x3"};
    const char *root = make_dataset("partial", ids, 3, 1, 2);
    snprintf(p, sizeof p, "%s/LR_bicubic/X2/x2x2.png", root);
    CHECK(unlink(p) == 0);
    CHECK_EQ_INT(kiln_dataset_open(root, 2, &ds), KILN_ERR_NOT_FOUND);
    CHECK_MSG(strstr(kiln_errmsg(), "x2x2.png") != NULL && strstr(kiln_errmsg(), "2 of 3") != NULL,
              "%s", kiln_errmsg());
    CHECK(ds == NULL);

    /* LR of the wrong size */
    const char *ids2[] = {"y1"};
    root = make_dataset("badsize", ids2, 1, 1, 2);
    snprintf(p, sizeof p, "%s/LR_bicubic/X2/y1x2.png", root);
    write_random_png(p, 11, 8, 3); /* HR 20x17 -> LR must be 10x8 */
    CHECK_OK(kiln_dataset_open(root, 2, &ds));
    if (ds) {
        kiln_image lr, hr;
        CHECK_EQ_INT(kiln_dataset_load(ds, 0, &lr, &hr), KILN_ERR_FORMAT);
        CHECK_MSG(strstr(kiln_errmsg(), "y1x2.png is 11x8, expected 10x8") != NULL, "%s",
                  kiln_errmsg());
        CHECK(lr.rgb == NULL && hr.rgb == NULL);
        /* a corrupt HR file: the error names it */
        snprintf(p, sizeof p, "%s/HR/y1.png", root);
        FILE *f = fopen(p, "wb");
        fputs("\x89PNG\r\n\x1a\nnot really", f);
        fclose(f);
        CHECK_EQ_INT(kiln_dataset_load(ds, 0, NULL, &hr), KILN_ERR_FORMAT);
        CHECK(strstr(kiln_errmsg(), "y1.png") != NULL);
        kiln_dataset_close(ds);
    }
}

TEST(split_parse)
{
    kiln_split s;
    CHECK_OK(kiln_split_parse("calib", &s));
    CHECK_EQ_INT(s, KILN_SPLIT_CALIB);
    CHECK_OK(kiln_split_parse("eval", &s));
    CHECK_EQ_INT(s, KILN_SPLIT_EVAL);
    CHECK_OK(kiln_split_parse("all", &s));
    CHECK_EQ_INT(s, KILN_SPLIT_ALL);
    CHECK_EQ_INT(kiln_split_parse("train", &s), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "train") != NULL);
}

int main(void)
{
    RUN(b100_order_split_pairs);
    RUN(hr_only_skips_non_png_and_non_regular);
    RUN(full_lr_dataset_scale3);
    RUN(errors_name_the_problem);
    RUN(split_parse);
    int rc = check_summary();
    if (rc == 0) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", kiln_test_tmpdir());
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", kiln_test_tmpdir());
    }
    return rc;
}

/* cmd_export.c — kiln export: an artifact or a checkpoint as an ONNX file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "cli.h"
#include "export.h"
#include "file.h"
#include "model.h"
#include "runner.h"

int cmd_export(int argc, char **argv)
{
    cli_opt o[] = {{"model", 1, 0}, {"format", 1, 0}, {"out", 1, 0},   {"opset", 1, 0},
                   {"weights", 1, 0}, {"scale", 1, 0}, {"res-scale", 1, 0}, {0, 0, 0}};
    if (cli_parse("export", argc, argv, o)) return 2;
    const char *path = cli_get(o, "model"), *format = cli_get(o, "format"), *out = cli_get(o, "out");
    if (!path) return cli_usage_error("export", "--model is required");
    if (!out) return cli_usage_error("export", "--out is required");
    if (format && strcmp(format, "onnx") != 0)
        return cli_usage_error("export", "--format: '%s' is not a format kiln exports (onnx)", format);
    long opset, scale;
    double rs;
    if (cli_get_int("export", o, "opset", 0, 0, 1000, &opset) || cli_get_int("export", o, "scale", 0, 2, 4, &scale) ||
        cli_get_float("export", o, "res-scale", 0, 0, 100, &rs))
        return 2;
    if (opset && (opset < KILN_EXPORT_OPSET_MIN || opset > KILN_EXPORT_OPSET_MAX))
        return cli_usage_error("export", "--opset: %ld is outside the opsets kiln writes (%d to %d)", opset,
                               KILN_EXPORT_OPSET_MIN, KILN_EXPORT_OPSET_MAX);
    kiln_export_opts eo = {.opset = (int)opset};
    const char *w = cli_get(o, "weights");
    if (w) {
        if (strcmp(w, "int4") == 0) eo.weights = KILN_EXPORT_WEIGHTS_INT4;
        else if (strcmp(w, "int8") == 0) eo.weights = KILN_EXPORT_WEIGHTS_INT8;
        else return cli_usage_error("export", "--weights: '%s' is not one of int4, int8", w);
    }

    kiln_model_opts mo = {.res_scale = (float)rs, .scale = (int)scale};
    kiln_runner *r;
    kiln_status st = kiln_runner_open(path, &mo, KILN_ENGINE_SIMULATE, &r);
    if (st != KILN_OK) return cli_fail("export", st);
    const kiln_artifact *a = kiln_runner_artifact(r);
    void *buf = NULL;
    size_t len = 0;
    if (a) st = kiln_export_onnx(a, &eo, &buf, &len);
    else st = kiln_export_onnx_graph(kiln_model_graph(kiln_runner_model(r)), &eo, &buf, &len);
    const int used = kiln_export_opset(a, &eo);
    kiln_runner_close(r);
    if (st == KILN_OK) st = kiln_file_write_atomic(out, buf, len);
    free(buf);
    if (st != KILN_OK) return cli_fail("export", st);
    printf("%s: %zu bytes, ONNX opset %d (%s)\n", out, len, used, a ? "from the artifact" : "FP32");
    return 0;
}

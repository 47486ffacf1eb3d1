/*
 * main.c — `kiln`, the command-line face of the core library.
 *
 *   kiln info      --model M
 *   kiln eval      --model M --data DIR [--split calib|eval|all] [--limit N] ...
 *   kiln upscale   --model M --in LR.png --out SR.png
 *   kiln downscale --scale S --in HR.png --out LR.png
 *   kiln compress  --model M --data DIR --recipe R|CONFIG.json --out A.kiln ...
 *   kiln table     --model M --data DIR
 *   kiln presets
 * Every error exits non-zero with one line on stderr.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
        "kiln %s — compress super-resolution networks (EDSR, CARN, CARN-M, ONNX) and measure the cost\n"
        "\n"
        "usage:\n"
        "  kiln info      --model M [--res-scale X] [--scale S] | --cpu\n"
        "  kiln eval      --model M --data DIR [--split calib|eval|all] [--calib N] [--limit N]\n"
        "                 [--threads T] [--metric psnr|psnr-y|ssim] [--shave N] [--round8]\n"
        "                 [--engine int8|simulate] [--res-scale X] [--scale S] [--json OUT]\n"
        "  kiln upscale   --model M --in LR.png --out SR.png [--threads T] [--scale S]\n"
        "  kiln downscale --scale S --in HR.png --out LR.png\n"
        "  kiln compress  --model M --data DIR --recipe fp32|w8a8|w8|p4|p4a8|CONFIG.json\n"
        "                 --out A.kiln [--calib N] [--threads T] [--engine auto|int8|simulate]\n"
        "                 [--no-fp32] [--scale S] [--json OUT]\n"
        "  kiln table     --model M --data DIR [--recipes w8a8,p4a8,...] [--calib N] [--threads T]\n"
        "                 [--engine auto|int8|simulate] [--scale S] [--json OUT]\n"
        "  kiln export    --model M --format onnx --out M.onnx [--opset N] [--weights int4|int8]\n"
        "                 [--scale S]\n"
        "  kiln presets\n"
        "\n"
        "M is a PyTorch .pt/.pth or .safetensors state dict (EDSR, CARN, CARN-M), an ONNX\n"
        "file, or a .kiln artifact. --scale S picks the upsampler of a multi-scale\n"
        "checkpoint (CARN-M: 2, 3 or 4; default the smallest). --res-scale X: EDSR only.\n",
        kiln_version());
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"info", cmd_info},       {"eval", cmd_eval},         {"upscale", cmd_upscale},
        {"downscale", cmd_downscale}, {"compress", cmd_compress}, {"table", cmd_table},
        {"presets", cmd_presets}, {"export", cmd_export},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmd, cmds[i].name) == 0) return cmds[i].fn(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("kiln %s\n", kiln_version());
        return 0;
    }
    fprintf(stderr, "kiln: unknown command '%s' (see kiln help)\n", cmd);
    return 2;
}

/*
 * cli.h — shared helpers of the `kiln` command-line tool: option parsing,
 * error reporting, the progress bar, JSON output.
 *
 * Every subcommand is `int cmd_<name>(int argc, char **argv)` returning the
 * process exit status; errors are printed as one line "kiln <cmd>: <message>".
 */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include <stddef.h>

#include "status.h"

typedef struct cli_opt {
    const char *name;  /* long option without dashes: "model"                 */
    int takes_value;   /* 1: --name VALUE (or --name=VALUE); 0: a flag        */
    const char *value; /* parsed value (flags: "1"), NULL if absent           */
} cli_opt;

/* Parse argv[1..] into opts (terminated by name == NULL). Unknown options
 * and stray arguments are errors (message printed, returns -1). */
int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts);
const char *cli_get(const cli_opt *opts, const char *name);
/* Integer option with bounds; prints an error and returns -1 on bad input. */
int cli_get_int(const char *cmd, const cli_opt *opts, const char *name, long def, long lo,
                long hi, long *out);
int cli_get_float(const char *cmd, const cli_opt *opts, const char *name, double def, double lo,
                  double hi, double *out);
/* Print "kiln <cmd>: <kiln_errmsg()>" (or the status name) and return 1. */
int cli_fail(const char *cmd, kiln_status st);
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Progress bar on stderr when it is a terminal; silent otherwise. */
void cli_progress(const char *label, size_t done, size_t total, const char *detail);
void cli_progress_end(void);

/* Write text to a file atomically (tmp + rename). */
kiln_status cli_write_file(const char *path, const char *text);

int cmd_info(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_upscale(int argc, char **argv);
int cmd_downscale(int argc, char **argv);
int cmd_compress(int argc, char **argv);
int cmd_table(int argc, char **argv);
int cmd_presets(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif

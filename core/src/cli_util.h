/*
 * cli_util.h - helpers of the `sensorium` command's source files (cli.c, cli_reflex.c).
 * Exit codes: 0 ok, 1 runtime error, EXIT_USAGE (2) usage error; errors are one line on
 * stderr, prefixed "sensorium: ".
 */
#ifndef SN_CLI_UTIL_H
#define SN_CLI_UTIL_H

#include "internal.h"

#define EXIT_USAGE 2

/* Prints "sensorium: MESSAGE" and returns EXIT_FAILURE. */
int fail(const char *fmt, ...) SN_PRINTF(1, 2);
/* fail() with the library's last error message. */
int lib_fail(void);
/* Prints the message and a pointer to `sensorium CMD --help`; returns EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) SN_PRINTF(2, 3);
/* --config JSON or --config @FILE: the JSON text, malloc'ed; NULL (after printing why) when
 * the file does not parse. */
char *read_config(const char *arg);

/* The reflex-world commands (cli_reflex.c). */
int cmd_demo(int argc, char **argv);
int cmd_live(int argc, char **argv);

#endif /* SN_CLI_UTIL_H */

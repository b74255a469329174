/*
 * cli_util.c - what the `sensorium` subcommands share: one-line errors on stderr with the
 * exit codes of cli_util.h, and configuration arguments given inline or as @FILE.
 */
#include "cli_util.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *prog = "sensorium";

int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_FAILURE;
}

int lib_fail(void) { return fail("%s", sn_errmsg()); }

int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(try `%s%s%s --help`)\n", prog, cmd ? " " : "", cmd ? cmd : "");
    va_end(ap);
    return EXIT_USAGE;
}

/* --config JSON or --config @FILE: the JSON text, malloc'ed. */
char *read_config(const char *arg)
{
    if (!arg)
        return NULL;
    if (arg[0] != '@') {
        char *s = malloc(strlen(arg) + 1);
        if (s)
            strcpy(s, arg);
        return s;
    }
    json_error_t jerr;
    json_t *j = json_load_file(arg + 1, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        fail("%s:%d:%d: %s", arg + 1, jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

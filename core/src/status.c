/*
 * status.c - status names, the thread-local last-error message, and the small helpers every
 * stage of the pipeline uses (growable strings and token arrays).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Thread-local rather than per handle: one handle (a plugin set, a vocabulary) may be read
 * by many threads at once, and each thread must see the message of its own failed call. */
static _Thread_local char last_error[1024];

const char *sn_status_str(sn_status status)
{
    switch (status) {
    case SN_OK: return "ok";
    case SN_ERR_INVALID_ARG: return "invalid argument";
    case SN_ERR_NOMEM: return "out of memory";
    case SN_ERR_IO: return "I/O error";
    case SN_ERR_FORMAT: return "format error";
    case SN_ERR_UNSUPPORTED: return "unsupported";
    case SN_ERR_NOT_FOUND: return "not found";
    case SN_ERR_PLUGIN: return "plugin error";
    case SN_ERR_CONFIG: return "configuration error";
    case SN_ERR_VOCAB: return "vocabulary layout error";
    case SN_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *sn_errmsg(void) { return last_error; }

const char *sn_version(void) { return SN_VERSION; }

void sn_free(void *p) { free(p); }

void sn_clear_error(void) { last_error[0] = '\0'; }

sn_status sn_failv(sn_status status, const char *fmt, va_list ap)
{
    char line[sizeof last_error];
    vsnprintf(line, sizeof line, fmt, ap);
    /* One line: a message built from file contents or plugin text must not break it. */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    memcpy(last_error, line, sizeof line);
    return status;
}

sn_status sn_fail(sn_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sn_failv(status, fmt, ap);
    va_end(ap);
    return status;
}

char *sn_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static sn_status str_reserve(sn_str *str, size_t extra)
{
    if (str->len + extra + 1 <= str->cap)
        return SN_OK;
    size_t cap = str->cap ? str->cap : 64;
    while (cap < str->len + extra + 1)
        cap *= 2;
    char *s = realloc(str->s, cap);
    if (!s)
        return sn_fail(SN_ERR_NOMEM, "out of memory growing a string to %zu bytes", cap);
    str->s = s;
    str->cap = cap;
    return SN_OK;
}

sn_status sn_str_append(sn_str *str, const char *text, size_t len)
{
    sn_status st = str_reserve(str, len);
    if (st != SN_OK)
        return st;
    memcpy(str->s + str->len, text, len);
    str->len += len;
    str->s[str->len] = '\0';
    return SN_OK;
}

sn_status sn_str_printf(sn_str *str, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return sn_fail(SN_ERR_INTERNAL, "bad format string '%s'", fmt);
    sn_status st = str_reserve(str, (size_t)n);
    if (st != SN_OK)
        return st;
    va_start(ap, fmt);
    vsnprintf(str->s + str->len, str->cap - str->len, fmt, ap);
    va_end(ap);
    str->len += (size_t)n;
    return SN_OK;
}

void sn_str_free(sn_str *str)
{
    free(str->s);
    str->s = NULL;
    str->len = str->cap = 0;
}

sn_status sn_tokens_append(sn_tokens *tokens, const int32_t *ids, size_t n)
{
    if (tokens->n + n > tokens->cap) {
        size_t cap = tokens->cap ? tokens->cap : 256;
        while (cap < tokens->n + n)
            cap *= 2;
        int32_t *p = realloc(tokens->ids, cap * sizeof *p);
        if (!p)
            return sn_fail(SN_ERR_NOMEM, "out of memory growing a token array to %zu ids", cap);
        tokens->ids = p;
        tokens->cap = cap;
    }
    if (n)
        memcpy(tokens->ids + tokens->n, ids, n * sizeof *ids);
    tokens->n += n;
    return SN_OK;
}

void sn_tokens_clear(sn_tokens *tokens)
{
    if (!tokens)
        return;
    free(tokens->ids);
    tokens->ids = NULL;
    tokens->n = tokens->cap = 0;
}

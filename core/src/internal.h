/*
 * internal.h - what the core's source files share and nothing outside core/src sees:
 * the thread-local error message, a growable string, and small helpers.
 */
#ifndef SN_INTERNAL_H
#define SN_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include "sensorium/sensorium.h"

#if defined(__GNUC__)
#define SN_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define SN_PRINTF(fmt_idx, arg_idx)
#endif

/* Records a one-line message for sn_errmsg() and returns status, so that failures read
 * `return sn_fail(SN_ERR_FORMAT, "%s: ...", path);`. */
sn_status sn_fail(sn_status status, const char *fmt, ...) SN_PRINTF(2, 3);
sn_status sn_failv(sn_status status, const char *fmt, va_list ap);

/* Clears the calling thread's message (the start of a call that may fail). */
void sn_clear_error(void);

/* Growable NUL-terminated string; zero-initialise. Appends report allocation failure by
 * returning SN_ERR_NOMEM and leave the string as it was. */
typedef struct sn_str {
    char *s;
    size_t len, cap;
} sn_str;

sn_status sn_str_append(sn_str *str, const char *text, size_t len);
sn_status sn_str_printf(sn_str *str, const char *fmt, ...) SN_PRINTF(2, 3);
void sn_str_free(sn_str *str);

/* strdup that returns NULL when out of memory (C11 has no strdup). */
char *sn_strdup(const char *s);

/* Appends to a growable int32 array: SN_OK or SN_ERR_NOMEM. */
sn_status sn_tokens_append(sn_tokens *tokens, const int32_t *ids, size_t n);

#endif /* SN_INTERNAL_H */

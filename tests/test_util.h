/*
 * test_util.h - what several Criterion suites share: a fresh temporary folder per test, a
 * shell command built printf-style that must succeed, and a float32 .npy read whole.
 * Header-only (static functions), included by the suites that use it.
 */
#ifndef SN_TEST_UTIL_H
#define SN_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sensorium/sensorium.h"

/* The test's own folder, made by sn_test_mkdir and removed by sn_test_rmdir. */
static char sn_test_dir[64];

static inline void sn_test_mkdir(const char *prefix)
{
    snprintf(sn_test_dir, sizeof sn_test_dir, "/tmp/%s_XXXXXX", prefix);
    cr_assert_not_null(mkdtemp(sn_test_dir), "mkdtemp failed");
}

static inline void sn_test_rmdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", sn_test_dir);
    cr_expect_eq(system(cmd), 0);
}

/* Runs a shell command and asserts it exits 0. */
static inline void sn_test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void sn_test_sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    cr_assert_eq(system(cmd), 0, "command failed: %s", cmd);
}

/* The values of a float32 .npy file (any shape, read as flat), malloc'ed; *n their count. */
static inline float *sn_test_read_npy(const char *path, size_t *n)
{
    sn_media m;
    cr_assert_eq(sn_media_read(path, &m), SN_OK, "%s", sn_errmsg());
    *n = (size_t)m.series.n_ticks * m.series.dims;
    float *v = malloc(*n * sizeof *v + 1);
    cr_assert_not_null(v);
    memcpy(v, m.series.values, *n * sizeof *v);
    sn_media_release(&m);
    return v;
}

#endif /* SN_TEST_UTIL_H */

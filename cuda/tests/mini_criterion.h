/*
 * mini_criterion.h - the few Criterion macros the CUDA tests use (Test, cr_assert,
 * cr_expect, cr_log_info), for building the CUDA suites on a GPU machine that has no
 * Criterion installed (scripts/gpu-check.sh builds cuda/ on its own there). Each test runs in
 * a child process, as under Criterion, so a failed assertion or a crash ends only that test.
 */
#ifndef SN_MINI_CRITERION_H
#define SN_MINI_CRITERION_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct mc_test {
    const char *suite, *name;
    void (*fn)(void);
} mc_test;

static mc_test mc_tests[128];
static int mc_n_tests;
static int mc_failed_here;

static inline void mc_register(const char *suite, const char *name, void (*fn)(void))
{
    if (mc_n_tests < (int)(sizeof mc_tests / sizeof mc_tests[0]))
        mc_tests[mc_n_tests++] = (mc_test){suite, name, fn};
}

static inline void mc_report(const char *file, int line, const char *expr, const char *fmt, ...)
{
    fprintf(stderr, "%s:%d: Assertion failed: %s", file, line, expr);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    mc_failed_here = 1;
}

#define Test(suite, name, ...)                                                             \
    static void suite##_##name(void);                                                      \
    __attribute__((constructor)) static void mc_reg_##suite##_##name(void)                 \
    {                                                                                      \
        mc_register(#suite, #name, suite##_##name);                                        \
    }                                                                                      \
    static void suite##_##name(void)

#define cr_assert(cond, ...)                                                               \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            mc_report(__FILE__, __LINE__, #cond, "" __VA_ARGS__);                          \
            fflush(NULL);                                                                  \
            _exit(1);                                                                      \
        }                                                                                  \
    } while (0)
#define cr_expect(cond, ...)                                                               \
    do {                                                                                   \
        if (!(cond))                                                                       \
            mc_report(__FILE__, __LINE__, #cond, "" __VA_ARGS__);                          \
    } while (0)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_expect_eq(a, b, ...) cr_expect((a) == (b), __VA_ARGS__)
#define cr_log_info(...)                                                                   \
    do {                                                                                   \
        fprintf(stderr, "[----] " __VA_ARGS__);                                            \
        fputc('\n', stderr);                                                               \
    } while (0)

/* Runs every registered test in its own process; returns the number that failed. */
static inline int mc_run_all(void)
{
    int failed = 0;
    for (int i = 0; i < mc_n_tests; i++) {
        fflush(NULL);
        const pid_t pid = fork();
        if (pid == 0) {
            mc_failed_here = 0;
            mc_tests[i].fn();
            fflush(NULL);
            _exit(mc_failed_here ? 1 : 0);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) < 0) {
            fprintf(stderr, "[FAIL] %s::%s: could not run it\n", mc_tests[i].suite, mc_tests[i].name);
            failed++;
            continue;
        }
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            fprintf(stderr, "[PASS] %s::%s\n", mc_tests[i].suite, mc_tests[i].name);
        } else {
            failed++;
            if (WIFSIGNALED(st))
                fprintf(stderr, "[FAIL] %s::%s: crashed with signal %d\n", mc_tests[i].suite, mc_tests[i].name,
                        WTERMSIG(st));
            else
                fprintf(stderr, "[FAIL] %s::%s\n", mc_tests[i].suite, mc_tests[i].name);
        }
    }
    fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d\n", mc_n_tests, mc_n_tests - failed,
            failed);
    return failed;
}

#endif /* SN_MINI_CRITERION_H */

/*
 * cuda_test.h - what every CUDA kernel suite shares: the main that skips (exit 77, one
 * "SKIP: no CUDA device (...)" line) when no GPU is usable, seeded random data, device
 * buffers, and the comparison that prints the worst element and the first mismatches.
 *
 * The device is probed in a child process: CUDA does not survive fork(), and Criterion forks
 * a process per test, so the parent must never touch CUDA itself.
 *
 * SN_CUDA_TEST_QUICK=1 in the environment shrinks the problem sizes (for runs under
 * compute-sanitizer).
 */
#ifndef SN_CUDA_TEST_H
#define SN_CUDA_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef SN_MINI_CRITERION
#include "mini_criterion.h"
#else
#include <criterion/criterion.h>
#endif

#ifdef SN_TEST_NEEDS_CUDA
#include <cuda_runtime.h>

#include "sn_cuda_kernels.h"
#endif

#include "ref.h"

/* ---------------------------------------------------------------------------------------- */
/* Random data                                                                               */
/* ---------------------------------------------------------------------------------------- */

typedef struct sn_rng {
    uint64_t s;
} sn_rng;

static inline uint64_t sn_rng_next(sn_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static inline float sn_rng_uniform(sn_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(sn_rng_next(r) >> 11) * 0x1.0p-53);
}

static inline int32_t sn_rng_int(sn_rng *r, int32_t n) { return (int32_t)(sn_rng_next(r) % (uint64_t)n); }

/* Logits for the sampler's tests. kind 0: smooth random; 1: the same rounded to bf16 (ties);
 * 2: one id far above the rest; 3: two values only (ties everywhere). About one in a thousand
 * is -inf. */
static inline void sn_fill_logits(float *lg, int32_t n, int kind, sn_rng *r)
{
    for (int32_t i = 0; i < n; i++) {
        float x = 3.0f * (sn_rng_uniform(r, -1.0f, 1.0f) + sn_rng_uniform(r, -1.0f, 1.0f) + sn_rng_uniform(r, -1.0f, 1.0f));
        if (kind == 1)
            x = sn_ref_round_bf16(x);
        else if (kind == 2)
            x = i == n / 3 ? 25.0f : x;
        else if (kind == 3)
            x = sn_rng_int(r, 4) ? 1.0f : 2.5f;
        if (sn_rng_int(r, 1000) == 0)
            x = -INFINITY;
        lg[i] = x;
    }
}

/* A bitset of n ids. kind 0: every id; 1: each id with probability pct %; 2: three ids;
 * 3: one id; 4: none. */
static inline void sn_fill_bits(uint64_t *bits, int32_t n, int kind, int pct, sn_rng *r)
{
    const size_t bytes = (size_t)((n + 63) / 64) * sizeof *bits;
    memset(bits, kind == 0 ? 0xff : 0, bytes);
    if (kind == 0 || kind == 4)
        return;
    if (kind == 2 || kind == 3) {
        for (int i = 0; i < (kind == 2 ? 3 : 1); i++) {
            const int32_t id = sn_rng_int(r, n);
            bits[id / 64] |= 1ull << (id % 64);
        }
        return;
    }
    for (int32_t i = 0; i < n; i++)
        if (sn_rng_int(r, 100) < pct)
            bits[i / 64] |= 1ull << (i % 64);
}

/* The first index of the largest of x[0..n): the greedy token of a logits row. */
static inline int sn_test_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static inline int sn_test_quick(void)
{
    const char *q = getenv("SN_CUDA_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Comparison                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Checks |got - ref| <= atol + rtol * |ref| for n elements (NaN fails); prints one summary
 * line with the worst element (by excess over its tolerance) and up to 5 mismatches.
 * Returns the number of mismatches. */
static inline size_t sn_test_compare(const char *what, const float *got, const double *ref, size_t n, double atol,
                                     double rtol)
{
    size_t bad = 0, worst = 0;
    double worst_ratio = -1.0;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - ref[i]), tol = atol + rtol * fabs(ref[i]);
        const double ratio = isnan(err) ? INFINITY : err / tol;
        if (ratio > worst_ratio) {
            worst_ratio = ratio;
            worst = i;
        }
        if (!(err <= tol)) {
            if (bad < 5)
                fprintf(stderr, "  %s: mismatch at %zu: got %.9g, want %.9g (|diff| %.3g > %.3g)\n", what, i,
                        (double)got[i], ref[i], err, tol);
            bad++;
        }
    }
    if (n)
        fprintf(stderr, "%s: %zu elements, %zu mismatches; worst at %zu: got %.9g, want %.9g (%.3g of tolerance %g + %g|ref|)\n",
                what, n, bad, worst, (double)got[worst], ref[worst], worst_ratio, atol, rtol);
    return bad;
}

#ifdef SN_TEST_NEEDS_CUDA

/* ---------------------------------------------------------------------------------------- */
/* Device buffers                                                                            */
/* ---------------------------------------------------------------------------------------- */

#define CU(stmt)                                                                           \
    do {                                                                                   \
        cudaError_t cu_err_ = (stmt);                                                      \
        cr_assert(cu_err_ == cudaSuccess, "%s: %s (%s)", #stmt, cudaGetErrorString(cu_err_), \
                  cudaGetErrorName(cu_err_));                                              \
    } while (0)

static inline void *sn_dev_alloc(size_t bytes)
{
    void *p = NULL;
    CU(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

static inline void *sn_dev_upload(const void *host, size_t bytes)
{
    void *p = sn_dev_alloc(bytes);
    if (bytes)
        CU(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return p;
}

static inline void sn_dev_download(void *host, const void *dev, size_t bytes)
{
    if (bytes)
        CU(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}

/* Runs the launch, then waits for the kernels: a fault surfaces here, named. */
#define LAUNCH(stmt)                                                                       \
    do {                                                                                   \
        CU(stmt);                                                                          \
        CU(cudaDeviceSynchronize());                                                       \
    } while (0)

/* The device as one line, or 0 with the reason; run in a child process (see above). */
static inline int sn_test_probe_device(char *msg, size_t len)
{
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(msg, len, "pipe failed");
        return 0;
    }
    const pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        char line[512];
        int count = 0, ok = 0;
        const cudaError_t e = cudaGetDeviceCount(&count);
        if (e != cudaSuccess) {
            snprintf(line, sizeof line, "%s", cudaGetErrorString(e));
        } else if (count == 0) {
            snprintf(line, sizeof line, "the driver reports no devices");
        } else {
            struct cudaDeviceProp p;
            if (cudaGetDeviceProperties(&p, 0) == cudaSuccess && p.major >= 8) {
                snprintf(line, sizeof line, "%.200s, sm_%d%d, %d SMs", p.name, p.major, p.minor, p.multiProcessorCount);
                ok = 1;
            } else {
                snprintf(line, sizeof line, "GPU 0 is older than sm_80 (the kernels need Ampere or newer)");
            }
        }
        if (write(fds[1], line, strlen(line) + 1) < 0)
            _exit(2);
        _exit(ok ? 0 : 1);
    }
    close(fds[1]);
    ssize_t n = pid > 0 ? read(fds[0], msg, len - 1) : -1;
    close(fds[0]);
    msg[n > 0 ? (size_t)n : 0] = '\0';
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0) {
        snprintf(msg, len, "could not run the probe");
        return 0;
    }
    if (!msg[0])
        snprintf(msg, len, "the probe died (status %d)", st);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

#define SN_TEST_PROBE()                                                                    \
    char probe_msg_[256];                                                                  \
    if (!sn_test_probe_device(probe_msg_, sizeof probe_msg_)) {                            \
        printf("SKIP: no CUDA device (%s)\n", probe_msg_);                                 \
        fflush(stdout);                                                                    \
        return 77;                                                                         \
    }                                                                                      \
    fprintf(stderr, "device: %s\n", probe_msg_);
#else
#define SN_TEST_PROBE()
#endif /* SN_TEST_NEEDS_CUDA */

#ifdef SN_MINI_CRITERION
#define SN_CUDA_TEST_MAIN()                                                                \
    int main(void)                                                                         \
    {                                                                                      \
        SN_TEST_PROBE()                                                                    \
        return mc_run_all() ? 1 : 0;                                                       \
    }
#else
/* main must be visible: Criterion's sandbox finds it by name in each test worker (with the
 * build's -fvisibility=hidden it would find libcriterion's own main and recurse). */
#define SN_CUDA_TEST_MAIN()                                                                \
    __attribute__((visibility("default"))) int main(int argc, char *argv[])                \
    {                                                                                      \
        SN_TEST_PROBE()                                                                    \
        struct criterion_test_set *tests = criterion_initialize();                         \
        int result = 0;                                                                    \
        if (criterion_handle_args(argc, argv, true))                                       \
            result = !criterion_run_all_tests(tests);                                      \
        criterion_finalize(tests);                                                         \
        return result;                                                                     \
    }
#endif

#endif /* SN_CUDA_TEST_H */

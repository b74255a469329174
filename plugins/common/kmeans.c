/*
 * kmeans.c - k-means++ and Lloyd iterations over float points (see kmeans.h).
 *
 * Distances use ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 with the centroids' norms computed
 * once per iteration, so the inner loop is a dot product the compiler vectorises.
 */
#include "kmeans.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: small, seeded, and the same on every platform. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static float dot(const float *a, const float *b, size_t d)
{
    float acc = 0.0f;
    for (size_t j = 0; j < d; j++)
        acc += a[j] * b[j];
    return acc;
}

static float sq_dist(const float *a, const float *b, size_t d)
{
    float acc = 0.0f;
    for (size_t j = 0; j < d; j++) {
        float t = a[j] - b[j];
        acc += t * t;
    }
    return acc;
}

void sn_pu_sq_norms(const float *c, size_t k, size_t d, float *norms)
{
    for (size_t i = 0; i < k; i++)
        norms[i] = dot(c + i * d, c + i * d, d);
}

size_t sn_pu_nearest(const float *v, const float *c, const float *c_norms, size_t k, size_t d)
{
    size_t best = 0;
    float best_d = FLT_MAX;
    for (size_t i = 0; i < k; i++) {
        /* ||v||^2 is the same for every centroid: leave it out of the comparison. */
        float dist = c_norms[i] - 2.0f * dot(v, c + i * d, d);
        if (dist < best_d) {
            best_d = dist;
            best = i;
        }
    }
    return best;
}

/* k-means++: each next centroid is a point drawn with probability proportional to its
 * squared distance from the nearest centroid chosen so far. */
static void seed_plus_plus(const float *x, size_t n, size_t d, size_t k, uint64_t *rng,
                           float *c, float *min_d)
{
    size_t first = (size_t)(rng_next(rng) % n);
    memcpy(c, x + first * d, d * sizeof *c);
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        min_d[i] = sq_dist(x + i * d, c, d);
        total += min_d[i];
    }
    for (size_t j = 1; j < k; j++) {
        size_t pick = (size_t)(rng_next(rng) % n);
        if (total > 0.0) {
            double r = rng_unit(rng) * total, acc = 0.0;
            for (size_t i = 0; i < n; i++) {
                acc += min_d[i];
                if (acc >= r && min_d[i] > 0.0f) {
                    pick = i;
                    break;
                }
            }
        }
        float *cj = c + j * d;
        memcpy(cj, x + pick * d, d * sizeof *cj);
        total = 0.0;
        for (size_t i = 0; i < n; i++) {
            float dist = sq_dist(x + i * d, cj, d);
            if (dist < min_d[i])
                min_d[i] = dist;
            total += min_d[i];
        }
    }
}

int sn_pu_kmeans(const float *x, size_t n, size_t d, const sn_pu_kmeans_opts *opts,
                 float *centroids)
{
    size_t k = opts->k;
    uint64_t rng = opts->seed;
    uint32_t *assign = malloc(n * sizeof *assign);
    float *min_d = malloc(n * sizeof *min_d);
    float *norms = malloc(k * sizeof *norms);
    double *sums = malloc(k * d * sizeof *sums);
    size_t *counts = malloc(k * sizeof *counts);
    int rc = -1;
    if (!assign || !min_d || !norms || !sums || !counts)
        goto out;

    seed_plus_plus(x, n, d, k, &rng, centroids, min_d);
    for (size_t i = 0; i < n; i++)
        assign[i] = UINT32_MAX;

    for (int it = 1; it <= opts->max_iterations; it++) {
        sn_pu_sq_norms(centroids, k, d, norms);
        size_t changed = 0;
        double inertia = 0.0;
        memset(sums, 0, k * d * sizeof *sums);
        memset(counts, 0, k * sizeof *counts);
        for (size_t i = 0; i < n; i++) {
            const float *xi = x + i * d;
            size_t c = sn_pu_nearest(xi, centroids, norms, k, d);
            min_d[i] = sq_dist(xi, centroids + c * d, d);
            inertia += min_d[i];
            if (assign[i] != c) {
                assign[i] = (uint32_t)c;
                changed++;
            }
            counts[c]++;
            for (size_t j = 0; j < d; j++)
                sums[c * d + j] += xi[j];
        }
        for (size_t c = 0; c < k; c++) {
            if (counts[c] == 0) {
                /* An empty cluster takes the point worst served by its centroid. */
                size_t far = 0;
                for (size_t i = 1; i < n; i++)
                    if (min_d[i] > min_d[far])
                        far = i;
                memcpy(centroids + c * d, x + far * d, d * sizeof *centroids);
                min_d[far] = 0.0f;
                changed++;
                continue;
            }
            for (size_t j = 0; j < d; j++)
                centroids[c * d + j] = (float)(sums[c * d + j] / (double)counts[c]);
        }
        if (opts->progress)
            opts->progress(opts->progress_ctx, it, opts->max_iterations, inertia / (double)n, changed);
        if (changed == 0)
            break;
    }
    rc = 0;
out:
    free(assign);
    free(min_d);
    free(norms);
    free(sums);
    free(counts);
    return rc;
}

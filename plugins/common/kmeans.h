/*
 * kmeans.h - k-means for the plugins that learn a codebook with `sensorium fit` (audio.melvq,
 * image.patchvq), and the nearest-centroid search their encoders run per frame or patch.
 * Part of the plugins' own helper library (plugins/common), linked into each plugin; the
 * engine is not involved, so a plugin stays self-contained.
 */
#ifndef SN_PU_KMEANS_H
#define SN_PU_KMEANS_H

#include <stddef.h>
#include <stdint.h>

/* Progress: called once per iteration with the mean squared distance of the points to their
 * centroids. */
typedef void (*sn_pu_progress_fn)(void *ctx, int iteration, int max_iterations, double inertia,
                                  size_t changed);

typedef struct sn_pu_kmeans_opts {
    size_t k;              /* centroids */
    int max_iterations;    /* Lloyd iterations at most (25 is plenty for a codebook) */
    uint64_t seed;         /* k-means++ seeding and tie-free sampling */
    sn_pu_progress_fn progress; /* may be NULL */
    void *progress_ctx;
} sn_pu_kmeans_opts;

/*
 * Clusters the n points of x (n, d) into opts->k centroids written to centroids (k, d):
 * k-means++ seeding, then Lloyd iterations until no assignment changes or max_iterations.
 * A cluster left empty is re-seeded with the point farthest from its centroid. Deterministic
 * for the same input and seed. Needs n >= k. Returns 0, or -1 when out of memory.
 */
int sn_pu_kmeans(const float *x, size_t n, size_t d, const sn_pu_kmeans_opts *opts,
                 float *centroids);

/* Squared norms of the k centroids (k, d), for sn_pu_nearest. */
void sn_pu_sq_norms(const float *c, size_t k, size_t d, float *norms);

/* The index of the centroid nearest to v (d), given the centroids' squared norms. */
size_t sn_pu_nearest(const float *v, const float *c, const float *c_norms, size_t k, size_t d);

#endif /* SN_PU_KMEANS_H */

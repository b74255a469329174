/*
 * sampler.c - one token from one row of logits (see sampler.h for the exact order of
 * operations, which the CUDA kernel reproduces).
 *
 * No full sort of the vocabulary: top-k selects the k largest with a quickselect over the
 * candidates; top-p sorts only the ids that survived the cheaper filters, and when none did
 * it first narrows the candidates to those above a probability threshold found by bisection
 * (the smallest set holding top_p of the mass lies above it), so its cost follows the
 * nucleus, not the vocabulary. All scratch memory comes from the sn_sampler.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

sn_sampling sn_sampling_default(void)
{
    return (sn_sampling){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                         .repetition_penalty = 1.0f};
}

sn_status sn_sampling_check(const sn_sampling *s)
{
    if (!(s->temperature >= 0.0f) || isinf(s->temperature))
        return sn_fail(SN_ERR_CONFIG, "temperature %g: must be a finite number >= 0 (0 is greedy)", s->temperature);
    if (s->top_k < 0)
        return sn_fail(SN_ERR_CONFIG, "top_k %d: must be >= 0 (0 turns it off)", s->top_k);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return sn_fail(SN_ERR_CONFIG, "top_p %g: must be in (0, 1] (1 turns it off)", s->top_p);
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return sn_fail(SN_ERR_CONFIG, "min_p %g: must be in [0, 1] (0 turns it off)", s->min_p);
    if (!(s->repetition_penalty > 0.0f) || isinf(s->repetition_penalty))
        return sn_fail(SN_ERR_CONFIG, "repetition_penalty %g: must be a finite number > 0 (1 turns it off)",
                       s->repetition_penalty);
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Philox4x32-10                                                                            */
/* ---------------------------------------------------------------------------------------- */

void sn_philox4x32(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

float sn_philox_uniform(uint64_t seed, uint64_t step)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {(uint32_t)step, (uint32_t)(step >> 32), 0, 0};
    uint32_t out[4];
    sn_philox4x32(out, ctr, key);
    return (float)(out[0] >> 8) * 0x1.0p-24f;
}

/* ---------------------------------------------------------------------------------------- */
/* Scratch                                                                                  */
/* ---------------------------------------------------------------------------------------- */

sn_status sn_sampler_init(sn_sampler *s, int32_t vocab)
{
    memset(s, 0, sizeof *s);
    if (vocab <= 0)
        return sn_fail(SN_ERR_INVALID_ARG, "sampler: vocabulary of %d ids", vocab);
    s->vocab = vocab;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->idx = malloc((size_t)vocab * sizeof *s->idx);
    s->seen = calloc(((size_t)vocab + 63) / 64, sizeof *s->seen);
    if (!s->probs || !s->idx || !s->seen) {
        sn_sampler_free(s);
        return sn_fail(SN_ERR_NOMEM, "out of memory for the sampler's scratch (%d ids)", vocab);
    }
    return SN_OK;
}

void sn_sampler_free(sn_sampler *s)
{
    free(s->probs);
    free(s->idx);
    free(s->seen);
    s->probs = NULL;
    s->idx = NULL;
    s->seen = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Filtering                                                                                */
/* ---------------------------------------------------------------------------------------- */

static int is_allowed(const uint64_t *allowed, int32_t i)
{
    return !allowed || (allowed[i / 64] >> (i % 64) & 1);
}

/* "a ranks before b": higher probability first, the lower id on ties. */
static int ranks_before(const float *p, int32_t a, int32_t b)
{
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* Reorders idx[0..n) so that its first k entries are the k best by ranks_before (in no
 * particular order). Quickselect with a median-of-three pivot: O(n) expected. */
static void select_top(const float *p, int32_t *idx, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        /* median of three as the pivot, moved to hi */
        if (ranks_before(p, idx[mid], idx[lo])) { int32_t t = idx[mid]; idx[mid] = idx[lo]; idx[lo] = t; }
        if (ranks_before(p, idx[hi], idx[lo])) { int32_t t = idx[hi]; idx[hi] = idx[lo]; idx[lo] = t; }
        if (ranks_before(p, idx[mid], idx[hi])) { int32_t t = idx[mid]; idx[mid] = idx[hi]; idx[hi] = t; }
        int32_t pivot = idx[hi], store = lo;
        for (int32_t i = lo; i < hi; i++) {
            if (ranks_before(p, idx[i], pivot)) {
                int32_t t = idx[i];
                idx[i] = idx[store];
                idx[store] = t;
                store++;
            }
        }
        idx[hi] = idx[store];
        idx[store] = pivot;
        if (store == k - 1 || store == k)
            return;
        if (store < k)
            lo = store + 1;
        else
            hi = store - 1;
    }
}

/* Restores the heap below root in idx[0..n): every parent ranks after its children, so the
 * worst-ranked id sits at the root. */
static void sift_down(const float *p, int32_t *idx, int32_t root, int32_t n)
{
    for (;;) {
        int32_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && ranks_before(p, idx[child], idx[child + 1]))
            child++;
        if (!ranks_before(p, idx[root], idx[child]))
            return;
        int32_t t = idx[root];
        idx[root] = idx[child];
        idx[child] = t;
        root = child;
    }
}

/* Sorts idx[0..n) best first by ranks_before. Heapsort: no recursion and no globals, so
 * samplers on different threads share nothing. */
static void sort_by_rank(const float *p, int32_t *idx, int32_t n)
{
    for (int32_t start = n / 2 - 1; start >= 0; start--)
        sift_down(p, idx, start, n);
    for (int32_t end = n - 1; end > 0; end--) {
        int32_t t = idx[0];
        idx[0] = idx[end];
        idx[end] = t;
        sift_down(p, idx, 0, end);
    }
}

static int cmp_id(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Steps 1-7 of sampler.h: s->probs holds the (unnormalised within the kept set) softmax
 * probabilities and s->idx[0..return) the kept ids in ascending order. -1: nothing allowed;
 * 0 with *greedy set: the greedy id. */
static int32_t filter(sn_sampler *s, const float *logits, const uint64_t *allowed,
                      const sn_sampling *prm, const int32_t *history, size_t n_history,
                      const uint64_t *seen, int32_t *greedy)
{
    const int32_t V = s->vocab;
    float *p = s->probs;
    int32_t *idx = s->idx;
    if (prm->temperature == 0.0f && prm->repetition_penalty == 1.0f) {
        /* plain greedy: the first allowed id of the highest logit, in one pass */
        int32_t best = -1;
        for (int32_t i = 0; i < V; i++)
            if (is_allowed(allowed, i) && (best < 0 || logits[i] > logits[best]))
                best = i;
        *greedy = best;
        return best < 0 ? -1 : 0;
    }
    /* 1-2: mask and penalise; masked ids get -inf and never enter idx */
    int32_t n = 0;
    for (int32_t i = 0; i < V; i++) {
        if (is_allowed(allowed, i)) {
            p[i] = logits[i];
            idx[n++] = i;
        } else
            p[i] = -INFINITY;
    }
    if (n == 0)
        return -1;
    if (prm->repetition_penalty != 1.0f && seen) {
        /* the allowed ids among those marked */
        for (int32_t w = 0; w < (V + 63) / 64; w++)
            for (uint64_t bits = seen[w] & (allowed ? allowed[w] : ~(uint64_t)0); bits; bits &= bits - 1) {
                const int32_t t = w * 64 + __builtin_ctzll(bits);
                if (t < V)
                    p[t] = p[t] > 0 ? p[t] / prm->repetition_penalty : p[t] * prm->repetition_penalty;
            }
    } else if (prm->repetition_penalty != 1.0f) {
        /* once per distinct id of the history: a bit per id marks those already penalised,
         * and a second pass over the history clears the marks */
        for (size_t h = 0; h < n_history; h++) {
            int32_t t = history[h];
            if (t < 0 || t >= V || !is_allowed(allowed, t) || (s->seen[t / 64] >> (t % 64) & 1))
                continue;
            s->seen[t / 64] |= (uint64_t)1 << (t % 64);
            p[t] = p[t] > 0 ? p[t] / prm->repetition_penalty : p[t] * prm->repetition_penalty;
        }
        for (size_t h = 0; h < n_history; h++)
            if (history[h] >= 0 && history[h] < V)
                s->seen[history[h] / 64] = 0;
    }
    /* 3: greedy */
    if (prm->temperature == 0.0f) {
        int32_t best = idx[0];
        for (int32_t j = 1; j < n; j++)
            if (p[idx[j]] > p[best])
                best = idx[j];
        *greedy = best;
        return 0;
    }
    /* 4: softmax over the allowed ids */
    float mx = -INFINITY;
    for (int32_t j = 0; j < n; j++)
        if (p[idx[j]] > mx)
            mx = p[idx[j]];
    if (mx == -INFINITY) { /* every allowed id has probability 0: the lowest one, as greedy would */
        *greedy = idx[0];
        return 0;
    }
    double sum = 0.0;
    for (int32_t j = 0; j < n; j++) {
        float e = expf((p[idx[j]] - mx) / prm->temperature);
        p[idx[j]] = e;
        sum += e;
    }
    for (int32_t j = 0; j < n; j++)
        p[idx[j]] = (float)(p[idx[j]] / sum);
    /* 5: top-k */
    if (prm->top_k > 0 && prm->top_k < n) {
        select_top(p, idx, n, prm->top_k);
        n = prm->top_k;
    }
    /* 6: top-p over what is left: rank the candidates, keep the shortest prefix >= top_p */
    if (prm->top_p < 1.0f && n > 1) {
        double mass = 0.0;
        for (int32_t j = 0; j < n; j++)
            mass += p[idx[j]];
        /* Narrow to ids above a threshold before sorting: bisect for the largest t such
         * that the ids with p >= t hold at least top_p of the mass; the nucleus lies in
         * that set, so only it needs ranking. */
        float lo = 0.0f, hi = 1.0f;
        for (int it = 0; it < 24 && n > 1024; it++) {
            float t = 0.5f * (lo + hi);
            double above = 0.0;
            for (int32_t j = 0; j < n; j++)
                if (p[idx[j]] >= t)
                    above += p[idx[j]];
            if (above >= prm->top_p * mass)
                lo = t;
            else
                hi = t;
        }
        if (lo > 0.0f) {
            int32_t m = 0;
            for (int32_t j = 0; j < n; j++)
                if (p[idx[j]] >= lo)
                    idx[m++] = idx[j];
            n = m;
        }
        sort_by_rank(p, idx, n);
        double acc = 0.0;
        int32_t keep = n;
        for (int32_t j = 0; j < n; j++) {
            acc += p[idx[j]];
            if (acc >= prm->top_p * mass) {
                keep = j + 1;
                break;
            }
        }
        n = keep;
    }
    /* 7: min-p relative to the most likely kept id */
    if (prm->min_p > 0.0f) {
        float pmax = 0.0f;
        for (int32_t j = 0; j < n; j++)
            if (p[idx[j]] > pmax)
                pmax = p[idx[j]];
        int32_t m = 0;
        for (int32_t j = 0; j < n; j++)
            if (p[idx[j]] >= prm->min_p * pmax)
                idx[m++] = idx[j];
        n = m;
    }
    qsort(idx, (size_t)n, sizeof *idx, cmp_id);
    return n;
}

/* Step 8 after filter(). */
static int32_t draw(const sn_sampler *s, int32_t n, int32_t greedy, uint64_t seed, uint64_t step)
{
    if (greedy >= 0)
        return greedy;
    if (n <= 0)
        return -1;
    double total = 0.0;
    for (int32_t j = 0; j < n; j++)
        total += s->probs[s->idx[j]];
    double target = (double)sn_philox_uniform(seed, step) * total, acc = 0.0;
    for (int32_t j = 0; j < n; j++) {
        acc += s->probs[s->idx[j]];
        if (acc > target)
            return s->idx[j];
    }
    return s->idx[n - 1];
}

int32_t sn_sample(sn_sampler *s, const float *logits, const uint64_t *allowed,
                  const sn_sampling *params, const int32_t *history, size_t n_history,
                  uint64_t seed, uint64_t step)
{
    int32_t greedy = -1;
    int32_t n = filter(s, logits, allowed, params, history, n_history, NULL, &greedy);
    return draw(s, n, greedy, seed, step);
}

int32_t sn_sample_seen(sn_sampler *s, const float *logits, const uint64_t *allowed,
                       const sn_sampling *params, const uint64_t *seen, uint64_t seed, uint64_t step)
{
    int32_t greedy = -1;
    int32_t n = filter(s, logits, allowed, params, NULL, 0, seen, &greedy);
    return draw(s, n, greedy, seed, step);
}

void sn_seen_bits(uint64_t *seen, int32_t vocab, const int32_t *history, size_t n_history)
{
    memset(seen, 0, ((size_t)vocab + 63) / 64 * sizeof *seen);
    for (size_t h = 0; h < n_history; h++)
        if (history[h] >= 0 && history[h] < vocab)
            seen[history[h] / 64] |= (uint64_t)1 << (history[h] % 64);
}

int32_t sn_sample_distribution(sn_sampler *s, const float *logits, const uint64_t *allowed,
                               const sn_sampling *params, const int32_t *history,
                               size_t n_history, float *probs)
{
    int32_t greedy = -1;
    memset(probs, 0, (size_t)s->vocab * sizeof *probs);
    int32_t n = filter(s, logits, allowed, params, history, n_history, NULL, &greedy);
    if (n < 0)
        return 0;
    if (greedy >= 0) {
        probs[greedy] = 1.0f;
        return 1;
    }
    double total = 0.0;
    for (int32_t j = 0; j < n; j++)
        total += s->probs[s->idx[j]];
    for (int32_t j = 0; j < n; j++)
        probs[s->idx[j]] = (float)(s->probs[s->idx[j]] / total);
    return n;
}

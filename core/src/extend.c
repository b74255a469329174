/*
 * extend.c - `sensorium extend`: a model's vocabulary grown by new plugins' ranges, its
 * embedding (and untied head) grown by rows drawn from the existing rows' distribution, and
 * the result written as a new model package (see extend.h for what the package holds).
 *
 * Data flow: check the output folder -> read the source (manifest or config.json, weights
 * mapped through safetensors.c, layout through vocab.c; sn_model_open checks every shape) ->
 * create each added plugin to learn its vocabulary size -> lay the new ids out -> in a hidden
 * folder beside the output: copy data files, write the manifests, open the layout; draw the
 * new rows; write model.safetensors; open the model -> rename the folder into place.
 *
 * Everything that can go wrong is the outside world's (a folder, a file, a plugin, a
 * configuration), so everything is a status with a message naming the file; the hidden
 * folder is removed on any failure, so nothing half-written ever carries the output's name.
 */
#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "extend.h"
#include "model.h"
#include "plugin_impl.h"
#include "safetensors.h"

#define MANIFEST "sensorium.json"
#define HF_CONFIG "config.json"
#define WEIGHTS_OUT "model.safetensors"
#define EMBED "model.embed_tokens.weight"
#define LM_HEAD "lm_head.weight"
#define MAX_VOCAB (1 << 24) /* vocab.c's table packs a segment index in 24 bits */
#define CHUNK_ROWS 256      /* rows converted to double at a time */

/* Files of a Hugging Face folder that tools fine-tuning the package elsewhere look for. */
static const char *const companions[] = {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
                                         "vocab.json", "merges.txt", NULL};

static void logf_extend(sn_log_level level, const char *fmt, ...) SN_PRINTF(2, 3);
static void logf_extend(sn_log_level level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sn_log_emit(level, "extend", msg);
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* "dir/name", malloc'ed, or NULL when out of memory. */
static char *join(const char *dir, const char *name)
{
    sn_str s = {0};
    if (sn_str_printf(&s, "%s/%s", dir, name) != SN_OK)
        return NULL;
    return s.s;
}

/* Re-records the last message with every occurrence of from replaced by to: checks run on the
 * hidden folder, but the user knows the output by its own name. */
static sn_status renamed_failure(sn_status st, const char *from, const char *to)
{
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", sn_errmsg());
    sn_str s = {0};
    const char *p = msg, *hit;
    size_t n = strlen(from);
    while (n && (hit = strstr(p, from))) {
        sn_str_append(&s, p, (size_t)(hit - p));
        sn_str_append(&s, to, strlen(to));
        p = hit + n;
    }
    sn_str_append(&s, p, strlen(p));
    st = sn_fail(st, "%s", s.s ? s.s : msg);
    sn_str_free(&s);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Random normals: xoshiro256** seeded by splitmix64, Box-Muller in double                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct rng {
    uint64_t s[4];
    int has_spare;
    double spare;
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
    r->has_spare = 0;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in (0, 1): never 0, so the logarithm below is finite. */
static double rng_uniform(rng *r) { return ((double)(rng_next(r) >> 11) + 0.5) * 0x1.0p-53; }

static double rng_normal(rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double rad = sqrt(-2.0 * log(rng_uniform(r))), ang = 6.283185307179586 * rng_uniform(r);
    r->spare = rad * sin(ang);
    r->has_spare = 1;
    return rad * cos(ang);
}

/* ---------------------------------------------------------------------------------------- */
/* New rows                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* float -> IEEE half, rounding to nearest even (F. Giesen's float_to_half_fast3_rtne). */
static uint16_t float_to_half(float value)
{
    uint32_t f, sign;
    memcpy(&f, &value, 4);
    sign = f & 0x80000000u;
    f ^= sign;
    uint16_t o;
    if (f >= (uint32_t)(127 + 16) << 23) { /* beyond half's range: inf, or nan kept quiet */
        o = f > 0x7F800000u ? 0x7E00 : 0x7C00;
    } else if (f < (uint32_t)113 << 23) { /* a half subnormal or zero: let float addition round */
        const uint32_t magic_bits = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
        float magic, x;
        memcpy(&magic, &magic_bits, 4);
        memcpy(&x, &f, 4);
        x += magic;
        memcpy(&f, &x, 4);
        o = (uint16_t)(f - magic_bits);
    } else {
        uint32_t mant_odd = (f >> 13) & 1;
        f += ((uint32_t)(15 - 127) << 23) + 0xFFF;
        f += mant_odd;
        o = (uint16_t)(f >> 13);
    }
    return (uint16_t)(o | sign >> 16);
}

/* float -> bfloat16, rounding to nearest even (the top half of a float32). */
static uint16_t float_to_bf16(float value)
{
    uint32_t f;
    memcpy(&f, &value, 4);
    if ((f & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)(f >> 16 | 0x40); /* nan stays nan */
    return (uint16_t)((f + 0x7FFFu + ((f >> 16) & 1)) >> 16);
}

static void store(sn_dtype dtype, double v, unsigned char *dst)
{
    float f = (float)v;
    uint16_t h;
    switch (dtype) {
    case SN_DTYPE_F16:
        h = float_to_half(f);
        memcpy(dst, &h, 2);
        break;
    case SN_DTYPE_BF16:
        h = float_to_bf16(f);
        memcpy(dst, &h, 2);
        break;
    default: /* F32: the only other dtype a safetensors file holds */
        memcpy(dst, &f, 4);
        break;
    }
}

/*
 * Cholesky factor of the symmetric matrix whose strict upper triangle is in a (row-major,
 * H x H) and whose diagonal is diag, plus jitter on the diagonal: the factor L (a = L L^T)
 * goes to a's lower triangle and diagonal, leaving the upper triangle for another try. Row by
 * row (Cholesky-Crout), each entry one dot product of two contiguous row prefixes. 0 when a
 * pivot is not positive: the matrix (with this jitter) is not positive definite.
 */
static int cholesky(double *a, const double *diag, int64_t H, double jitter)
{
    for (int64_t i = 0; i < H; i++) {
        double *li = a + i * H;
        for (int64_t j = 0; j <= i; j++) {
            const double *lj = a + j * H;
            double s = (j < i ? a[j * H + i] : diag[i] + jitter) - (j ? cblas_ddot((int)j, li, 1, lj, 1) : 0.0);
            if (j < i)
                li[j] = s / lj[j];
            else if (!(s > 0))
                return 0;
            else
                li[i] = sqrt(s);
        }
    }
    return 1;
}

/*
 * n_new rows ~ N(mean, cov) of t's rows (a (rows, H) matrix), in t's dtype, into *out
 * (malloc'ed, n_new * H elements; the caller frees).
 */
static sn_status draw_rows(const sn_tensor *t, int64_t n_new, rng *r, void **out)
{
    const int64_t V = t->shape[0], H = t->shape[1];
    const size_t esize = sn_dtype_size(t->dtype), row_bytes = (size_t)H * esize;
    sn_status st = SN_OK;
    double *mean = calloc((size_t)H, sizeof *mean), *diag = calloc((size_t)H, sizeof *diag);
    double *a = calloc((size_t)H * (size_t)H, sizeof *a);     /* (H, H) covariance, then its factor */
    double *x = malloc((size_t)CHUNK_ROWS * (size_t)H * sizeof *x); /* (CHUNK_ROWS, H) */
    float *f = malloc((size_t)CHUNK_ROWS * (size_t)H * sizeof *f);  /* (CHUNK_ROWS, H) */
    unsigned char *rows = malloc((size_t)n_new * row_bytes + 1);    /* (n_new, H) in t's dtype */
    *out = NULL;
    if (!mean || !diag || !a || !x || !f || !rows) {
        st = sn_fail(SN_ERR_NOMEM, "%s: out of memory for the %lld x %lld covariance of tensor '%s'", t->file,
                     (long long)H, (long long)H, t->name);
        goto done;
    }
    logf_extend(SN_LOG_INFO, "%s: mean and covariance of %lld rows of %lld, %lld new rows", t->name, (long long)V,
                (long long)H, (long long)n_new);

    /* mean, in double; a row with a nan or inf makes the moments meaningless */
    for (int64_t v0 = 0; v0 < V; v0 += CHUNK_ROWS) {
        const int64_t nr = V - v0 < CHUNK_ROWS ? V - v0 : CHUNK_ROWS;
        sn_convert_to_f32(t->dtype, (const unsigned char *)t->data + (size_t)v0 * row_bytes, f, (size_t)(nr * H));
        for (int64_t k = 0; k < nr * H; k++) {
            if (!isfinite(f[k])) {
                st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' row %lld holds %g; new rows need the mean and "
                                            "covariance of finite rows", t->file, t->name,
                             (long long)(v0 + k / H), (double)f[k]);
                goto done;
            }
            mean[k % H] += f[k];
        }
    }
    for (int64_t j = 0; j < H; j++)
        mean[j] /= (double)V;

    /* covariance: the lower triangle accumulates X^T X of the centred rows, chunk by chunk */
    for (int64_t v0 = 0; v0 < V; v0 += CHUNK_ROWS) {
        const int64_t nr = V - v0 < CHUNK_ROWS ? V - v0 : CHUNK_ROWS;
        sn_convert_to_f32(t->dtype, (const unsigned char *)t->data + (size_t)v0 * row_bytes, f, (size_t)(nr * H));
        for (int64_t k = 0; k < nr * H; k++)
            x[k] = (double)f[k] - mean[k % H];
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, (int)H, (int)nr, 1.0, x, (int)H, 1.0, a, (int)H);
    }
    const double denom = V > 1 ? (double)(V - 1) : 1.0;
    double trace = 0;
    for (int64_t i = 0; i < H; i++) {
        for (int64_t j = 0; j < i; j++)
            a[j * H + i] = a[i * H + j] / denom; /* mirrored up: the factor overwrites the lower half */
        diag[i] = a[i * H + i] / denom;
        trace += diag[i];
    }

    /* Fewer rows than columns, or duplicated rows, leave the covariance singular: add the
     * smallest jitter (relative to the mean variance) that makes it factor. */
    const double scale = trace / (double)H > 0 ? trace / (double)H : 1.0;
    double jitter = 0;
    for (int tries = 0; !cholesky(a, diag, H, jitter); tries++) {
        if (tries == 10) {
            st = sn_fail(SN_ERR_FORMAT, "%s: tensor '%s': the covariance of its rows does not factor even with "
                                        "%g added to its diagonal", t->file, t->name, jitter);
            goto done;
        }
        jitter = jitter ? jitter * 10 : 1e-9 * scale;
    }
    if (jitter)
        logf_extend(SN_LOG_WARN, "%s: the covariance of its %lld rows of %lld is not positive definite%s; added "
                                 "%.3g (%.0e of the mean variance) to its diagonal",
                    t->name, (long long)V, (long long)H, V <= H ? " (no more rows than columns)" : "", jitter,
                    jitter / scale);

    /* row = mean + L z, z ~ N(0, I): a chunk of z rows times L^T */
    for (int64_t r0 = 0; r0 < n_new; r0 += CHUNK_ROWS) {
        const int64_t nr = n_new - r0 < CHUNK_ROWS ? n_new - r0 : CHUNK_ROWS;
        for (int64_t k = 0; k < nr * H; k++)
            x[k] = rng_normal(r);
        cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)nr, (int)H, 1.0, a,
                    (int)H, x, (int)H);
        for (int64_t k = 0; k < nr * H; k++)
            store(t->dtype, x[k] + mean[k % H], rows + ((size_t)r0 * (size_t)H + (size_t)k) * esize);
    }
    *out = rows;
    rows = NULL;
done:
    free(mean);
    free(diag);
    free(a);
    free(x);
    free(f);
    free(rows);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* The source model                                                                         */
/* ---------------------------------------------------------------------------------------- */

typedef struct source {
    const char *dir;
    char *config_path;        /* sensorium.json or config.json: where the architecture is */
    json_t *root;             /* sensorium.json (owned), or NULL for a Hugging Face folder */
    json_t *arch;             /* the architecture (owned reference) */
    sn_model_config cfg;
    char *weights_path;       /* the .safetensors file or the index */
    json_t *index;            /* the index (owned), or NULL for one file */
    sn_st_file *files;        /* (n_files) mapped */
    const char **shard_names; /* (n_files) names in the index (borrowed), or NULL */
    size_t n_files;
    sn_vocab *layout;         /* the source's layout (owned), or NULL when its ids are raw */
    /* Without a layout: the special ids from the architecture (bos, pad -1 for none), more
     * ids that end generation (an eos_token_id list's others), and with a tokenizer.json the
     * size of the open text segment its ids become (0: none, the ids stay raw). */
    long long bos, eos, pad;
    json_t *stops;            /* (owned) array of ids */
    uint32_t text_size;
} source;

/* The layout a Hugging Face tokenizer's ids become: one open segment (no markers; its
 * control tokens may be the special ids) of this plugin. */
#define TEXT_MODALITY "text"
#define TEXT_PLUGIN "text.bpe"
#define TEXT_CONFIG "{\"tokenizer\": \"tokenizer.json\"}"

static void source_close(source *s)
{
    for (size_t i = 0; i < s->n_files; i++)
        sn_st_close(&s->files[i]);
    free(s->files);
    free(s->shard_names);
    json_decref(s->index);
    json_decref(s->stops);
    json_decref(s->arch);
    json_decref(s->root);
    free(s->config_path);
    free(s->weights_path);
    sn_vocab_close(s->layout);
    memset(s, 0, sizeof *s);
}

/* bos_token_id, eos_token_id or pad_token_id: an id, or a list of them (the first is the
 * one; the others of an eos list also end generation, into stops when given). */
static sn_status token_id(source *s, const char *key, int required, long long *out, json_t *stops)
{
    json_t *v = json_object_get(s->arch, key), *list = json_is_array(v) ? v : NULL;
    if (list && json_array_size(list) == 0)
        v = NULL;
    for (size_t i = 0; list && i < json_array_size(list); i++) {
        json_t *id = json_array_get(list, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= s->cfg.vocab_size)
            return sn_fail(SN_ERR_CONFIG, "%s: '%s'[%zu] must be a token id below vocab_size %d", s->config_path,
                           key, i, s->cfg.vocab_size);
        if (i && stops && json_array_append(stops, id))
            return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    if (list && json_array_size(list) > 1 && !stops)
        logf_extend(SN_LOG_INFO, "%s: %s lists %zu ids; the layout takes the first", s->config_path, key,
                    json_array_size(list));
    if (list)
        v = json_array_get(list, 0);
    if (!v || json_is_null(v)) {
        if (!required) {
            *out = -1;
            return SN_OK;
        }
        return sn_fail(SN_ERR_CONFIG, "%s: no '%s': without a vocabulary layout, extend makes one from it (or "
                                      "write %s/%s with a \"vocab\")",
                       s->config_path, key, s->dir, MANIFEST);
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= s->cfg.vocab_size)
        return sn_fail(SN_ERR_CONFIG, "%s: '%s' must be a token id below vocab_size %d", s->config_path, key,
                       s->cfg.vocab_size);
    *out = json_integer_value(v);
    return SN_OK;
}

/* A Hugging Face folder's tokenizer.json: its ids become an open text segment of text.bpe,
 * whose size the plugin gives. */
static sn_status open_text_segment(const sn_plugins *plugins, source *s)
{
    sn_codec *codec = NULL;
    sn_status st = sn_codec_open(plugins, TEXT_PLUGIN, TEXT_CONFIG, s->dir, &codec);
    if (st != SN_OK) {
        char why[1536];
        snprintf(why, sizeof why, "%s", sn_errmsg());
        return sn_fail(st, "%s/tokenizer.json: its ids become a '%s' segment of plugin %s, which fails: %s (or "
                           "write %s/%s with the layout you want)",
                       s->dir, TEXT_MODALITY, TEXT_PLUGIN, why, s->dir, MANIFEST);
    }
    s->text_size = sn_codec_vocab_size(codec);
    sn_codec_close(codec);
    if ((int64_t)s->text_size > s->cfg.vocab_size)
        return sn_fail(SN_ERR_VOCAB, "%s/tokenizer.json: %u tokens, more than the model's vocab_size %d in %s",
                       s->dir, s->text_size, s->cfg.vocab_size, s->config_path);
    return SN_OK;
}

/* Maps the weights: one file, or every shard the index names. */
static sn_status open_weights(source *s, const char *weights)
{
    if (!(s->weights_path = join(s->dir, weights)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    if (!ends_with(weights, ".json")) {
        if (!(s->files = calloc(1, sizeof *s->files)))
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        sn_status st = sn_st_open(s->weights_path, &s->files[0]);
        if (st == SN_OK)
            s->n_files = 1;
        return st;
    }
    sn_status st = sn_json_load(s->weights_path, &s->index);
    if (st != SN_OK)
        return st;
    json_t *map = json_object_get(s->index, "weight_map");
    if (!json_is_object(map))
        return sn_fail(SN_ERR_FORMAT, "%s: no \"weight_map\" object (tensor name -> shard file)", s->weights_path);
    size_t cap = json_object_size(map) + 1;
    s->files = calloc(cap, sizeof *s->files);
    s->shard_names = calloc(cap, sizeof *s->shard_names);
    if (!s->files || !s->shard_names)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    const char *name;
    json_t *shard;
    json_object_foreach(map, name, shard) {
        if (!json_is_string(shard))
            return sn_fail(SN_ERR_FORMAT, "%s: weight_map['%s'] is not a file name", s->weights_path, name);
        int seen = 0;
        for (size_t f = 0; f < s->n_files && !seen; f++)
            seen = strcmp(s->shard_names[f], json_string_value(shard)) == 0;
        if (seen)
            continue;
        char *path = join(s->dir, json_string_value(shard));
        st = path ? sn_st_open(path, &s->files[s->n_files]) : sn_fail(SN_ERR_NOMEM, "out of memory");
        free(path);
        if (st != SN_OK)
            return st;
        s->shard_names[s->n_files++] = json_string_value(shard);
    }
    return SN_OK;
}

static sn_status open_source(const sn_plugins *plugins, const char *dir, source *s)
{
    memset(s, 0, sizeof *s);
    s->dir = dir;
    s->pad = -1;
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return sn_fail(errno == ENOENT ? SN_ERR_NOT_FOUND : SN_ERR_IO, "%s: cannot read the model folder: %s", dir,
                       strerror(errno));
    if (!S_ISDIR(sb.st_mode)) {
        if (ends_with(dir, ".gguf"))
            return sn_fail(SN_ERR_UNSUPPORTED, "%s: a GGUF file; extend reads and writes safetensors models "
                                               "(a Sensorium package or a Hugging Face folder)", dir);
        return sn_fail(SN_ERR_NOT_FOUND, "%s: not a folder; give the model folder (sensorium.json or config.json)",
                       dir);
    }
    char *manifest = join(dir, MANIFEST);
    if (!manifest)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    const char *weights;
    sn_status st;
    if (is_file(manifest)) {
        s->config_path = manifest;
        if ((st = sn_json_load(manifest, &s->root)) != SN_OK)
            return st;
        json_t *arch = json_object_get(s->root, "architecture"), *w = json_object_get(s->root, "weights");
        if (!arch)
            return sn_fail(SN_ERR_CONFIG, "%s: no \"architecture\": this manifest describes only a vocabulary "
                                          "layout; extend needs a model package (architecture and weights)",
                           manifest);
        if (!json_is_string(w) || !*json_string_value(w))
            return sn_fail(SN_ERR_CONFIG, "%s: \"weights\" must name the .safetensors file or its index .json",
                           manifest);
        s->arch = json_incref(arch);
        weights = json_string_value(w);
    } else {
        free(manifest);
        if (!(s->config_path = join(dir, HF_CONFIG)))
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        if (!is_file(s->config_path))
            return sn_fail(SN_ERR_NOT_FOUND, "%s: neither %s nor %s: not a model folder", dir, MANIFEST, HF_CONFIG);
        if ((st = sn_json_load(s->config_path, &s->arch)) != SN_OK)
            return st;
        char *single = join(dir, "model.safetensors");
        weights = single && is_file(single) ? "model.safetensors" : "model.safetensors.index.json";
        free(single);
    }
    if (ends_with(weights, ".gguf"))
        return sn_fail(SN_ERR_UNSUPPORTED, "%s: weights '%s' are GGUF; extend reads and writes safetensors",
                       s->config_path, weights);
    if ((st = sn_model_config_parse(s->arch, s->config_path, &s->cfg)) != SN_OK)
        return st;
    /* Every shape against the configuration, as the engine will check it. */
    sn_model *m = NULL;
    if ((st = sn_model_open(dir, &m)) != SN_OK)
        return st;
    sn_model_close(m);
    if ((st = open_weights(s, weights)) != SN_OK)
        return st;

    if (s->root && json_object_get(s->root, "vocab")) {
        if ((st = sn_vocab_open(dir, plugins, &s->layout)) != SN_OK)
            return st;
        if ((int64_t)sn_vocab_size(s->layout) != s->cfg.vocab_size)
            return sn_fail(SN_ERR_VOCAB, "%s: vocab.size %u differs from architecture.vocab_size %d; the engine "
                                         "needs them equal",
                           s->config_path, sn_vocab_size(s->layout), s->cfg.vocab_size);
        return SN_OK;
    }
    /* No layout: one is made from the special ids, with the tokenizer's ids as an open text
     * segment when there is a tokenizer.json, raw ids outside any segment when not. */
    if (!(s->stops = json_array()))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    if ((st = token_id(s, "eos_token_id", 1, &s->eos, s->stops)) || (st = token_id(s, "bos_token_id", 0, &s->bos, NULL)) ||
        (st = token_id(s, "pad_token_id", 0, &s->pad, NULL)))
        return st;
    /* a layout gives each id one role */
    if (s->bos == s->eos) {
        logf_extend(SN_LOG_INFO, "%s: bos_token_id is eos_token_id (%lld); the layout has no bos", s->config_path,
                    s->bos);
        s->bos = -1;
    }
    if (s->pad >= 0 && (s->pad == s->bos || s->pad == s->eos)) {
        logf_extend(SN_LOG_INFO, "%s: pad_token_id %lld is also bos or eos; the layout has no pad", s->config_path,
                    s->pad);
        s->pad = -1;
    }
    char *tok = join(dir, "tokenizer.json");
    int has_tokenizer = tok && is_file(tok);
    free(tok);
    if (has_tokenizer)
        return open_text_segment(plugins, s);
    logf_extend(SN_LOG_INFO, "%s: no layout and no tokenizer.json: ids 0..%d stay raw token ids, outside any "
                             "segment", dir, s->cfg.vocab_size - 1);
    return SN_OK;
}

/* Every tensor to copy, sorted by name: each from the file (or the shard the index names). */
static sn_status list_tensors(const source *s, const sn_tensor ***out, size_t *n_out)
{
    size_t n = 0, total = 0;
    for (size_t f = 0; f < s->n_files; f++)
        total += s->files[f].n;
    const sn_tensor **list = calloc(total + 1, sizeof *list);
    if (!list)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    json_t *map = s->index ? json_object_get(s->index, "weight_map") : NULL;
    for (size_t f = 0; f < s->n_files; f++)
        for (size_t i = 0; i < s->files[f].n; i++) {
            const sn_tensor *t = &s->files[f].tensors[i];
            /* a shard's copy of a tensor the index places elsewhere is not the model's */
            if (map && (!json_object_get(map, t->name) ||
                        strcmp(json_string_value(json_object_get(map, t->name)), s->shard_names[f]) != 0))
                continue;
            list[n++] = t;
        }
    if (map && n != json_object_size(map)) {
        const char *name;
        json_t *shard;
        json_object_foreach(map, name, shard) {
            int found = 0;
            for (size_t k = 0; k < n && !found; k++)
                found = strcmp(list[k]->name, name) == 0;
            if (!found) {
                free(list);
                return sn_fail(SN_ERR_FORMAT, "%s: tensor '%s' is not in %s, the shard the index names",
                               s->weights_path, name, json_string_value(shard));
            }
        }
    }
    /* insertion sort by name: a few hundred tensors, and the files are sorted already */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(list[j - 1]->name, list[j]->name) > 0; j--) {
            const sn_tensor *tmp = list[j];
            list[j] = list[j - 1];
            list[j - 1] = tmp;
        }
    *out = list;
    *n_out = n;
    return SN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* The output folder                                                                        */
/* ---------------------------------------------------------------------------------------- */

enum { OUT_NEW, OUT_EMPTY, OUT_FILL };

typedef struct outdir {
    char *out;    /* the output folder, without trailing slashes */
    char *tmp;    /* the hidden folder beside it where the package is built; NULL before */
    int state;    /* OUT_NEW: absent, OUT_EMPTY: an empty folder, OUT_FILL: --force into files */
    char **files; /* (n_files) relative paths written in tmp, in order */
    size_t n_files;
    char **dirs;  /* (n_dirs) relative sub-folders made in tmp, parents first */
    size_t n_dirs;
} outdir;

static sn_status push(char ***list, size_t *n, const char *s)
{
    char **grown = realloc(*list, (*n + 1) * sizeof *grown);
    if (!grown)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    *list = grown;
    if (!(grown[*n] = sn_strdup(s)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    ++*n;
    return SN_OK;
}

static void free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* Removes the hidden folder with what was written in it, and frees od. */
static void outdir_close(outdir *od)
{
    if (od->tmp) {
        for (size_t i = od->n_files; i-- > 0;) {
            char *p = join(od->tmp, od->files[i]);
            if (p)
                remove(p);
            free(p);
        }
        for (size_t i = od->n_dirs; i-- > 0;) {
            char *p = join(od->tmp, od->dirs[i]);
            if (p)
                rmdir(p);
            free(p);
        }
        rmdir(od->tmp);
    }
    free_list(od->files, od->n_files);
    free_list(od->dirs, od->n_dirs);
    free(od->tmp);
    free(od->out);
    memset(od, 0, sizeof *od);
}

/* Decides what the output folder is, before any work: absent, empty, or (with force) a
 * non-empty folder whose files of the same names are replaced. */
static sn_status outdir_check(const char *out, const char *model_dir, int force, outdir *od)
{
    memset(od, 0, sizeof *od);
    if (!(od->out = sn_strdup(out)))
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    for (size_t n = strlen(od->out); n > 1 && od->out[n - 1] == '/'; n--)
        od->out[n - 1] = '\0';
    if (!*od->out || strcmp(od->out, "/") == 0)
        return sn_fail(SN_ERR_INVALID_ARG, "'%s' cannot be the output folder", out);
    struct stat sb;
    if (stat(od->out, &sb) != 0) {
        if (errno != ENOENT)
            return sn_fail(SN_ERR_IO, "%s: %s", od->out, strerror(errno));
        od->state = OUT_NEW;
        return SN_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return sn_fail(SN_ERR_IO, "%s: exists and is not a folder; give a new or empty folder", od->out);
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(od->out, a) && realpath(model_dir, b) && strcmp(a, b) == 0)
        return sn_fail(SN_ERR_INVALID_ARG, "%s is the model folder itself; write the extended model to a new folder",
                       od->out);
    DIR *d = opendir(od->out);
    if (!d)
        return sn_fail(SN_ERR_IO, "%s: cannot read: %s", od->out, strerror(errno));
    size_t entries = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            entries++;
    closedir(d);
    if (!entries) {
        od->state = OUT_EMPTY;
        return SN_OK;
    }
    if (!force)
        return sn_fail(SN_ERR_IO, "%s: not empty (%zu entr%s); give a new or empty folder, or --force to replace "
                                  "the files extend writes there",
                       od->out, entries, entries == 1 ? "y" : "ies");
    od->state = OUT_FILL;
    return SN_OK;
}

/* Makes the hidden folder: .NAME.extend-PID-N beside the output, on the same file system so
 * that the last step is a rename. mkdir rather than mkdtemp: the package gets the umask's
 * permissions, as a folder the user made would, not mkdtemp's 0700. */
static sn_status outdir_begin(outdir *od)
{
    const char *slash = strrchr(od->out, '/');
    const int parent_len = slash ? (int)(slash - od->out) : 0;
    const char *base = slash ? slash + 1 : od->out;
    static unsigned long counter;
    for (int tries = 0; tries < 100; tries++) {
        sn_str t = {0};
        sn_status st = sn_str_printf(&t, "%.*s%s.%s.extend-%ld-%lu", parent_len, od->out, slash ? "/" : "", base,
                                     (long)getpid(), counter++);
        if (st != SN_OK)
            return st;
        if (mkdir(t.s, 0777) == 0) {
            od->tmp = t.s;
            return SN_OK;
        }
        int err = errno;
        if (err != EEXIST) {
            st = sn_fail(SN_ERR_IO, "%s: cannot create a folder beside it (%s): %s", od->out, t.s, strerror(err));
            sn_str_free(&t);
            return st;
        }
        sn_str_free(&t);
    }
    return sn_fail(SN_ERR_IO, "%s: cannot find a free name for a work folder beside it", od->out);
}

/* Creates the sub-folders of rel inside the hidden folder. */
static sn_status outdir_mkdirs(outdir *od, const char *rel)
{
    char sub[PATH_MAX];
    for (const char *p = strchr(rel, '/'); p; p = strchr(p + 1, '/')) {
        snprintf(sub, sizeof sub, "%.*s", (int)(p - rel), rel);
        int known = 0;
        for (size_t i = 0; i < od->n_dirs && !known; i++)
            known = strcmp(od->dirs[i], sub) == 0;
        if (known)
            continue;
        char *path = join(od->tmp, sub);
        if (!path)
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        int rc = mkdir(path, 0777);
        int err = errno;
        free(path);
        if (rc != 0)
            return sn_fail(SN_ERR_IO, "%s/%s: cannot create: %s", od->out, sub, strerror(err));
        sn_status st = push(&od->dirs, &od->n_dirs, sub);
        if (st != SN_OK)
            return st;
    }
    return SN_OK;
}

/* Moves the finished package to the output name. */
static sn_status outdir_commit(outdir *od)
{
    if (od->state != OUT_FILL) {
        /* rename replaces an empty folder: the package appears whole or not at all */
        if (rename(od->tmp, od->out) != 0)
            return sn_fail(SN_ERR_IO, "%s: cannot rename %s to it: %s", od->out, od->tmp, strerror(errno));
        free(od->tmp);
        od->tmp = NULL;
        return SN_OK;
    }
    /* Into a non-empty folder file by file: first it stops claiming to be a model, and the
     * manifest (written last in the list) makes it one again. */
    const char *claims[] = {MANIFEST, HF_CONFIG};
    for (int i = 0; i < 2; i++) {
        char *p = join(od->out, claims[i]);
        if (!p)
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        int rc = remove(p), err = errno;
        free(p);
        if (rc != 0 && err != ENOENT)
            return sn_fail(SN_ERR_IO, "%s/%s: cannot replace: %s", od->out, claims[i], strerror(err));
    }
    for (size_t i = 0; i < od->n_dirs; i++) {
        char *p = join(od->out, od->dirs[i]);
        if (!p)
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        int rc = mkdir(p, 0777), err = errno;
        free(p);
        if (rc != 0 && err != EEXIST)
            return sn_fail(SN_ERR_IO, "%s/%s: cannot create: %s", od->out, od->dirs[i], strerror(err));
    }
    for (int last = 0; last < 2; last++)
        for (size_t i = 0; i < od->n_files; i++) {
            const char *rel = od->files[i];
            if ((strcmp(rel, MANIFEST) == 0) != last)
                continue;
            char *from = join(od->tmp, rel), *to = join(od->out, rel);
            int rc = from && to ? rename(from, to) : -1, err = from && to ? errno : ENOMEM;
            free(from);
            free(to);
            if (rc != 0)
                return sn_fail(SN_ERR_IO, "%s/%s: cannot move the new file into place: %s (the folder is "
                                          "incomplete)", od->out, rel, strerror(err));
        }
    free_list(od->files, od->n_files);
    od->files = NULL;
    od->n_files = 0;
    return SN_OK; /* outdir_close removes the emptied hidden folder */
}

static sn_status copy_file(const char *from, const char *to, const char *shown_to)
{
    FILE *in = fopen(from, "rb");
    if (!in)
        return sn_fail(SN_ERR_IO, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        int err = errno;
        fclose(in);
        return sn_fail(SN_ERR_IO, "%s: cannot create: %s", shown_to, strerror(err));
    }
    enum { BUF = 1 << 16 };
    char *buf = malloc(BUF);
    sn_status st = buf ? SN_OK : sn_fail(SN_ERR_NOMEM, "out of memory");
    size_t n;
    while (st == SN_OK && (n = fread(buf, 1, BUF, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            st = sn_fail(SN_ERR_IO, "%s: cannot write: %s", shown_to, strerror(errno));
    if (st == SN_OK && ferror(in))
        st = sn_fail(SN_ERR_IO, "%s: cannot read: %s", from, strerror(errno));
    free(buf);
    fclose(in);
    if (fclose(out) != 0 && st == SN_OK)
        st = sn_fail(SN_ERR_IO, "%s: cannot write: %s", shown_to, strerror(errno));
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Data files                                                                               */
/* ---------------------------------------------------------------------------------------- */

typedef struct copies {
    char **rel;  /* (n) the name in the package */
    char **from; /* (n_from) the file it comes from; n_from == n but while adding */
    size_t n, n_from;
} copies;

/* A relative path inside a folder: not absolute, no "..", nothing extend writes itself. */
static int inside_name(const char *s)
{
    if (!*s || s[0] == '/' || strcmp(s, MANIFEST) == 0 || strcmp(s, HF_CONFIG) == 0 || strcmp(s, WEIGHTS_OUT) == 0)
        return 0;
    for (const char *p = s; *p; p = strchr(p, '/') ? strchr(p, '/') + 1 : p + strlen(p))
        if (strncmp(p, "..", 2) == 0 && (p[2] == '/' || p[2] == '\0'))
            return 0;
    return 1;
}

/* Adds dir/rel to the copies when it is a file. */
static sn_status want(copies *c, const char *dir, const char *rel, const char *out)
{
    if (!inside_name(rel))
        return SN_OK;
    char *from = join(dir, rel);
    if (!from)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    if (!is_file(from)) {
        free(from);
        return SN_OK;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->rel[i], rel) != 0)
            continue;
        char a[PATH_MAX], b[PATH_MAX];
        int same = realpath(from, a) && realpath(c->from[i], b) && strcmp(a, b) == 0;
        sn_status st = same ? SN_OK
                            : sn_fail(SN_ERR_CONFIG, "%s and %s would both be %s/%s; give one of them another name",
                                      c->from[i], from, out, rel);
        free(from);
        return st;
    }
    sn_status st = push(&c->from, &c->n_from, from);
    if (st == SN_OK)
        st = push(&c->rel, &c->n, rel);
    free(from);
    return st;
}

/* Every string in a configuration that names a file in dir. */
static sn_status want_config_files(copies *c, const char *dir, json_t *v, const char *out)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (s[0] == '/' && is_file(s))
            logf_extend(SN_LOG_WARN, "a configuration names %s by its absolute path: the package in %s depends on "
                                     "it staying there", s, out);
        return want(c, dir, s, out);
    }
    sn_status st = SN_OK;
    if (json_is_array(v))
        for (size_t i = 0; i < json_array_size(v) && st == SN_OK; i++)
            st = want_config_files(c, dir, json_array_get(v, i), out);
    else if (json_is_object(v))
        for (void *it = json_object_iter(v); it && st == SN_OK; it = json_object_iter_next(v, it))
            st = want_config_files(c, dir, json_object_iter_value(it), out);
    return st;
}

/* A segment's files: those its configuration names and PLUGIN.npy, the default name the
 * reference plugins give what `sensorium fit` writes. */
static sn_status want_segment_files(copies *c, const char *dir, const char *plugin, json_t *config, const char *out)
{
    sn_status st = want_config_files(c, dir, config, out);
    if (st != SN_OK)
        return st;
    char npy[300];
    snprintf(npy, sizeof npy, "%s.npy", plugin);
    return want(c, dir, npy, out);
}

/* ---------------------------------------------------------------------------------------- */
/* The operation                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* An add, parsed and placed. */
typedef struct placed {
    json_t *config; /* owned */
    sn_extend_range range;
} placed;

/* Parses and checks each add, creates its plugin for its vocabulary size, and lays the new
 * ids out after the current ones. */
static sn_status place_adds(const sn_plugins *plugins, const sn_extend_opts *o, const source *s, placed *p,
                            int64_t *new_vocab)
{
    int64_t next = s->cfg.vocab_size;
    const char *data_dir = o->data_dir ? o->data_dir : o->model_dir;
    for (size_t i = 0; i < o->n_adds; i++) {
        const sn_extend_add *a = &o->adds[i];
        if (!a->modality || !*a->modality || !a->plugin || !*a->plugin)
            return sn_fail(SN_ERR_INVALID_ARG, "add %zu: a modality and a plugin name are required", i + 1);
        if (s->layout && sn_vocab_find(s->layout, a->modality) >= 0) {
            sn_vocab_segment seg;
            sn_vocab_segment_get(s->layout, (size_t)sn_vocab_find(s->layout, a->modality), &seg);
            return sn_fail(SN_ERR_CONFIG, "--add %s:%s: %s already has modality '%s' (plugin %s, ids %u..%u); "
                                          "give the new one another name",
                           a->modality, a->plugin, s->config_path, a->modality, seg.plugin, seg.start,
                           seg.start + seg.size - 1);
        }
        if (s->text_size && strcmp(a->modality, TEXT_MODALITY) == 0)
            return sn_fail(SN_ERR_CONFIG, "--add %s:%s: the model's tokenizer.json is modality '%s' (plugin %s, ids "
                                          "0..%u); give the new one another name",
                           a->modality, a->plugin, TEXT_MODALITY, TEXT_PLUGIN, s->text_size - 1);
        for (size_t j = 0; j < i; j++)
            if (strcmp(o->adds[j].modality, a->modality) == 0)
                return sn_fail(SN_ERR_CONFIG, "--add %s:%s: modality '%s' is added twice", a->modality, a->plugin,
                               a->modality);
        if (a->config_json && *a->config_json) {
            json_error_t jerr;
            if (!(p[i].config = json_loads(a->config_json, JSON_REJECT_DUPLICATES, &jerr)))
                return sn_fail(SN_ERR_CONFIG, "--add %s:%s: configuration, line %d column %d: %s", a->modality,
                               a->plugin, jerr.line, jerr.column, jerr.text);
            if (!json_is_object(p[i].config))
                return sn_fail(SN_ERR_CONFIG, "--add %s:%s: the configuration must be a JSON object", a->modality,
                               a->plugin);
        } else if (!(p[i].config = json_object()))
            return sn_fail(SN_ERR_NOMEM, "out of memory");
        /* the plugin itself says how many ids it needs under this configuration, or why not */
        sn_codec *codec = NULL;
        sn_status st = sn_codec_open(plugins, a->plugin, a->config_json, data_dir, &codec);
        if (st != SN_OK) {
            char why[1536];
            snprintf(why, sizeof why, "%s", sn_errmsg());
            return sn_fail(st, "--add %s:%s: %s", a->modality, a->plugin, why);
        }
        uint32_t size = sn_codec_vocab_size(codec);
        sn_codec_close(codec);
        if (next + 2 + (int64_t)size > MAX_VOCAB)
            return sn_fail(SN_ERR_VOCAB, "--add %s:%s: %u more ids would make the vocabulary %lld ids, past the "
                                         "%d a layout holds",
                           a->modality, a->plugin, size, (long long)(next + 2 + size), MAX_VOCAB);
        p[i].range = (sn_extend_range){.begin = (int32_t)next, .end = (int32_t)next + 1,
                                       .start = (uint32_t)next + 2, .size = size};
        next += 2 + (int64_t)size;
    }
    *new_vocab = next;
    return SN_OK;
}

/* The new sensorium.json: the source's, grown; or, for raw ids, a layout of the new segments. */
static sn_status build_manifest(const source *s, const sn_extend_opts *o, const placed *p, int64_t new_vocab,
                                json_t **manifest, json_t **arch)
{
    json_t *root = s->root ? json_deep_copy(s->root) : json_pack("{s:i}", "sensorium", 1);
    json_t *a = json_deep_copy(s->arch);
    json_t *vocab = s->root ? json_object_get(root, "vocab") : NULL, *segs = NULL;
    int bad = !root || !a;
    if (!bad && !vocab) {
        const char *base = strrchr(s->dir, '/');
        vocab = json_pack("{s:I}", "size", (json_int_t)new_vocab);
        json_t *text = s->text_size ? json_pack("{s:s, s:s, s:i, s:I, s:{s:s}}", "modality", TEXT_MODALITY, "plugin",
                                                TEXT_PLUGIN, "start", 0, "size", (json_int_t)s->text_size,
                                                "config", "tokenizer", "tokenizer.json")
                                    : NULL;
        bad = !vocab || (s->bos >= 0 && json_object_set_new(vocab, "bos", json_integer(s->bos))) ||
              json_object_set_new(vocab, "eos", json_integer(s->eos)) ||
              (s->pad >= 0 && json_object_set_new(vocab, "pad", json_integer(s->pad))) ||
              (json_array_size(s->stops) && json_object_set(vocab, "stop", s->stops)) ||
              json_object_set_new(vocab, "segments", text ? json_pack("[o]", text) : json_array()) ||
              (!json_object_get(root, "name") &&
               json_object_set_new(root, "name", json_string(base && base[1] ? base + 1 : s->dir))) ||
              json_object_set_new(root, "vocab", vocab);
    }
    if (!bad) {
        segs = json_object_get(vocab, "segments");
        bad = json_object_set_new(vocab, "size", json_integer(new_vocab)) ||
              json_object_set_new(a, "vocab_size", json_integer(new_vocab)) ||
              json_object_set(root, "architecture", a) ||
              json_object_set_new(root, "weights", json_string(WEIGHTS_OUT)) || !json_is_array(segs);
    }
    for (size_t i = 0; i < o->n_adds && !bad; i++) {
        const sn_extend_range *r = &p[i].range;
        json_t *seg = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:O}", "modality", o->adds[i].modality, "plugin",
                                o->adds[i].plugin, "start", (json_int_t)r->start, "size", (json_int_t)r->size,
                                "begin", (json_int_t)r->begin, "end", (json_int_t)r->end, "config", p[i].config);
        bad = json_array_append_new(segs, seg) != 0;
    }
    if (bad) {
        json_decref(root);
        json_decref(a);
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    }
    *manifest = root;
    *arch = a;
    return SN_OK;
}

/* The fewest significant digits (up to 17, always enough) that write every real in j so that
 * it reads back the same: 1e-05 stays 1e-05 rather than 1.0000000000000001e-05. */
static int real_digits(json_t *j)
{
    int most = 1;
    if (json_is_real(j)) {
        const double x = json_real_value(j);
        char buf[40];
        for (most = 1; most < 17; most++) {
            snprintf(buf, sizeof buf, "%.*g", most, x);
            if (strtod(buf, NULL) == x)
                break;
        }
    } else if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j); i++) {
            int d = real_digits(json_array_get(j, i));
            most = d > most ? d : most;
        }
    } else if (json_is_object(j)) {
        for (void *it = json_object_iter(j); it; it = json_object_iter_next(j, it)) {
            int d = real_digits(json_object_iter_value(it));
            most = d > most ? d : most;
        }
    }
    return most;
}

static sn_status write_json(outdir *od, const char *rel, json_t *j)
{
    char *path = join(od->tmp, rel);
    if (!path)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    sn_status st = SN_OK;
    if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(real_digits(j))) != 0)
        st = sn_fail(SN_ERR_IO, "%s/%s: cannot write: %s", od->out, rel, strerror(errno));
    free(path);
    return st != SN_OK ? st : push(&od->files, &od->n_files, rel);
}

/* Copies the data files, writes the manifests and opens the layout the package now has. */
static sn_status write_layout(const sn_plugins *plugins, const source *s, const sn_extend_opts *o, const placed *p,
                              json_t *manifest, json_t *arch, outdir *od)
{
    copies c = {0};
    sn_status st = SN_OK;
    json_t *old = s->root ? json_object_get(json_object_get(s->root, "vocab"), "segments") : NULL;
    for (size_t i = 0; i < json_array_size(old) && st == SN_OK; i++) {
        json_t *seg = json_array_get(old, i), *plugin = json_object_get(seg, "plugin");
        if (json_is_string(plugin)) /* sn_vocab_open has checked it is */
            st = want_segment_files(&c, s->dir, json_string_value(plugin), json_object_get(seg, "config"), od->out);
    }
    for (size_t i = 0; i < o->n_adds && st == SN_OK; i++)
        st = want_segment_files(&c, o->data_dir ? o->data_dir : o->model_dir, o->adds[i].plugin, p[i].config,
                                od->out);
    for (const char *const *k = companions; *k && st == SN_OK; k++)
        st = want(&c, s->dir, *k, od->out);
    for (size_t i = 0; i < c.n && st == SN_OK; i++) {
        char *to = join(od->tmp, c.rel[i]), *shown = join(od->out, c.rel[i]);
        if (!to || !shown)
            st = sn_fail(SN_ERR_NOMEM, "out of memory");
        if (st == SN_OK && (st = outdir_mkdirs(od, c.rel[i])) == SN_OK &&
            (st = copy_file(c.from[i], to, shown)) == SN_OK)
            st = push(&od->files, &od->n_files, c.rel[i]);
        if (st == SN_OK)
            logf_extend(SN_LOG_INFO, "copied %s to %s", c.from[i], shown);
        free(to);
        free(shown);
    }
    free_list(c.rel, c.n);
    free_list(c.from, c.n_from);
    if (st == SN_OK)
        st = write_json(od, HF_CONFIG, arch);
    if (st == SN_OK)
        st = write_json(od, MANIFEST, manifest);
    if (st != SN_OK)
        return st;
    /* Every plugin created as the engine will create it, data directory the package. */
    sn_vocab *v = NULL;
    if ((st = sn_vocab_open(od->tmp, plugins, &v)) != SN_OK) {
        st = renamed_failure(st, od->tmp, od->out);
        if (st != SN_ERR_PLUGIN) /* not a plugin missing a file: the message says it all */
            return st;
        char msg[2048];
        snprintf(msg, sizeof msg, "%s", sn_errmsg());
        return sn_fail(st, "%s (extend copies the files the configurations name, and PLUGIN.npy, from %s; a file "
                           "the plugin needs under another name must be named in its configuration)",
                       msg, o->data_dir ? "the model folder and --data-dir" : "the model folder");
    }
    sn_vocab_close(v);
    return SN_OK;
}

/* Passes the writer's progress on to the caller's callback. */
typedef struct progress_ctx {
    const sn_extend_opts *o;
} progress_ctx;

static void on_progress(void *ctx, size_t done, size_t total)
{
    const sn_extend_opts *o = ((progress_ctx *)ctx)->o;
    if (o->progress)
        o->progress(o->progress_ctx, done, total);
}

/* Draws the new rows and writes model.safetensors. */
static sn_status write_weights(const source *s, const sn_extend_opts *o, int64_t new_vocab, outdir *od)
{
    const sn_tensor **list = NULL;
    size_t n = 0;
    sn_status st = list_tensors(s, &list, &n);
    if (st != SN_OK)
        return st;
    sn_st_out *outs = calloc(n + 1, sizeof *outs);
    void *grown[2] = {NULL, NULL}; /* the new rows of the embedding and the head */
    size_t n_out = 0;
    rng r;
    rng_seed(&r, o->seed);
    const int64_t n_new = new_vocab - s->cfg.vocab_size;
    if (!outs)
        st = sn_fail(SN_ERR_NOMEM, "out of memory");
    /* the embedding first, then the head: the seed's draws in a fixed order */
    const char *matrices[2] = {EMBED, s->cfg.tie_embeddings ? NULL : LM_HEAD};
    for (int m = 0; m < 2 && st == SN_OK; m++)
        for (size_t i = 0; i < n && st == SN_OK && matrices[m]; i++)
            if (strcmp(list[i]->name, matrices[m]) == 0)
                st = draw_rows(list[i], n_new, &r, &grown[m]);
    for (size_t i = 0; i < n && st == SN_OK; i++) {
        const sn_tensor *t = list[i];
        sn_st_out *w = &outs[n_out];
        *w = (sn_st_out){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data, .nbytes = t->nbytes};
        memcpy(w->shape, t->shape, sizeof w->shape);
        int m = strcmp(t->name, EMBED) == 0 ? 0 : strcmp(t->name, LM_HEAD) == 0 ? 1 : -1;
        if (m == 1 && s->cfg.tie_embeddings) {
            logf_extend(SN_LOG_INFO, "%s: '%s' is a copy of the tied embedding; the package leaves it out",
                        t->file, t->name);
            continue;
        }
        if (m >= 0) {
            w->shape[0] = new_vocab;
            w->tail = grown[m];
            w->tail_bytes = (size_t)n_new * (size_t)t->shape[1] * sn_dtype_size(t->dtype);
        }
        n_out++;
    }
    if (st == SN_OK) {
        char *path = join(od->tmp, WEIGHTS_OUT);
        progress_ctx pc = {o};
        st = path ? sn_st_write(path, outs, n_out, on_progress, &pc) : sn_fail(SN_ERR_NOMEM, "out of memory");
        free(path);
        if (st == SN_OK)
            st = push(&od->files, &od->n_files, WEIGHTS_OUT);
        else
            st = renamed_failure(st, od->tmp, od->out);
    }
    free(grown[0]);
    free(grown[1]);
    free(outs);
    free(list);
    return st;
}

sn_status sn_extend(const sn_plugins *plugins, const sn_extend_opts *o, sn_extend_range *ranges)
{
    sn_clear_error();
    if (!plugins || !o || !o->model_dir || !o->out_dir || !o->n_adds || !o->adds)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_extend: plugins, a model folder, an output folder and at least one "
                                           "plugin to add are required");
    outdir od;
    source s;
    memset(&od, 0, sizeof od);
    memset(&s, 0, sizeof s);
    placed *p = calloc(o->n_adds, sizeof *p);
    json_t *manifest = NULL, *arch = NULL;
    int64_t new_vocab = 0;
    sn_status st = p ? SN_OK : sn_fail(SN_ERR_NOMEM, "out of memory");
    if (st == SN_OK)
        st = outdir_check(o->out_dir, o->model_dir, o->force, &od);
    if (st == SN_OK)
        st = open_source(plugins, o->model_dir, &s);
    if (st == SN_OK)
        st = place_adds(plugins, o, &s, p, &new_vocab);
    if (st == SN_OK)
        st = build_manifest(&s, o, p, new_vocab, &manifest, &arch);
    if (st == SN_OK)
        st = outdir_begin(&od);
    if (st == SN_OK)
        st = write_layout(plugins, &s, o, p, manifest, arch, &od);
    if (st == SN_OK)
        st = write_weights(&s, o, new_vocab, &od);
    if (st == SN_OK) {
        /* the model as the engine will open it */
        sn_model *m = NULL;
        if ((st = sn_model_open(od.tmp, &m)) != SN_OK)
            st = renamed_failure(st, od.tmp, od.out);
        sn_model_close(m);
    }
    if (st == SN_OK)
        st = outdir_commit(&od);
    if (st == SN_OK && ranges)
        for (size_t i = 0; i < o->n_adds; i++)
            ranges[i] = p[i].range;
    for (size_t i = 0; p && i < o->n_adds; i++)
        json_decref(p[i].config);
    free(p);
    json_decref(manifest);
    json_decref(arch);
    source_close(&s);
    outdir_close(&od);
    return st;
}

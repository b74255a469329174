/*
 * test_extend.c - `sensorium extend`: a model's vocabulary grown by plugins' ranges. The
 * existing rows and every other tensor survive bit for bit, the new rows follow the mean and
 * covariance of the old ones, the package loads (sn_model_open, sn_vocab_open, the engine,
 * an independent numpy reader and forward pass) with each new segment where it belongs, for
 * tied and untied heads, F32, BF16 and sharded F16 sources, Sensorium packages and Hugging
 * Face folders; and every mistake is a one-line error that leaves nothing behind.
 *
 * Sources come from tests/reference/make_model.py; a numpy snippet then gives the embedding
 * and the head rows with a non-zero mean and a strongly correlated covariance, different for
 * each, so that a sampler that ignored the correlations, or used the wrong matrix's moments,
 * fails the moment checks.
 */
#include <criterion/criterion.h>
#include <sys/wait.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "extend.h"
#include "model.h"
#include "safetensors.h"

static char dir[64];
static sn_plugins *ps;

static void setup(void)
{
    strcpy(dir, "/tmp/sn_extend_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    /* exactly these plugins, so that a text.bpe elsewhere never changes what a test sees */
    cr_assert_eq(sn_plugins_open(SN_BUILD_PLUGIN_DIR "/action_discrete.so:" SN_BUILD_PLUGIN_DIR
                                 "/sensor_bins.so:" SN_BUILD_PLUGIN_DIR "/text_bytes.so",
                                 SN_PLUGINS_NO_ENV | SN_PLUGINS_NO_DEFAULT, &ps),
                 SN_OK);
    cr_assert_geq(sn_plugins_find(ps, "action.discrete"), 0, "action.discrete not built");
    cr_assert_geq(sn_plugins_find(ps, "sensor.bins"), 0, "sensor.bins not built");
    cr_assert_geq(sn_plugins_find(ps, "text.bytes"), 0, "text.bytes not built");
}

static void teardown(void)
{
    sn_plugins_close(ps);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(extend, .init = setup, .fini = teardown, .timeout = 240);

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* dir/NAME in one of a few static slots. */
static const char *at(const char *name)
{
    static char paths[64][160];
    static int next;
    char *p = paths[next++ % 64];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static void run(const char *cmd)
{
    cr_assert_eq(system(cmd), 0, "failed: %s", cmd);
}

static const char *make_model(const char *name, const char *args)
{
    const char *path = at(name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 %s/tests/reference/make_model.py %s %s", SN_SOURCE_DIR, path, args);
    run(cmd);
    return path;
}

/* Runs python code on a model folder (P), after helpers that read and write safetensors. */
static void py(const char *model, const char *code)
{
    char script[160], cmd[512];
    snprintf(script, sizeof script, "%s/snippet.py", dir);
    FILE *f = fopen(script, "w");
    cr_assert_not_null(f);
    fputs("import json, os, sys\n"
          "import numpy as np\n"
          "P = sys.argv[1]\n"
          "def path(f): return os.path.join(P, f)\n"
          "def read(f):\n"
          "    b = open(path(f), 'rb').read(); n = int.from_bytes(b[:8], 'little')\n"
          "    return json.loads(b[8:8 + n]), b[8 + n:], n\n"
          "def write(f, h, data):\n"
          "    t = json.dumps(h).encode(); t += b' ' * ((8 - len(t) % 8) % 8)\n"
          "    open(path(f), 'wb').write(len(t).to_bytes(8, 'little') + t + data)\n"
          "def values(raw, dt):\n"
          "    return {'F32': lambda: np.frombuffer(raw, '<f4').astype(np.float64),\n"
          "            'F16': lambda: np.frombuffer(raw, '<f2').astype(np.float64),\n"
          "            'BF16': lambda: (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32).astype(np.float64)}[dt]()\n"
          "def encode(a, dt):\n"
          "    if dt == 'F32': return a.astype('<f4').tobytes()\n"
          "    if dt == 'F16': return a.astype('<f2').tobytes()\n"
          "    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)\n"
          "    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype('<u2').tobytes()\n"
          "def load_json(f): return json.load(open(path(f)))\n"
          "def save_json(f, o): json.dump(o, open(path(f), 'w'))\n",
          f);
    fputs(code, f);
    fputs("\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "python3 %s %s", script, model);
    cr_assert_eq(system(cmd), 0, "snippet failed:\n%s", code);
}

/* Gives the embedding and (when present) lm_head of MODEL/model.safetensors rows x ~ N(mu, A A^T)
 * with A lower-triangular (unit diagonal, 0.5 N(0,1) below): correlations of 0.3 and more.
 * Each matrix gets its own mu and A. */
static void correlate(const char *model)
{
    py(model, "h, data, _ = read('model.safetensors'); data = bytearray(data)\n"
              "rng = np.random.default_rng(11)\n"
              "for name, shift in (('model.embed_tokens.weight', 0.5), ('lm_head.weight', -2.0)):\n"
              "    if name not in h: continue\n"
              "    e = h[name]; V, H = e['shape']; b, end = e['data_offsets']\n"
              "    A = np.tril(0.5 * rng.standard_normal((H, H)), -1) + np.eye(H)\n"
              "    mu = shift + rng.standard_normal(H)\n"
              "    data[b:end] = encode(rng.standard_normal((V, H)) @ A.T + mu, e['dtype'])\n"
              "write('model.safetensors', h, bytes(data))");
}

static sn_extend_opts opts(const char *model, const char *out, const sn_extend_add *adds, size_t n)
{
    sn_extend_opts o = {0};
    o.model_dir = model;
    o.out_dir = out;
    o.adds = adds;
    o.n_adds = n;
    o.seed = 1234;
    return o;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Neither the output nor a hidden work folder is left in dir. */
static void nothing_left(const char *out)
{
    cr_expect_not(exists(out), "%s exists after a failure", out);
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        cr_expect_null(strstr(e->d_name, ".extend-"), "work folder %s/%s left behind", dir, e->d_name);
    closedir(d);
}

/* sn_extend fails with a message containing each of the NULL-terminated words. */
static void fails_with(const sn_extend_opts *o, ...)
{
    cr_assert_neq(sn_extend(ps, o, NULL), SN_OK, "extend succeeded");
    const char *msg = sn_errmsg();
    cr_expect_null(strchr(msg, '\n'), "not one line: %s", msg);
    va_list ap;
    va_start(ap, o);
    for (const char *w = va_arg(ap, const char *); w; w = va_arg(ap, const char *))
        cr_expect_not_null(strstr(msg, w), "message lacks '%s': %s", w, msg);
    va_end(ap);
}

/* A tensor of MODEL/model.safetensors, through safetensors.c; f stays open for its data. */
static const sn_tensor *tensor(sn_st_file *f, const char *model, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", model);
    if (!f->map)
        cr_assert_eq(sn_st_open(path, f), SN_OK, "%s", sn_errmsg());
    return sn_st_find(f, name);
}

/* Rows [r0, r0 + n) of a (rows, H) tensor as doubles (malloc'ed). */
static double *rows_of(const sn_tensor *t, int64_t r0, int64_t n)
{
    const int64_t H = t->shape[1];
    float *f = malloc((size_t)(n * H) * sizeof *f + 1);
    double *d = malloc((size_t)(n * H) * sizeof *d + 1);
    sn_convert_to_f32(t->dtype, (const unsigned char *)t->data + (size_t)(r0 * H) * sn_dtype_size(t->dtype), f,
                      (size_t)(n * H));
    for (int64_t k = 0; k < n * H; k++)
        d[k] = f[k];
    free(f);
    return d;
}

/* Mean (H) and covariance (H, H; divisor n - 1) of n rows (malloc'ed). */
static void moments(const double *x, int64_t n, int64_t H, double **mean, double **cov)
{
    double *m = calloc((size_t)H, sizeof *m), *c = calloc((size_t)(H * H), sizeof *c);
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < H; j++)
            m[j] += x[r * H + j] / (double)n;
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < H; j++)
                c[i * H + j] += (x[r * H + i] - m[i]) * (x[r * H + j] - m[j]) / (double)(n - 1);
    *mean = m;
    *cov = c;
}

/*
 * The new rows [V, V + N) of tensor NAME in OUT follow the moments of the rows [0, V) of the
 * same tensor in SRC. Tolerance: 5 standard errors of a sample of N normal rows, for each
 * mean entry sqrt(C_jj / N) and each covariance entry sqrt((C_ii C_jj + C_ij^2) / N); the
 * source must also be far from diagonal (some |C_ij| over 10 standard errors), or the check
 * would not see a sampler that dropped the correlations.
 */
static void expect_moments(const char *src, const char *out, const char *name)
{
    sn_st_file fs = {0}, fo = {0};
    const sn_tensor *ts = tensor(&fs, src, name), *to = tensor(&fo, out, name);
    cr_assert(ts && to, "%s missing", name);
    const int64_t V = ts->shape[0], H = ts->shape[1], N = to->shape[0] - V;
    cr_assert_gt(N, 1000, "too few new rows (%lld) to check moments", (long long)N);
    double *xs = rows_of(ts, 0, V), *xn = rows_of(to, V, N);
    double *ms, *cs, *mn, *cn;
    moments(xs, V, H, &ms, &cs);
    moments(xn, N, H, &mn, &cn);
    double worst_mean = 0, worst_cov = 0, most_off = 0;
    for (int64_t i = 0; i < H; i++) {
        worst_mean = fmax(worst_mean, fabs(mn[i] - ms[i]) / sqrt(cs[i * H + i] / (double)N));
        for (int64_t j = 0; j < H; j++) {
            double se = sqrt((cs[i * H + i] * cs[j * H + j] + cs[i * H + j] * cs[i * H + j]) / (double)N);
            worst_cov = fmax(worst_cov, fabs(cn[i * H + j] - cs[i * H + j]) / se);
            if (i != j)
                most_off = fmax(most_off, fabs(cs[i * H + j]) / se);
        }
    }
    cr_log_info("%s: %lld new rows; worst mean error %.2f SE, worst covariance error %.2f SE", name, (long long)N,
                worst_mean, worst_cov);
    cr_assert_gt(most_off, 10, "%s: the source's covariance is nearly diagonal; the check would be weak", name);
    cr_expect_leq(worst_mean, 5, "%s: a new-row mean is %.2f standard errors from the source's", name, worst_mean);
    cr_expect_leq(worst_cov, 5, "%s: a new-row covariance entry is %.2f standard errors from the source's", name,
                  worst_cov);
    free(xs);
    free(xn);
    free(ms);
    free(cs);
    free(mn);
    free(cn);
    sn_st_close(&fs);
    sn_st_close(&fo);
}

/* Every tensor of SRC is in OUT with the same dtype; the embedding and head keep their first
 * rows bit for bit and gain `grown` rows; every other tensor is byte-identical. */
static void expect_preserved(const char *src, const char *out, int64_t grown, int tied)
{
    sn_model *m;
    cr_assert_eq(sn_model_open(src, &m), SN_OK, "%s", sn_errmsg());
    sn_st_file fo = {0};
    tensor(&fo, out, "model.norm.weight");
    size_t expected = 0;
    const sn_tensor *src_tensors[64];
    const sn_model_config *c = sn_model_config_of(m);
    src_tensors[expected++] = sn_model_embed(m);
    src_tensors[expected++] = sn_model_norm(m);
    if (!tied)
        src_tensors[expected++] = sn_model_lm_head(m);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const sn_layer_weights *w = sn_model_layer(m, l);
        const sn_tensor *all[] = {w->attn_norm, w->wq, w->wk, w->wv, w->wo, w->ffn_norm, w->w_gate, w->w_up, w->w_down};
        for (size_t k = 0; k < 9; k++)
            src_tensors[expected++] = all[k];
    }
    cr_expect_eq(fo.n, expected, "the output has %zu tensors, the source %zu", fo.n, expected);
    for (size_t i = 0; i < expected; i++) {
        const sn_tensor *s = src_tensors[i], *o = sn_st_find(&fo, s->name);
        cr_assert_not_null(o, "%s missing from the output", s->name);
        cr_expect_eq(o->dtype, s->dtype, "%s changed dtype", s->name);
        const int is_grown = strcmp(s->name, "model.embed_tokens.weight") == 0 || strcmp(s->name, "lm_head.weight") == 0;
        cr_expect_eq(o->shape[0], s->shape[0] + (is_grown ? grown : 0), "%s has %lld rows", s->name,
                     (long long)o->shape[0]);
        cr_expect_eq(o->nbytes, s->nbytes + (is_grown ? (size_t)grown * (size_t)s->shape[1] * sn_dtype_size(s->dtype) : 0));
        cr_expect_eq(memcmp(o->data, s->data, s->nbytes), 0, "%s: %s bytes differ from the source's", s->name,
                     is_grown ? "the existing rows'" : "its");
    }
    sn_st_close(&fo);
    sn_model_close(m);
}

/* ---------------------------------------------------------------------------------------- */
/* The package                                                                              */
/* ---------------------------------------------------------------------------------------- */

static const sn_extend_add two_adds[] = {
    {"act", "action.discrete", "{\"actions\": [\"a\", \"b\"]}"},
    {"imu", "sensor.bins", "{\"bins\": 16, \"low\": [0, 0], \"high\": [1, 2]}"},
};

Test(extend, existing_rows_and_other_tensors_identical_f32_untied)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --dtype f32 --seed 3");
    correlate(src);
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, two_adds, 2);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    expect_preserved(src, out, 2 + 2 + 2 + 16, 0);
    /* an independent reader: numpy parses the header and finds the old rows at their offsets */
    py(out, "h, data, n = read('model.safetensors')\n"
            "assert n % 8 == 0 and h['__metadata__'] == {'format': 'pt'}, h.get('__metadata__')\n"
            "ends = sorted(e['data_offsets'] for k, e in h.items() if k != '__metadata__')\n"
            "assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:])) and ends[-1][1] == len(data)\n"
            "s, sdata, _ = read('../src/model.safetensors')\n"
            "for name in ('model.embed_tokens.weight', 'lm_head.weight'):\n"
            "    e, f = h[name], s[name]\n"
            "    assert e['shape'] == [322, f['shape'][1]], e['shape']\n"
            "    old = sdata[f['data_offsets'][0]:f['data_offsets'][1]]\n"
            "    assert data[e['data_offsets'][0]:e['data_offsets'][0] + len(old)] == old, name\n"
            "    assert np.isfinite(values(data[e['data_offsets'][0]:e['data_offsets'][1]], e['dtype'])).all()\n");
}

Test(extend, new_segments_where_expected_and_the_package_loads)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 4");
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, two_adds, 2);
    sn_extend_range r[2];
    cr_assert_eq(sn_extend(ps, &o, r), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(r[0].begin, 300);
    cr_expect_eq(r[0].end, 301);
    cr_expect_eq(r[0].start, 302u);
    cr_expect_eq(r[0].size, 2u);
    cr_expect_eq(r[1].begin, 304);
    cr_expect_eq(r[1].end, 305);
    cr_expect_eq(r[1].start, 306u);
    cr_expect_eq(r[1].size, 16u);

    sn_model *m;
    cr_assert_eq(sn_model_open(out, &m), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_model_config_of(m)->vocab_size, 322);
    sn_model_close(m);

    sn_vocab *v;
    cr_assert_eq(sn_vocab_open(out, ps, &v), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_vocab_size(v), 322u);
    cr_assert_eq(sn_vocab_segment_count(v), 3u);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_BOS), 0);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_EOS), 1);
    sn_vocab_segment seg;
    cr_assert_eq(sn_vocab_segment_get(v, 0, &seg), SN_OK);
    cr_expect_str_eq(seg.modality, "text"); /* the source's segment, untouched */
    cr_expect_eq(seg.start, 8u);
    cr_expect_eq(seg.size, 256u);
    const char *mods[] = {"act", "imu"}, *plugins[] = {"action.discrete", "sensor.bins"};
    for (size_t i = 0; i < 2; i++) {
        long k = sn_vocab_find(v, mods[i]);
        cr_assert_eq(k, (long)i + 1);
        cr_assert_eq(sn_vocab_segment_get(v, (size_t)k, &seg), SN_OK);
        cr_expect_str_eq(seg.plugin, plugins[i]);
        cr_expect_eq(seg.begin, r[i].begin);
        cr_expect_eq(seg.end, r[i].end);
        cr_expect_eq(seg.start, r[i].start);
        cr_expect_eq(seg.size, r[i].size);
        cr_expect_eq(sn_vocab_lookup(v, r[i].begin).role, SN_TOKEN_BEGIN);
        cr_expect_eq(sn_vocab_lookup(v, r[i].end).role, SN_TOKEN_END);
        sn_token_info last = sn_vocab_lookup(v, (int32_t)(r[i].start + r[i].size - 1));
        cr_expect_eq(last.role, SN_TOKEN_PLUGIN);
        cr_expect_eq(last.segment, k);
        cr_expect_eq(last.local, (int32_t)r[i].size - 1);
    }
    sn_vocab_close(v);

    /* config.json for Hugging Face tools: the architecture, grown */
    json_error_t jerr;
    json_t *cfg = json_load_file(at("out/config.json"), 0, &jerr);
    cr_assert_not_null(cfg, "%s", jerr.text);
    cr_expect_eq(json_integer_value(json_object_get(cfg, "vocab_size")), 322);
    cr_expect_str_eq(json_string_value(json_object_get(cfg, "model_type")), "llama");
    json_decref(cfg);

    /* the engine runs it; an independent numpy forward pass agrees, new ids included */
    int32_t t[6] = {0, 304, 306, 321, 305, 300};
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 %s/tests/reference/llama_ref.py %s %s/ref.npy 0 304 306 321 305 300",
             SN_SOURCE_DIR, out, dir);
    run(cmd);
    sn_media ref;
    cr_assert_eq(sn_media_read(at("ref.npy"), &ref), SN_OK, "%s", sn_errmsg());
    sn_engine_opts eo = sn_engine_opts_default();
    eo.model_dir = out;
    eo.keep_logits = 1;
    eo.threads = 2;
    eo.backend = "cpu";
    sn_engine *e;
    cr_assert_eq(sn_engine_open(&eo, &e), SN_OK, "%s", sn_errmsg());
    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    sn_session *s;
    cr_assert_eq(sn_session_open(e, &so, &s), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_session_feed_tokens(s, t, 6), SN_OK, "%s", sn_errmsg());
    cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
    int32_t n;
    const float *lg = sn_session_logits(s, &n);
    cr_assert_eq(n, 322);
    const float *want = ref.series.values + 5 * (size_t)322;
    double worst = 0, scale = 0;
    for (int32_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)lg[i] - want[i]));
        scale = fmax(scale, fabs((double)want[i]));
    }
    cr_expect_leq(worst / scale, 1e-4, "engine vs numpy on the extended model: relative error %g", worst / scale);
    sn_session_close(s);
    sn_engine_close(e);
    sn_media_release(&ref);
}

Test(extend, old_ids_keep_their_logits)
{
    /* Nothing the source computes changes: the same prompt of old ids gives the same logits
     * for the old ids (the head's old rows and every other weight are the source's). */
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 5");
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, two_adds, 2);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    float *logits[2];
    const char *models[2] = {src, out};
    for (int k = 0; k < 2; k++) {
        sn_engine_opts eo = sn_engine_opts_default();
        eo.model_dir = models[k];
        eo.keep_logits = 1;
        eo.threads = 2;
        eo.backend = "cpu";
        sn_engine *e;
        cr_assert_eq(sn_engine_open(&eo, &e), SN_OK, "%s", sn_errmsg());
        sn_session_opts so = sn_session_opts_default();
        sn_session *s;
        cr_assert_eq(sn_session_open(e, &so, &s), SN_OK);
        int32_t t[5] = {3, 72, 105, 33, 4};
        cr_assert_eq(sn_session_feed_tokens(s, t, 5), SN_OK);
        cr_assert_eq(sn_engine_run(e), SN_OK, "%s", sn_errmsg());
        int32_t n;
        const float *lg = sn_session_logits(s, &n);
        cr_assert_eq(n, k ? 322 : 300);
        logits[k] = malloc(300 * sizeof(float));
        memcpy(logits[k], lg, 300 * sizeof(float));
        sn_session_close(s);
        sn_engine_close(e);
    }
    double worst = 0, scale = 0;
    for (int i = 0; i < 300; i++) {
        worst = fmax(worst, fabs((double)logits[0][i] - logits[1][i]));
        scale = fmax(scale, fabs((double)logits[0][i]));
    }
    cr_expect_leq(worst / scale, 1e-6, "old-id logits moved by %g relative", worst / scale);
    free(logits[0]);
    free(logits[1]);
}

/* ---------------------------------------------------------------------------------------- */
/* The new rows                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Enough new rows for the moments to be checked: 6000 bins and 2 markers. */
static const sn_extend_add many[] = {{"imu", "sensor.bins", "{\"bins\": 6000, \"low\": [0], \"high\": [1]}"}};
#define SMALL "--layout sensorium --vocab 600 --hidden 24 --heads 3 --kv-heads 1 --head-dim 8 --intermediate 40"

Test(extend, new_rows_follow_the_moments_f32_untied)
{
    const char *src = make_model("src", SMALL " --dtype f32 --seed 6");
    correlate(src);
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, many, 1);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    expect_preserved(src, out, 6002, 0);
    /* each matrix from its own moments: the head's mean is far from the embedding's */
    expect_moments(src, out, "model.embed_tokens.weight");
    expect_moments(src, out, "lm_head.weight");
}

Test(extend, new_rows_follow_the_moments_bf16_tied)
{
    const char *src = make_model("src", SMALL " --dtype bf16 --tie --seed 7");
    correlate(src);
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, many, 1);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    expect_preserved(src, out, 6002, 1);
    expect_moments(src, out, "model.embed_tokens.weight");
    sn_st_file f = {0};
    cr_expect_null(tensor(&f, out, "lm_head.weight"), "a tied model's head must not grow a tensor of its own");
    sn_st_close(&f);
    sn_model *m;
    cr_assert_eq(sn_model_open(out, &m), SN_OK, "%s", sn_errmsg());
    cr_expect(sn_model_config_of(m)->tie_embeddings);
    cr_expect_eq(sn_model_lm_head(m), sn_model_embed(m));
    cr_expect_eq(sn_model_embed(m)->dtype, SN_DTYPE_BF16);
    sn_model_close(m);
}

Test(extend, sharded_f16_source_becomes_one_file)
{
    const char *src = make_model("src", SMALL " --dtype f16 --shards 3 --seed 8");
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, two_adds, 2);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    /* the source's tensors are compared through the model, which reads the shards */
    expect_preserved(src, out, 22, 0);
    json_error_t jerr;
    json_t *man = json_load_file(at("out/sensorium.json"), 0, &jerr);
    cr_assert_not_null(man);
    cr_expect_str_eq(json_string_value(json_object_get(man, "weights")), "model.safetensors");
    json_decref(man);
    cr_expect_not(exists(at("out/model.safetensors.index.json")));
}

Test(extend, same_seed_same_bytes_other_seed_other_rows)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 9");
    sn_extend_opts o = opts(src, at("a"), two_adds, 2);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    o.out_dir = at("b");
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    o.out_dir = at("c");
    o.seed = 99;
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cmp -s %s/a/model.safetensors %s/b/model.safetensors", dir, dir);
    cr_expect_eq(system(cmd), 0, "the same seed gave different bytes");
    sn_st_file fa = {0}, fc = {0};
    const sn_tensor *a = tensor(&fa, at("a"), "model.embed_tokens.weight"),
                    *c = tensor(&fc, at("c"), "model.embed_tokens.weight");
    const size_t old = 300 * (size_t)a->shape[1] * 4;
    cr_expect_eq(memcmp(a->data, c->data, old), 0);
    cr_expect_neq(memcmp((const char *)a->data + old, (const char *)c->data + old, a->nbytes - old), 0,
                  "another seed gave the same new rows");
    sn_st_close(&fa);
    sn_st_close(&fc);
}

static int jitter_logged;
static void on_log(void *ctx, sn_log_level level, const char *source, const char *msg)
{
    (void)ctx;
    if (level == SN_LOG_WARN && strcmp(source, "extend") == 0 && strstr(msg, "not positive definite") &&
        strstr(msg, "model.embed_tokens.weight"))
        jitter_logged = 1;
}

Test(extend, fewer_rows_than_columns_jitter_is_logged)
{
    /* 40 rows of 64: the covariance has rank 39 and needs jitter to factor */
    const char *src = make_model("src", "--layout hf --vocab 40 --hidden 64 --tie --seed 10");
    py(src, "c = load_json('config.json'); c['bos_token_id'] = 0; c['eos_token_id'] = 1; save_json('config.json', c)");
    sn_set_log_handler(on_log, NULL);
    sn_extend_opts o = opts(src, at("out"), many, 1);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    sn_set_log_handler(NULL, NULL);
    cr_expect(jitter_logged, "no log line about the jitter");
    sn_st_file f = {0};
    const sn_tensor *t = tensor(&f, at("out"), "model.embed_tokens.weight");
    double *x = rows_of(t, 40, 6002);
    size_t bad = 0;
    for (size_t k = 0; k < 6002 * 64; k++)
        bad += !isfinite(x[k]);
    cr_expect_eq(bad, 0u, "%zu new values are not finite", bad);
    free(x);
    sn_st_close(&f);
}

/* ---------------------------------------------------------------------------------------- */
/* Hugging Face folders and data files                                                      */
/* ---------------------------------------------------------------------------------------- */

Test(extend, hugging_face_folder_ids_stay_raw)
{
    const char *src = make_model("src", "--layout hf --vocab 50 --seed 12");
    py(src, "c = load_json('config.json'); c['bos_token_id'] = 1; c['eos_token_id'] = [2, 7]; "
            "c['pad_token_id'] = 2; save_json('config.json', c)\n"
            "open(path('generation_config.json'), 'w').write('{}')");
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, two_adds, 1);
    sn_extend_range r;
    cr_assert_eq(sn_extend(ps, &o, &r), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(r.begin, 50);
    cr_expect_eq(r.start, 52u);
    expect_preserved(src, out, 4, 0);
    sn_vocab *v;
    cr_assert_eq(sn_vocab_open(out, ps, &v), SN_OK, "%s", sn_errmsg());
    cr_expect_eq(sn_vocab_size(v), 54u);
    cr_expect_eq(sn_vocab_segment_count(v), 1u);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_BOS), 1);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_EOS), 2);
    cr_expect_eq(sn_vocab_special(v, SN_TOKEN_PAD), -1, "pad is eos: the layout cannot give it two roles");
    cr_expect_eq(sn_vocab_lookup(v, 30).role, SN_TOKEN_UNUSED, "an old id is raw, outside any segment");
    cr_expect_eq(sn_vocab_lookup(v, 53).role, SN_TOKEN_PLUGIN);
    sn_vocab_close(v);
    cr_expect(exists(at("out/generation_config.json")), "generation_config.json not copied");
    cr_expect(exists(at("out/config.json")));
}

Test(extend, hugging_face_folder_errors)
{
    const char *src = make_model("src", "--layout hf --vocab 50 --seed 13");
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, two_adds, 1);
    fails_with(&o, "config.json", "eos_token_id", NULL);
    nothing_left(out);
    /* a tokenizer makes a text segment of text.bpe: not loaded here, so it says which */
    py(src, "c = load_json('config.json'); c['eos_token_id'] = 1; save_json('config.json', c)\n"
            "open(path('tokenizer.json'), 'w').write('{}')");
    fails_with(&o, "tokenizer.json", "text.bpe", NULL);
    nothing_left(out);
}

/* Writes a sensor.bins ranges file (2, 1): low 0, high 10. */
static void write_ranges(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"import numpy as np, os; os.makedirs(os.path.dirname('%s'), exist_ok=True); "
             "np.save('%s', np.array([[0], [10]], np.float32))\"",
             path, path);
    run(cmd);
}

Test(extend, data_files_are_copied)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 14");
    write_ranges(at("data/sensor.bins.npy"));  /* the plugin's default name */
    write_ranges(at("data/sub/r.npy"));        /* a name its configuration gives */
    const sn_extend_add adds[] = {{"imu", "sensor.bins", "{\"bins\": 8, \"dims\": 1}"},
                                  {"imu2", "sensor.bins", "{\"bins\": 8, \"ranges\": \"sub/r.npy\"}"}};
    const char *out = at("out");
    sn_extend_opts o = opts(src, out, adds, 2);
    /* without --data-dir the plugin looks in the model folder, and says what it misses */
    fails_with(&o, "--add imu:sensor.bins", "sensor.bins.npy", NULL);
    nothing_left(out);
    o.data_dir = at("data");
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    cr_expect(exists(at("out/sensor.bins.npy")));
    cr_expect(exists(at("out/sub/r.npy")));
    sn_vocab *v;
    cr_assert_eq(sn_vocab_open(out, ps, &v), SN_OK, "%s", sn_errmsg());
    sn_vocab_close(v);
}

/* ---------------------------------------------------------------------------------------- */
/* Mistakes                                                                                 */
/* ---------------------------------------------------------------------------------------- */

Test(extend, unknown_plugin)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 15");
    const sn_extend_add adds[] = {{"x", "no.such.plugin", NULL}};
    sn_extend_opts o = opts(src, at("out"), adds, 1);
    fails_with(&o, "--add x:no.such.plugin", "unknown plugin 'no.such.plugin'", NULL);
    nothing_left(at("out"));
}

Test(extend, bad_configuration_is_the_plugins_own_error)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 16");
    const sn_extend_add missing[] = {{"act", "action.discrete", "{}"}};
    sn_extend_opts o = opts(src, at("out"), missing, 1);
    fails_with(&o, "--add act:action.discrete", "action.discrete", "actions", NULL);
    const sn_extend_add not_json[] = {{"act", "action.discrete", "{\"actions\": [\"a\""}};
    o.adds = not_json;
    fails_with(&o, "--add act:action.discrete", "line 1", NULL);
    const sn_extend_add not_object[] = {{"act", "action.discrete", "[1]"}};
    o.adds = not_object;
    fails_with(&o, "must be a JSON object", NULL);
    nothing_left(at("out"));
}

Test(extend, duplicate_modality)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 17");
    const sn_extend_add existing[] = {{"text", "action.discrete", "{\"actions\": [\"a\"]}"}};
    sn_extend_opts o = opts(src, at("out"), existing, 1);
    fails_with(&o, "--add text:action.discrete", "already has modality 'text'", "text.bytes", NULL);
    const sn_extend_add twice[] = {{"act", "action.discrete", "{\"actions\": [\"a\"]}"},
                                   {"act", "sensor.bins", "{\"low\": [0], \"high\": [1]}"}};
    o.adds = twice;
    o.n_adds = 2;
    fails_with(&o, "modality 'act' is added twice", NULL);
    nothing_left(at("out"));
}

Test(extend, non_empty_output_folder)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 18");
    const char *out = at("out");
    cr_assert_eq(mkdir(out, 0777), 0);
    FILE *f = fopen(at("out/notes.txt"), "w");
    cr_assert_not_null(f);
    fputs("keep me\n", f);
    fclose(f);
    sn_extend_opts o = opts(src, out, two_adds, 2);
    fails_with(&o, out, "not empty", "--force", NULL);
    cr_expect_not(exists(at("out/sensorium.json")));
    /* --force writes the package there and leaves what else the folder holds */
    o.force = 1;
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    cr_expect(exists(at("out/notes.txt")));
    sn_model *m;
    cr_assert_eq(sn_model_open(out, &m), SN_OK, "%s", sn_errmsg());
    sn_model_close(m);
    /* an empty folder is fine without --force */
    cr_assert_eq(mkdir(at("empty"), 0777), 0);
    o.force = 0;
    o.out_dir = at("empty");
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    cr_expect(exists(at("empty/model.safetensors")));
    /* the model folder itself is refused */
    o.out_dir = src;
    o.force = 1;
    fails_with(&o, "is the model folder itself", NULL);
}

Test(extend, unreadable_model)
{
    sn_extend_opts o = opts(at("nowhere"), at("out"), two_adds, 2);
    fails_with(&o, "nowhere", NULL);
    nothing_left(at("out"));
    /* a download cut short: the message names the file */
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 19");
    cr_assert_eq(truncate(at("src/model.safetensors"), 5000), 0);
    o.model_dir = src;
    fails_with(&o, "model.safetensors", "truncated", NULL);
    nothing_left(at("out"));
    /* a manifest without weights: no model to extend */
    make_model("src2", "--layout sensorium --vocab 300 --seed 19");
    py(at("src2"), "m = load_json('sensorium.json'); del m['architecture']; save_json('sensorium.json', m)");
    o.model_dir = at("src2");
    fails_with(&o, "sensorium.json", "architecture", NULL);
    nothing_left(at("out"));
    /* an existing layout that does not load */
    make_model("src3", "--layout sensorium --vocab 300 --seed 19");
    py(at("src3"), "m = load_json('sensorium.json'); m['vocab']['segments'][0]['plugin'] = 'gone'; "
                   "save_json('sensorium.json', m)");
    o.model_dir = at("src3");
    fails_with(&o, "sensorium.json", "unknown plugin 'gone'", NULL);
    nothing_left(at("out"));
}

/* ---------------------------------------------------------------------------------------- */
/* The command                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* `sensorium extend ARGS...` (single-quoted: no argument here holds a quote); its exit status. */
static int cli(const char *const *args)
{
    char cmd[4096];
    int len = snprintf(cmd, sizeof cmd, "%s/bin/sensorium extend", SN_BINARY_DIR);
    for (; *args; args++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", *args);
    snprintf(cmd + len, sizeof cmd - (size_t)len, " >/dev/null 2>&1");
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(extend, command_exit_codes)
{
    const char *src = make_model("src", "--layout sensorium --vocab 300 --seed 20");
    char cfg[160];
    snprintf(cfg, sizeof cfg, "act:action.discrete:@%s/act.json", dir);
    FILE *f = fopen(at("act.json"), "w");
    cr_assert_not_null(f);
    fputs("{\"actions\": [\"left\", \"right\", \"stop\"]}\n", f);
    fclose(f);
    const char *paths = SN_BUILD_PLUGIN_DIR;
    const char *help[] = {"--help", NULL};
    cr_expect_eq(cli(help), 0);
    const char *no_model[] = {"--add", "act:action.discrete", "-o", at("out"), NULL};
    cr_expect_eq(cli(no_model), 2);
    const char *no_add[] = {"-m", src, "-o", at("out"), NULL};
    cr_expect_eq(cli(no_add), 2);
    const char *no_out[] = {"-m", src, "--add", cfg, NULL};
    cr_expect_eq(cli(no_out), 2);
    const char *bad_add[] = {"-m", src, "--add", "act", "-o", at("out"), NULL};
    cr_expect_eq(cli(bad_add), 2);
    const char *bad_seed[] = {"-m", src, "--add", cfg, "--seed", "-1", "-o", at("out"), NULL};
    cr_expect_eq(cli(bad_seed), 2);
    const char *unknown[] = {"-m", src, "--add", cfg, "--frobnicate", "-o", at("out"), NULL};
    cr_expect_eq(cli(unknown), 2);
    const char *missing_file[] = {"-m", src, "--add", "act:action.discrete:@/nonexistent.json", "-o", at("out"), NULL};
    cr_expect_eq(cli(missing_file), 1);
    const char *runtime[] = {"-m", at("nowhere"), "--add", cfg, "--plugin-path", paths, "-o", at("out"), NULL};
    cr_expect_eq(cli(runtime), 1);
    nothing_left(at("out"));
    const char *ok[] = {"-m", src, "--add", cfg, "--add", "imu:sensor.bins:{\"low\": [0], \"high\": [1]}",
                        "--seed", "5", "--plugin-path", paths, "-o", at("out"), NULL};
    cr_assert_eq(cli(ok), 0);
    sn_vocab *v;
    cr_assert_eq(sn_vocab_open(at("out"), ps, &v), SN_OK, "%s", sn_errmsg());
    sn_vocab_segment seg;
    cr_assert_eq(sn_vocab_segment_get(v, (size_t)sn_vocab_find(v, "act"), &seg), SN_OK);
    cr_expect_eq(seg.size, 3u, "the @FILE configuration was not used");
    cr_expect_eq(sn_vocab_size(v), 300u + 5 + 2 + 256);
    sn_vocab_close(v);
}

static int head_copy_logged;
static void on_head_log(void *ctx, sn_log_level level, const char *source, const char *msg)
{
    (void)ctx;
    (void)level;
    if (strcmp(source, "extend") == 0 && strstr(msg, "lm_head.weight") && strstr(msg, "leaves it out"))
        head_copy_logged = 1;
}

Test(extend, tied_models_stored_head_copy_is_dropped)
{
    /* some tied checkpoints also store the head: it would keep the old row count, so the
     * package leaves it out rather than write a tensor of the wrong shape */
    const char *src = make_model("src", "--layout sensorium --vocab 300 --tie --seed 21");
    py(src, "h, data, _ = read('model.safetensors'); e = h['model.embed_tokens.weight']\n"
            "b, end = e['data_offsets']\n"
            "h['lm_head.weight'] = dict(e, data_offsets=[len(data), len(data) + end - b])\n"
            "write('model.safetensors', h, data + data[b:end])");
    sn_set_log_handler(on_head_log, NULL);
    sn_extend_opts o = opts(src, at("out"), two_adds, 2);
    cr_assert_eq(sn_extend(ps, &o, NULL), SN_OK, "%s", sn_errmsg());
    sn_set_log_handler(NULL, NULL);
    cr_expect(head_copy_logged, "no log line about the dropped copy");
    expect_preserved(src, at("out"), 22, 1);
    sn_st_file f = {0};
    cr_expect_null(tensor(&f, at("out"), "lm_head.weight"));
    sn_st_close(&f);
}

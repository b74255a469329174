/*
 * cli_reflex.c - `sensorium demo`: the project's thesis shown end to end. Held-out episodes
 * of the reflex world (scripts/reflex/world.py: a spoken command and a tilt) are fed through
 * a model's plugins; the model answers with action segments (a named action, joint targets)
 * that the action plugins decode; each decision is printed with its timing and checked
 * against the episode's target. Beside it, optionally, a baseline model trained on the same
 * episodes to write the same decisions as JSON function calls in text: tokens per decision
 * and malformed outputs are counted for both (the action path cannot be malformed: its
 * segments are constrained by the automaton and the plugins).
 *
 * `sensorium live`: the same model in a closed loop with a simulated body. Ticks come at a
 * set rate; at each, the model hears the next command clip and feels the body's tilt (an
 * IMU window), and the joint targets it decodes move the body, which changes the next
 * readings. Printed: reaction latency per tick (stimulus in -> action decoded), its p50 and
 * p99, and the balance error against the same disturbances with no controller.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"

#define MAX_FEEDS 8
#define MAX_NAMES 64

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const char *or_default(const char *s, const char *dflt) { return s ? s : dflt; }

/* One held-out episode: its stimuli and what the right answer is. */
typedef struct episode {
    char id[64];
    char heard[96];          /* a short description of the stimulus, from its meta */
    sn_media feeds[MAX_FEEDS];
    char feed_mod[MAX_FEEDS][32];
    int n_feeds;
    char want_action[64];    /* "" when the episode has no named target */
    char action_mod[32];
    float want_joints[8];
    int n_joints;
    char joints_mod[32];
} episode;

static void episode_free(episode *e)
{
    for (int i = 0; i < e->n_feeds; i++)
        sn_media_release(&e->feeds[i]);
    memset(e, 0, sizeof *e);
}

/* Reads one manifest line into e (files relative to dir). */
static int episode_read(json_t *j, const char *dir, const char *where, episode *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->id, sizeof e->id, "%s", or_default(json_string_value(json_object_get(j, "id")), "?"));
    json_t *meta = json_object_get(j, "meta");
    if (json_is_object(meta)) {
        json_t *tone = json_object_get(meta, "tone_hz");
        snprintf(e->heard, sizeof e->heard, "'%s' %s snr %2.0f dB%s",
                 or_default(json_string_value(json_object_get(meta, "word")), "?"),
                 or_default(json_string_value(json_object_get(meta, "voice")), "?"),
                 json_number_value(json_object_get(meta, "snr_db")), json_is_number(tone) ? " +tone" : "");
    }
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(j, "feeds"), i, f) {
        const char *mod = json_string_value(json_object_get(f, "modality")),
                   *file = json_string_value(json_object_get(f, "file"));
        if (!mod || !file || e->n_feeds == MAX_FEEDS)
            return fail("%s: feeds[%zu]: the demo reads {\"modality\", \"file\"} feeds (at most %d)", where, i, MAX_FEEDS);
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", file[0] == '/' ? "" : dir, file);
        if (sn_media_read(file[0] == '/' ? file : path, &e->feeds[e->n_feeds]) != SN_OK)
            return fail("%s: feeds[%zu]: %s", where, i, sn_errmsg());
        snprintf(e->feed_mod[e->n_feeds++], sizeof e->feed_mod[0], "%s", mod);
    }
    json_array_foreach(json_object_get(j, "targets"), i, f) {
        const char *mod = json_string_value(json_object_get(f, "modality"));
        json_t *text = json_object_get(f, "text"), *vals = json_object_get(f, "values");
        if (mod && json_is_string(text)) {
            snprintf(e->want_action, sizeof e->want_action, "%s", json_string_value(text));
            snprintf(e->action_mod, sizeof e->action_mod, "%s", mod);
        } else if (mod && json_is_array(vals)) {
            json_t *row = json_is_array(json_array_get(vals, 0)) ? json_array_get(vals, 0) : vals;
            for (size_t k = 0; k < json_array_size(row) && k < 8; k++)
                e->want_joints[e->n_joints++] = (float)json_number_value(json_array_get(row, k));
            snprintf(e->joints_mod, sizeof e->joints_mod, "%s", mod);
        }
    }
    if (!e->want_action[0])
        return fail("%s: the demo needs a named-action target (a {\"modality\", \"text\"} target)", where);
    return 0;
}

/* What one model decided for one episode. */
typedef struct decision {
    char action[64];
    float joints[8];
    int n_joints;
    int malformed;     /* baseline: the text was not a well-formed call */
    double latency_ms; /* stimulus fed -> named action decoded */
    size_t tokens;     /* tokens generated */
    sn_str text;       /* baseline: the generated text */
    double t0;
} decision;

static int on_action(void *ctx, sn_session *s, const char *modality, const sn_action *a)
{
    (void)s;
    (void)modality;
    decision *d = ctx;
    if (a->kind == SN_ACTION_NAMED) {
        snprintf(d->action, sizeof d->action, "%s", a->named.name);
        d->latency_ms = 1e3 * (now_s() - d->t0);
    } else if (a->kind == SN_ACTION_VECTOR) {
        d->n_joints = a->vector.n < 8 ? (int)a->vector.n : 8;
        for (int k = 0; k < d->n_joints; k++)
            d->joints[k] = a->vector.values[k];
    } else if (a->kind == SN_ACTION_TEXT) {
        sn_str_printf(&d->text, "%.*s", (int)a->text.len, a->text.utf8);
    }
    return 0;
}

/* Parses the baseline's text as {"name": NAME, "arguments": {JOINTS: [n numbers]}} with NAME
 * one of names: fills d, or marks it malformed. */
static void parse_call(decision *d, const char *joints_mod, int n_joints, char names[][64], int n_names)
{
    json_t *j = d->text.s ? json_loads(d->text.s, 0, NULL) : NULL;
    json_t *name = json_object_get(j, "name"), *vals = json_object_get(json_object_get(j, "arguments"), joints_mod);
    int ok = json_is_string(name) && json_is_array(vals) && (int)json_array_size(vals) == n_joints;
    for (size_t k = 0; ok && k < json_array_size(vals); k++)
        ok = json_is_number(json_array_get(vals, k));
    int known = 0;
    for (int k = 0; ok && k < n_names; k++)
        known |= strcmp(names[k], json_string_value(name)) == 0;
    d->malformed = !(ok && known);
    if (!d->malformed) {
        snprintf(d->action, sizeof d->action, "%s", json_string_value(name));
        d->n_joints = n_joints;
        for (int k = 0; k < n_joints; k++)
            d->joints[k] = (float)json_number_value(json_array_get(vals, (size_t)k));
        d->latency_ms = 1e3 * (now_s() - d->t0); /* the call is usable only once complete */
    }
    json_decref(j);
}

/* Feeds the episode to a fresh session and generates the modalities given. */
static int decide(sn_engine *e, const episode *ep, const char *const *mods, size_t n_mods, int32_t max_tokens,
                  int32_t max_segments, uint64_t seed, decision *d)
{
    sn_session_opts so = sn_session_opts_default();
    so.seed = seed;
    so.callbacks = (sn_session_callbacks){.ctx = d, .on_action = on_action};
    sn_session *s;
    if (sn_session_open(e, &so, &s) != SN_OK)
        return lib_fail();
    d->t0 = now_s();
    int rc = 0;
    for (int i = 0; i < ep->n_feeds && !rc; i++)
        if (sn_session_feed(s, ep->feed_mod[i], &ep->feeds[i]) != SN_OK)
            rc = fail("%s: feeding %s: %s", ep->id, ep->feed_mod[i], sn_errmsg());
    size_t before, after;
    sn_session_tokens(s, &before);
    if (!rc && (sn_session_generate(s, mods, n_mods, max_tokens, max_segments) != SN_OK || sn_engine_run(e) != SN_OK))
        rc = fail("%s: %s", ep->id, sn_errmsg());
    sn_session_tokens(s, &after);
    d->tokens = after - before;
    sn_session_close(s);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *v, size_t n, double p)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    return v[i ? i - 1 : 0];
}

/* Totals of one model over the episodes. */
typedef struct tally {
    size_t n, correct, malformed, tokens, n_joint_vals;
    double joint_abs_err;
    double *latency; /* (n) */
} tally;

static void tally_add(tally *t, const episode *ep, const decision *d)
{
    t->correct += strcmp(d->action, ep->want_action) == 0;
    t->malformed += (size_t)d->malformed;
    t->tokens += d->tokens;
    if (d->n_joints == ep->n_joints)
        for (int k = 0; k < ep->n_joints; k++) {
            t->joint_abs_err += fabs((double)d->joints[k] - ep->want_joints[k]);
            t->n_joint_vals++;
        }
    t->latency[t->n++] = d->latency_ms;
}

/* The value options demo and live share; 1 when a was one of them (*end set for numbers). */
static int shared_option(const char *a, const char *v, sn_engine_opts *eo, const char **manifest, char **end)
{
    if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) eo->model_dir = v;
    else if (strcmp(a, "--episodes") == 0) *manifest = v;
    else if (strcmp(a, "--threads") == 0) eo->threads = (int32_t)strtol(v, end, 10);
    else if (strcmp(a, "--plugin-path") == 0) eo->plugin_path = v;
    else return 0;
    return 1;
}

/* Opens the episode manifest and puts its folder (what its paths are relative to) in dir. */
static FILE *open_manifest(const char *manifest, char *dir, size_t len)
{
    FILE *f = fopen(manifest, "r");
    if (!f) {
        fail("%s: cannot open the episode manifest", manifest);
        return NULL;
    }
    const char *slash = strrchr(manifest, '/');
    if (slash)
        snprintf(dir, len, "%.*s", (int)(slash - manifest), manifest);
    else
        snprintf(dir, len, ".");
    return f;
}

static const char demo_help[] =
    "usage: sensorium demo -m MODEL --episodes FILE.jsonl [--split test] [--baseline MODEL]\n"
    "                      [--limit N] [--quiet] [--threads N] [--plugin-path DIRS]\n"
    "\n"
    "Feeds held-out episodes (scripts/reflex/world.py writes them) through MODEL's plugins,\n"
    "generates the action segments their targets name (a named action, joint targets), and\n"
    "prints each stimulus, the action decided, the joints and the time from stimulus to\n"
    "decision; then the accuracy (goal: >= 95%), the joint error, tokens per decision and\n"
    "latency percentiles. --baseline adds a model trained on the same episodes to answer with\n"
    "JSON function calls in a 'text' segment: the same numbers, and its malformed outputs.\n"
    "Exit status 1 when the accuracy goal is missed.\n";

int cmd_demo(int argc, char **argv)
{
    sn_engine_opts eo = sn_engine_opts_default(), bo;
    const char *manifest = NULL, *split = "test", *baseline = NULL;
    long limit = 0;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(demo_help, stdout);
            return 0;
        }
        if (strcmp(a, "--quiet") == 0) {
            quiet = 1;
            continue;
        }
        if (!v)
            return usage_error("demo", "demo: option '%s' %s", a, a[0] == '-' ? "needs a value or is unknown" : "is not an option");
        i++;
        char *end = NULL;
        if (shared_option(a, v, &eo, &manifest, &end)) {
        } else if (strcmp(a, "--split") == 0) split = v;
        else if (strcmp(a, "--baseline") == 0) baseline = v;
        else if (strcmp(a, "--limit") == 0) limit = strtol(v, &end, 10);
        else
            return usage_error("demo", "demo: unknown option '%s'", a);
        if (end && (*end || end == v))
            return usage_error("demo", "demo: %s needs a number, not '%s'", a, v);
    }
    if (!eo.model_dir || !manifest)
        return usage_error("demo", "demo: -m MODEL and --episodes FILE are required");
    eo.max_sessions = 1;
    bo = eo;
    bo.model_dir = baseline;

    char dir[1024];
    FILE *f = open_manifest(manifest, dir, sizeof dir);
    if (!f)
        return EXIT_FAILURE;

    sn_engine *e = NULL, *eb = NULL;
    tally ta = {0}, tb = {0};
    char names[MAX_NAMES][64];
    int n_names = 0, rc = 0;
    char *line = NULL;
    size_t cap = 0, lineno = 0, n_lines = 0;
    for (int c; (c = fgetc(f)) != EOF;)
        n_lines += c == '\n';
    rewind(f);
    ta.latency = malloc((n_lines + 1) * sizeof *ta.latency);
    tb.latency = malloc((n_lines + 1) * sizeof *tb.latency);
    if (!ta.latency || !tb.latency) {
        rc = fail("out of memory");
        goto done;
    }
    if (sn_engine_open(&eo, &e) != SN_OK || (baseline && sn_engine_open(&bo, &eb) != SN_OK)) {
        rc = lib_fail();
        goto done;
    }
    printf("reflex demo: %s on the '%s' episodes of %s%s%s\n\n", eo.model_dir, split, manifest,
           baseline ? "; JSON text baseline: " : "", baseline ? baseline : "");
    if (!quiet)
        printf("%-12s %-30s %-17s %-17s %-14s %8s%s\n", "EPISODE", "HEARD", "WANTED", "DECIDED", "JOINTS", "LATENCY",
               baseline ? "   JSON BASELINE" : "");
    for (ssize_t len; (len = getline(&line, &cap, f)) >= 0 && (!limit || ta.n < (size_t)limit);) {
        lineno++;
        json_t *j = json_loads(line, 0, NULL);
        if (!j)
            continue;
        const char *sp = json_string_value(json_object_get(j, "split"));
        if (split && (!sp || strcmp(sp, split) != 0)) {
            json_decref(j);
            continue;
        }
        char where[1100];
        snprintf(where, sizeof where, "%s:%zu", manifest, lineno);
        episode ep;
        rc = episode_read(j, dir, where, &ep);
        json_decref(j);
        if (rc) {
            episode_free(&ep);
            goto done;
        }
        int known = 0;
        for (int k = 0; k < n_names; k++)
            known |= strcmp(names[k], ep.want_action) == 0;
        if (!known && n_names < MAX_NAMES)
            snprintf(names[n_names++], sizeof names[0], "%s", ep.want_action);
        const char *mods[2] = {ep.action_mod, ep.joints_mod};
        decision d = {0}, db = {0};
        rc = decide(e, &ep, mods, ep.n_joints ? 2 : 1, 32, ep.n_joints ? 2 : 1, lineno, &d);
        if (!rc && eb) {
            static const char *const text[] = {"text"};
            rc = decide(eb, &ep, text, 1, 160, 1, lineno, &db);
            parse_call(&db, ep.joints_mod, ep.n_joints, names, n_names);
        }
        if (rc) {
            episode_free(&ep);
            sn_str_free(&db.text);
            goto done;
        }
        tally_add(&ta, &ep, &d);
        if (eb)
            tally_add(&tb, &ep, &db);
        if (!quiet) {
            char joints[64] = "";
            for (int k = 0; k < d.n_joints; k++)
                snprintf(joints + strlen(joints), sizeof joints - strlen(joints), "%s%.1f", k ? ", " : "(", d.joints[k]);
            if (d.n_joints)
                strcat(joints, ")");
            char base[96] = "";
            if (eb)
                snprintf(base, sizeof base, "   %s%s (%zu tok)", db.malformed ? "MALFORMED" : db.action,
                         !db.malformed && strcmp(db.action, ep.want_action) ? " WRONG" : "", db.tokens);
            printf("%-12s %-30s %-17s %-17s %-14s %5.1f ms%s%s\n", ep.id, ep.heard, ep.want_action, d.action, joints,
                   d.latency_ms, strcmp(d.action, ep.want_action) ? "  WRONG" : "", base);
        }
        episode_free(&ep);
        sn_str_free(&db.text);
    }
    if (!ta.n) {
        rc = fail("%s: no '%s' episodes", manifest, split);
        goto done;
    }
    const tally *t[2] = {&ta, &tb};
    const int cols = eb ? 2 : 1;
    printf("\n%-24s %22s%s\n", "", "action tokens", eb ? "     JSON text baseline" : "");
    printf("%-24s", "accuracy");
    for (int c = 0; c < cols; c++)
        printf(" %13.1f%% (%zu/%zu)", 100.0 * (double)t[c]->correct / (double)t[c]->n, t[c]->correct, t[c]->n);
    printf("\n%-24s", "joint error (mean abs)");
    for (int c = 0; c < cols; c++)
        printf(" %22.2f", t[c]->n_joint_vals ? t[c]->joint_abs_err / (double)t[c]->n_joint_vals : NAN);
    printf("\n%-24s", "tokens per decision");
    for (int c = 0; c < cols; c++)
        printf(" %22.1f", (double)t[c]->tokens / (double)t[c]->n);
    printf("\n%-24s", "malformed outputs");
    for (int c = 0; c < cols; c++)
        printf(" %22zu", t[c]->malformed);
    printf("\n%-24s", "latency p50 / p99 (ms)");
    for (int c = 0; c < cols; c++) {
        double p50 = percentile(t[c]->latency, t[c]->n, 50), p99 = percentile(t[c]->latency, t[c]->n, 99);
        printf(" %14.2f / %5.2f", p50, p99);
    }
    const double acc = (double)ta.correct / (double)ta.n;
    printf("\n\ngoal: held-out accuracy >= 95%%: %s (%.1f%%)\n", acc >= 0.95 ? "met" : "MISSED", 100 * acc);
    /* one JSON line per model, for scripts/plot_bench.py (the percentiles are sorted now) */
    static const char *const what[2] = {"demo: action tokens", "demo: JSON text baseline"};
    for (int c = 0; c < cols; c++)
        printf("{\"bench\": \"latency\", \"name\": \"%s\", \"episodes\": %zu, \"accuracy\": %.4f, "
               "\"tokens_per_decision\": %.2f, \"malformed\": %zu, \"p50_ms\": %.3f, \"p99_ms\": %.3f}\n",
               what[c], t[c]->n, (double)t[c]->correct / (double)t[c]->n, (double)t[c]->tokens / (double)t[c]->n,
               t[c]->malformed, percentile(t[c]->latency, t[c]->n, 50), percentile(t[c]->latency, t[c]->n, 99));
    rc = acc >= 0.95 ? 0 : 1;
done:
    free(line);
    fclose(f);
    free(ta.latency);
    free(tb.latency);
    sn_engine_close(e);
    sn_engine_close(eb);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium live                                                                           */
/* ---------------------------------------------------------------------------------------- */

/* The simulated body: a tilt (roll, pitch) in degrees, pushed by disturbances (a random walk
 * and a shove every `push_every` ticks), corrected each tick by a fraction `gain` of the
 * joint targets in force: tilt += gain * joints + disturbance. Joints of -tilt hold it up. */
typedef struct body {
    double tilt[2], free_tilt[2]; /* with the controller, and without (same disturbances) */
    double gain, walk, push;
    int push_every;
    uint64_t rng;
} body;

static double uniform01(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(*s >> 11) + 0.5) * 0x1.0p-53;
}

static double gauss(uint64_t *s)
{
    double u = uniform01(s), v = uniform01(s);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

static void body_step(body *b, int tick, const float *joints, int n_joints)
{
    for (int k = 0; k < 2; k++) {
        double d = b->walk * gauss(&b->rng);
        if (b->push_every && tick % b->push_every == b->push_every / 2)
            d += (uniform01(&b->rng) < 0.5 ? -1 : 1) * b->push;
        b->tilt[k] += (k < n_joints ? b->gain * joints[k] : 0.0) + d;
        b->free_tilt[k] += d;
        /* the body falls at 25 degrees: the readings saturate there */
        b->tilt[k] = fmax(-25.0, fmin(25.0, b->tilt[k]));
        b->free_tilt[k] = fmax(-25.0, fmin(25.0, b->free_tilt[k]));
    }
}

static const char live_help[] =
    "usage: sensorium live -m MODEL --episodes FILE.jsonl [--rate HZ] [--ticks N] [--seed S]\n"
    "                      [--gain G] [--walk DEG] [--push DEG] [--quiet] [--threads N]\n"
    "\n"
    "Runs MODEL in a closed loop with a simulated body for N ticks (default 100) at HZ\n"
    "(default 10). Each tick the model hears the next command clip of the episodes' test split\n"
    "and feels the body's tilt as a 20-reading IMU window (0.5 degrees of sensor noise); the\n"
    "joint targets it decodes move the body (tilt += G * joints, G default 0.5) while\n"
    "disturbances push it (a random walk of DEG per tick, default 1, and a shove of --push\n"
    "degrees, default 8, every 20 ticks). Prints per tick the stimulus, the decision and the\n"
    "reaction latency (stimulus in -> action decoded); then latency p50/p99, ticks that missed\n"
    "their deadline, and the balance error (RMS tilt) with the model and without a controller.\n"
    "Between ticks the engine's OpenMP threads go to sleep, and waking them can cost more than\n"
    "the decision; OMP_WAIT_POLICY=active in the environment keeps them spinning (one core busy\n"
    "per thread), as a real-time loop wants.\n";

int cmd_live(int argc, char **argv)
{
    sn_engine_opts eo = sn_engine_opts_default();
    const char *manifest = NULL;
    long ticks = 100;
    double rate = 10, gain = 0.5, walk = 1.0, push = 8.0;
    unsigned long long seed = 1;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(live_help, stdout);
            return 0;
        }
        if (strcmp(a, "--quiet") == 0) {
            quiet = 1;
            continue;
        }
        if (!v)
            return usage_error("live", "live: option '%s' %s", a, a[0] == '-' ? "needs a value or is unknown" : "is not an option");
        i++;
        char *end = NULL;
        if (shared_option(a, v, &eo, &manifest, &end)) {
        } else if (strcmp(a, "--rate") == 0) rate = strtod(v, &end);
        else if (strcmp(a, "--ticks") == 0) ticks = strtol(v, &end, 10);
        else if (strcmp(a, "--seed") == 0) seed = strtoull(v, &end, 10);
        else if (strcmp(a, "--gain") == 0) gain = strtod(v, &end);
        else if (strcmp(a, "--walk") == 0) walk = strtod(v, &end);
        else if (strcmp(a, "--push") == 0) push = strtod(v, &end);
        else
            return usage_error("live", "live: unknown option '%s'", a);
        if (end && (*end || end == v))
            return usage_error("live", "live: %s needs a number, not '%s'", a, v);
    }
    if (!eo.model_dir || !manifest)
        return usage_error("live", "live: -m MODEL and --episodes FILE are required");
    if (!(rate > 0) || ticks <= 0 || !(gain > 0 && gain <= 1))
        return usage_error("live", "live: --rate and --ticks must be positive, --gain in (0, 1]");
    eo.max_sessions = 1;

    /* The command clips: the test split's audio feeds, in order. */
    char dir[1024];
    FILE *f = open_manifest(manifest, dir, sizeof dir);
    if (!f)
        return EXIT_FAILURE;
    enum { MAX_CLIPS = 64 };
    episode *clips = calloc(MAX_CLIPS, sizeof *clips);
    double *latency = malloc((size_t)ticks * sizeof *latency);
    int n_clips = 0, rc = 0;
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    sn_engine *e = NULL;
    if (!clips || !latency) {
        rc = fail("out of memory");
        goto done;
    }
    for (ssize_t len; n_clips < MAX_CLIPS && (len = getline(&line, &cap, f)) >= 0;) {
        lineno++;
        json_t *j = json_loads(line, 0, NULL);
        const char *sp = json_string_value(json_object_get(j, "split"));
        if (j && sp && strcmp(sp, "test") == 0) {
            char where[1100];
            snprintf(where, sizeof where, "%s:%zu", manifest, lineno);
            if ((rc = episode_read(j, dir, where, &clips[n_clips])) != 0) {
                json_decref(j);
                goto done;
            }
            n_clips++;
        }
        json_decref(j);
    }
    int audio = -1, imu = -1;
    for (int i = 0; n_clips && i < clips[0].n_feeds; i++) {
        if (clips[0].feeds[i].kind == SN_MEDIA_AUDIO)
            audio = i;
        if (clips[0].feeds[i].kind == SN_MEDIA_SERIES)
            imu = i;
    }
    if (audio < 0 || imu < 0 || !clips[0].joints_mod[0]) {
        rc = fail("%s: live needs test episodes with an audio and a series feed and a joints target", manifest);
        goto done;
    }
    if (sn_engine_open(&eo, &e) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    body b = {.gain = gain, .walk = walk, .push = push, .push_every = 20, .rng = seed * 0x9E3779B97F4A7C15ull + 1};
    float window[20 * 2];
    double sq = 0, free_sq = 0;
    long late = 0, correct = 0;
    const double period = 1.0 / rate;
    if (!quiet)
        printf("%-5s %-28s %-14s %-17s %-16s %9s\n", "TICK", "HEARD", "TILT", "DECIDED", "JOINTS", "REACTION");
    for (long t = 0; t < ticks; t++) {
        const double tick_start = now_s();
        episode *c = &clips[t % n_clips];
        for (int r = 0; r < 20; r++)
            for (int k = 0; k < 2; k++)
                window[r * 2 + k] = (float)(b.tilt[k] + 0.5 * gauss(&b.rng));
        episode ep = *c; /* the clip's sound, the body's readings */
        ep.feeds[imu] = (sn_media){.kind = SN_MEDIA_SERIES, .series = {window, 20, 2, 50.0}};
        const char *mods[2] = {c->action_mod, c->joints_mod};
        decision d = {0};
        if ((rc = decide(e, &ep, mods, 2, 32, 2, (uint64_t)t, &d)) != 0)
            goto done;
        latency[t] = 1e3 * (now_s() - d.t0); /* stimulus in -> the last action decoded */
        correct += strcmp(d.action, c->want_action) == 0;
        if (!quiet)
            printf("%-5ld %-28s (%5.1f, %5.1f) %-17s (%5.1f, %5.1f) %6.1f ms\n", t, c->heard, b.tilt[0], b.tilt[1],
                   d.action, d.n_joints > 0 ? d.joints[0] : NAN, d.n_joints > 1 ? d.joints[1] : NAN, latency[t]);
        body_step(&b, (int)t, d.joints, d.n_joints);
        for (int k = 0; k < 2; k++) {
            sq += b.tilt[k] * b.tilt[k];
            free_sq += b.free_tilt[k] * b.free_tilt[k];
        }
        /* a reaction slower than the tick period misses its deadline; the next tick comes
         * one period after this one began, or at once when this one overran */
        late += latency[t] > 1e3 * period;
        double wait = tick_start + period - now_s();
        if (wait > 0)
            usleep((useconds_t)(wait * 1e6));
    }
    printf("\n%ld ticks at %.1f Hz: reaction p50 %.2f ms, p99 %.2f ms, %ld missed their %.0f ms deadline\n", ticks, rate,
           percentile(latency, (size_t)ticks, 50), percentile(latency, (size_t)ticks, 99), late, 1e3 * period);
    printf("commands: %ld/%ld named right\n", correct, ticks);
    printf("{\"bench\": \"latency\", \"name\": \"live %.0f Hz\", \"ticks\": %ld, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"missed_deadlines\": %ld}\n", rate, ticks, percentile(latency, (size_t)ticks, 50),
           percentile(latency, (size_t)ticks, 99), late);
    printf("balance error (RMS tilt over the run): %.2f degrees with the model, %.2f with no controller; final tilt (%.1f, %.1f)\n",
           sqrt(sq / (2.0 * (double)ticks)), sqrt(free_sq / (2.0 * (double)ticks)), b.tilt[0], b.tilt[1]);
done:
    free(line);
    fclose(f);
    for (int i = 0; i < n_clips; i++)
        episode_free(&clips[i]);
    free(clips);
    free(latency);
    sn_engine_close(e);
    return rc;
}

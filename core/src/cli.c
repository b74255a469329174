/*
 * cli.c - the `sensorium` command: list plugins, tokenize a stimulus file, detokenize ids
 * into actions or media, print a model's vocabulary layout.
 *
 * The last stage of the pipeline and the only place in core that prints. Exit codes: 0 ok,
 * 1 runtime error (bad file, failing plugin), 2 usage error (unknown option, missing
 * argument). Errors are one line on stderr, prefixed "sensorium: ".
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "dataset.h"
#include "extend.h"
#include "sensorium/sensorium.h"

static void log_to_stderr(void *ctx, sn_log_level level, const char *source, const char *msg)
{
    (void)ctx;
    static const char *names[] = {"error", "warning", "info", "debug"};
    if (level == SN_LOG_DEBUG && !getenv("SENSORIUM_DEBUG"))
        return;
    fprintf(stderr, "[%s] %s: %s\n", source, names[level <= SN_LOG_DEBUG ? level : 0], msg);
}

/* ---------------------------------------------------------------------------------------- */
/* Options shared by the subcommands                                                        */
/* ---------------------------------------------------------------------------------------- */

typedef struct opts {
    const char *plugin_path;
    const char *plugin;
    const char *config; /* JSON text, or @FILE */
    const char *data_dir;
    const char *output;
    long chunk;         /* elements per encode call; 0: whole */
    const char **positional; /* (n_positional), gathered at the start of argv */
    int n_positional;
    int help;
} opts;

/* Parses argv[1..] of a subcommand. allowed lists the options it takes, e.g. "pcdo". */
static int parse_opts(const char *cmd, int argc, char **argv, const char *allowed, int max_pos,
                      opts *o)
{
    /* Positional arguments are gathered in place at argv[1..]: each is moved to an index no
     * greater than its own, which the scan has already passed. */
    o->positional = (const char **)(argv + 1);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        char flag = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            o->help = 1;
            continue;
        } else if (strcmp(a, "--plugin-path") == 0) flag = 'P';
        else if (strcmp(a, "--plugin") == 0) flag = 'p';
        else if (strcmp(a, "--config") == 0) flag = 'c';
        else if (strcmp(a, "--data-dir") == 0) flag = 'd';
        else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) flag = 'o';
        else if (strcmp(a, "--chunk") == 0) flag = 'k';
        else if (a[0] == '-' && a[1] != '\0')
            return usage_error(cmd, "%s: unknown option '%s'", cmd, a);
        else {
            if (o->n_positional >= max_pos)
                return usage_error(cmd, "%s: unexpected argument '%s'", cmd, a);
            argv[1 + o->n_positional++] = (char *)a;
            continue;
        }
        if (flag != 'P' && !strchr(allowed, flag))
            return usage_error(cmd, "%s: option '%s' does not apply here", cmd, a);
        if (!val)
            return usage_error(cmd, "%s: option '%s' needs a value", cmd, a);
        i++;
        switch (flag) {
        case 'P': o->plugin_path = val; break;
        case 'p': o->plugin = val; break;
        case 'c': o->config = val; break;
        case 'd': o->data_dir = val; break;
        case 'o': o->output = val; break;
        case 'k': {
            char *end;
            errno = 0;
            o->chunk = strtol(val, &end, 10);
            if (errno || *end || o->chunk <= 0)
                return usage_error(cmd, "%s: --chunk needs a positive integer, not '%s'", cmd, val);
            break;
        }
        }
    }
    return 0;
}


static int open_plugins(const opts *o, sn_plugins **ps)
{
    if (sn_plugins_open(o->plugin_path, 0, ps) != SN_OK)
        return lib_fail();
    return 0;
}

/* Opens the codec --plugin names; on a missing plugin also shows why other files failed,
 * since the wanted plugin is often among them. */
static int open_codec(const opts *o, sn_plugins *ps, sn_codec **codec)
{
    char *config = NULL;
    if (o->config && !(config = read_config(o->config)))
        return EXIT_FAILURE;
    sn_status st = sn_codec_open(ps, o->plugin, config, o->data_dir, codec);
    free(config);
    if (st != SN_OK) {
        fail("%s", sn_errmsg());
        if (st == SN_ERR_NOT_FOUND)
            for (size_t i = 0; i < sn_plugins_error_count(ps); i++)
                fprintf(stderr, "  not loaded: %s\n", sn_plugins_error(ps, i));
        return EXIT_FAILURE;
    }
    return 0;
}

static const char *kind_str(uint32_t kind)
{
    switch (kind) {
    case SN_PLUGIN_TOKENIZER: return "tokenizer";
    case SN_PLUGIN_DECODER: return "decoder";
    case SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER: return "tok+dec";
    }
    return "?";
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium plugins                                                                        */
/* ---------------------------------------------------------------------------------------- */

static const char plugins_help[] =
    "usage: sensorium plugins [--plugin-path DIRS]\n"
    "\n"
    "Lists every plugin found on the search path (--plugin-path, then SENSORIUM_PLUGIN_PATH,\n"
    "then the build's plugin folder; colon-separated folders or .so files): name, kind,\n"
    "version, vocabulary size and file. Files that failed to load are listed with the reason.\n"
    "The vocabulary size is that of the plugin created with an empty configuration; a plugin\n"
    "that needs configuration shows 'config' and why below the table.\n";

static int cmd_plugins(int argc, char **argv)
{
    opts o = {0};
    int rc = parse_opts("plugins", argc, argv, "", 0, &o);
    if (rc)
        return rc;
    if (o.help) {
        fputs(plugins_help, stdout);
        return 0;
    }
    sn_plugins *ps;
    if ((rc = open_plugins(&o, &ps)))
        return rc;
    size_t n = sn_plugins_count(ps);
    char **notes = calloc(n ? n : 1, sizeof *notes);
    printf("%-20s %-10s %-8s %-8s %s\n", "NAME", "KIND", "VERSION", "VOCAB", "FILE");
    for (size_t i = 0; i < n; i++) {
        sn_plugin_info info;
        sn_plugins_get(ps, i, &info);
        char vocab[32] = "config";
        sn_codec *c = NULL;
        if (sn_codec_open(ps, info.name, NULL, NULL, &c) == SN_OK)
            snprintf(vocab, sizeof vocab, "%u", sn_codec_vocab_size(c));
        else if (notes) {
            const char *m = sn_errmsg();
            notes[i] = malloc(strlen(m) + 1);
            if (notes[i])
                strcpy(notes[i], m);
        }
        sn_codec_close(c);
        printf("%-20s %-10s %-8s %-8s %s\n", info.name, kind_str(info.kind), info.version, vocab, info.file);
        if (info.description[0])
            printf("%-20s %s\n", "", info.description);
    }
    printf("\n%zu plugin%s loaded.\n", n, n == 1 ? "" : "s");
    int any_note = 0;
    for (size_t i = 0; notes && i < n; i++) {
        if (!notes[i])
            continue;
        if (!any_note++)
            printf("\nCreated with an empty configuration, these report:\n");
        printf("  %s\n", notes[i]);
        free(notes[i]);
    }
    free(notes);
    size_t ne = sn_plugins_error_count(ps);
    if (ne) {
        printf("\n%zu file%s failed to load:\n", ne, ne == 1 ? "" : "s");
        for (size_t i = 0; i < ne; i++)
            printf("  %s\n", sn_plugins_error(ps, i));
    }
    sn_plugins_close(ps);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium tokenize                                                                       */
/* ---------------------------------------------------------------------------------------- */

static const char tokenize_help[] =
    "usage: sensorium tokenize --plugin NAME [--config JSON|@FILE] [--data-dir DIR]\n"
    "                          [--chunk N] INPUT [-o OUT.npy]\n"
    "\n"
    "Reads INPUT (WAV/FLAC/..., PNG/PPM, NPY, UTF-8 text), tokenizes it with plugin NAME and\n"
    "prints the plugin's local ids, or writes them as an int32 NPY array with -o.\n"
    "  --config   the plugin's configuration: a JSON object, or @FILE holding one\n"
    "  --data-dir the folder the plugin loads codebooks and other files from\n"
    "  --chunk N  feed the input N elements (bytes of whole characters, samples, ticks) at a\n"
    "             time, as a live feed would arrive; the ids must not change\n";

/* Feeds media to the codec whole or in chunks of o->chunk elements. */
static sn_status encode_chunked(sn_codec *c, const sn_media *m, long chunk, sn_tokens *out)
{
    if (chunk <= 0 || m->kind == SN_MEDIA_IMAGE)
        return sn_codec_encode(c, m, out);
    size_t total = m->kind == SN_MEDIA_TEXT ? m->text.len
                 : m->kind == SN_MEDIA_AUDIO ? m->audio.n_samples
                 : m->series.n_ticks;
    for (size_t at = 0; at < total;) {
        size_t n = (size_t)chunk < total - at ? (size_t)chunk : total - at;
        sn_media part = *m;
        if (m->kind == SN_MEDIA_TEXT) {
            /* Whole characters only (plugin.h): extend the chunk past continuation bytes. */
            while (at + n < total && ((unsigned char)m->text.utf8[at + n] & 0xC0) == 0x80)
                n++;
            part.text.utf8 = m->text.utf8 + at;
            part.text.len = n;
        } else if (m->kind == SN_MEDIA_AUDIO) {
            part.audio.samples = m->audio.samples + at;
            part.audio.n_samples = n;
            part.t = m->t + (double)at / m->audio.sample_rate;
        } else {
            part.series.values = m->series.values + at * m->series.dims;
            part.series.n_ticks = n;
            if (m->series.rate_hz > 0)
                part.t = m->t + (double)at / m->series.rate_hz;
        }
        sn_status st = sn_codec_encode(c, &part, out);
        if (st != SN_OK)
            return st;
        at += n;
    }
    return SN_OK;
}

static void describe_media(const sn_media *m, char *buf, size_t len)
{
    switch (m->kind) {
    case SN_MEDIA_TEXT: snprintf(buf, len, "text, %zu bytes", m->text.len); break;
    case SN_MEDIA_AUDIO:
        snprintf(buf, len, "audio, %zu samples at %u Hz = %.3f s", m->audio.n_samples,
                 m->audio.sample_rate, (double)m->audio.n_samples / m->audio.sample_rate);
        break;
    case SN_MEDIA_IMAGE:
        snprintf(buf, len, "image, %ux%u, %u channel%s", m->image.width, m->image.height,
                 m->image.channels, m->image.channels == 1 ? "" : "s");
        break;
    case SN_MEDIA_SERIES:
        snprintf(buf, len, "series, %zu ticks x %u dims", m->series.n_ticks, m->series.dims);
        break;
    }
}

static int cmd_tokenize(int argc, char **argv)
{
    opts o = {0};
    int rc = parse_opts("tokenize", argc, argv, "pcdok", 1, &o);
    if (rc)
        return rc;
    if (o.help) {
        fputs(tokenize_help, stdout);
        return 0;
    }
    if (!o.plugin)
        return usage_error("tokenize", "tokenize: --plugin NAME is required");
    if (o.n_positional != 1)
        return usage_error("tokenize", "tokenize: give one INPUT file");
    sn_plugins *ps;
    if ((rc = open_plugins(&o, &ps)))
        return rc;
    sn_codec *c = NULL;
    sn_media m = {0};
    sn_tokens toks = {0};
    if ((rc = open_codec(&o, ps, &c)))
        goto done;
    if (sn_media_read(o.positional[0], &m) != SN_OK ||
        encode_chunked(c, &m, o.chunk, &toks) != SN_OK || sn_codec_encode_flush(c, &toks) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    if (o.output) {
        if (sn_tokens_write_npy(o.output, toks.ids, toks.n) != SN_OK) {
            rc = lib_fail();
            goto done;
        }
    } else {
        for (size_t i = 0; i < toks.n; i++)
            printf("%s%d", i ? " " : "", toks.ids[i]);
        printf("\n");
    }
    char what[128];
    describe_media(&m, what, sizeof what);
    fprintf(stderr, "%s (%s) -> %zu tokens with %s%s%s\n", o.positional[0], what, toks.n, o.plugin,
            o.output ? " -> " : "", o.output ? o.output : "");
done:
    sn_tokens_clear(&toks);
    sn_media_release(&m);
    sn_codec_close(c);
    sn_plugins_close(ps);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium detokenize                                                                     */
/* ---------------------------------------------------------------------------------------- */

static const char detokenize_help[] =
    "usage: sensorium detokenize --plugin NAME [--config JSON|@FILE] [--data-dir DIR]\n"
    "                            TOKENS.npy [-o OUTPUT]\n"
    "\n"
    "Decodes the plugin's local ids from TOKENS.npy into action events. Without -o, prints\n"
    "one JSON object per event (audio and images as a summary). With -o, writes them:\n"
    "text to a UTF-8 file, audio to .wav, an image to .png, vectors to .npy (one row each),\n"
    "named actions as JSON lines.\n";

/* Collects every event; the output is written once decoding has finished. */
typedef struct collected {
    FILE *lines;         /* JSON lines go here (stdout, or the -o file for named actions) */
    int kind;            /* of the first event; 0 before */
    int mixed;           /* events of more than one kind */
    char *text;          /* concatenated text (malloc'ed) */
    size_t text_len;
    float *samples;      /* concatenated audio */
    size_t n_samples;
    uint32_t rate;
    float *rows;         /* vectors, row-major */
    size_t n_rows, row_len;
    uint8_t *image;      /* the last image, packed */
    sn_media_image image_info;
    size_t n_images;
    char error[256];
} collected;

static int grow_bytes(void **p, size_t bytes)
{
    void *q = realloc(*p, bytes ? bytes : 1);
    if (!q)
        return -1;
    *p = q;
    return 0;
}

static int collect(void *ctx, const sn_action *a)
{
    collected *c = ctx;
    if (c->kind && c->kind != (int)a->kind)
        c->mixed = 1;
    if (!c->kind)
        c->kind = a->kind;
    json_t *j = json_object();
    json_object_set_new(j, "t", json_real(a->t));
    switch (a->kind) {
    case SN_ACTION_NAMED:
        json_object_set_new(j, "kind", json_string("action"));
        json_object_set_new(j, "name", json_string(a->named.name));
        json_object_set_new(j, "index", json_integer(a->named.index));
        break;
    case SN_ACTION_VECTOR: {
        json_object_set_new(j, "kind", json_string("vector"));
        json_t *vals = json_array();
        for (size_t i = 0; i < a->vector.n; i++)
            json_array_append_new(vals, json_real(a->vector.values[i]));
        json_object_set_new(j, "values", vals);
        if (c->n_rows && a->vector.n != c->row_len) {
            snprintf(c->error, sizeof c->error, "vectors of different lengths (%zu, then %zu)",
                     c->row_len, a->vector.n);
            break;
        }
        c->row_len = a->vector.n;
        if (grow_bytes((void **)&c->rows, (c->n_rows + 1) * c->row_len * sizeof(float)))
            snprintf(c->error, sizeof c->error, "out of memory");
        else if (c->row_len)
            memcpy(c->rows + c->n_rows * c->row_len, a->vector.values, c->row_len * sizeof(float));
        c->n_rows++;
        break;
    }
    case SN_ACTION_AUDIO:
        json_object_set_new(j, "kind", json_string("audio"));
        json_object_set_new(j, "samples", json_integer((json_int_t)a->audio.n_samples));
        json_object_set_new(j, "sample_rate", json_integer(a->audio.sample_rate));
        if (c->rate && c->rate != a->audio.sample_rate) {
            snprintf(c->error, sizeof c->error, "audio at two sample rates (%u, then %u Hz)",
                     c->rate, a->audio.sample_rate);
            break;
        }
        c->rate = a->audio.sample_rate;
        if (grow_bytes((void **)&c->samples, (c->n_samples + a->audio.n_samples) * sizeof(float)))
            snprintf(c->error, sizeof c->error, "out of memory");
        else {
            memcpy(c->samples + c->n_samples, a->audio.samples, a->audio.n_samples * sizeof(float));
            c->n_samples += a->audio.n_samples;
        }
        break;
    case SN_ACTION_TEXT:
        json_object_set_new(j, "kind", json_string("text"));
        json_object_set_new(j, "text", json_stringn(a->text.utf8, a->text.len));
        if (grow_bytes((void **)&c->text, c->text_len + a->text.len))
            snprintf(c->error, sizeof c->error, "out of memory");
        else {
            memcpy(c->text + c->text_len, a->text.utf8, a->text.len);
            c->text_len += a->text.len;
        }
        break;
    case SN_ACTION_IMAGE: {
        json_object_set_new(j, "kind", json_string("image"));
        json_object_set_new(j, "width", json_integer(a->image.width));
        json_object_set_new(j, "height", json_integer(a->image.height));
        json_object_set_new(j, "channels", json_integer(a->image.channels));
        size_t row = (size_t)a->image.width * a->image.channels;
        if (grow_bytes((void **)&c->image, row * a->image.height))
            snprintf(c->error, sizeof c->error, "out of memory");
        else {
            for (uint32_t y = 0; y < a->image.height; y++)
                memcpy(c->image + y * row, a->image.pixels + y * a->image.stride, row);
            c->image_info = a->image;
            c->image_info.pixels = c->image;
            c->image_info.stride = row;
            c->n_images++;
        }
        break;
    }
    }
    if (c->lines) {
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        if (s)
            fprintf(c->lines, "%s\n", s);
        free(s);
    }
    json_decref(j);
    return c->error[0] != '\0';
}

static int write_collected(const collected *c, const char *path)
{
    if (c->mixed)
        return fail("%s: the decoder emitted events of several kinds; without -o they print as JSON lines", path);
    sn_media m = {0};
    switch (c->kind) {
    case 0:
        return fail("%s: the decoder emitted nothing to write", path);
    case SN_ACTION_NAMED:
        return 0; /* already written as JSON lines */
    case SN_ACTION_TEXT:
        m.kind = SN_MEDIA_TEXT;
        m.text = (sn_media_text){c->text, c->text_len};
        break;
    case SN_ACTION_AUDIO:
        m.kind = SN_MEDIA_AUDIO;
        m.audio = (sn_media_audio){c->samples, c->n_samples, c->rate};
        break;
    case SN_ACTION_VECTOR:
        m.kind = SN_MEDIA_SERIES;
        m.series = (sn_media_series){c->rows, c->n_rows, (uint32_t)c->row_len, 0};
        break;
    case SN_ACTION_IMAGE:
        if (c->n_images > 1)
            fprintf(stderr, "sensorium: the decoder emitted %zu images; writing the last\n", c->n_images);
        m.kind = SN_MEDIA_IMAGE;
        m.image = c->image_info;
        break;
    }
    if (sn_media_write(path, &m) != SN_OK)
        return lib_fail();
    return 0;
}

static int cmd_detokenize(int argc, char **argv)
{
    opts o = {0};
    int rc = parse_opts("detokenize", argc, argv, "pcdo", 1, &o);
    if (rc)
        return rc;
    if (o.help) {
        fputs(detokenize_help, stdout);
        return 0;
    }
    if (!o.plugin)
        return usage_error("detokenize", "detokenize: --plugin NAME is required");
    if (o.n_positional != 1)
        return usage_error("detokenize", "detokenize: give one TOKENS.npy file");
    sn_plugins *ps;
    if ((rc = open_plugins(&o, &ps)))
        return rc;
    sn_codec *c = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    collected col = {.lines = stdout};
    if ((rc = open_codec(&o, ps, &c)))
        goto done;
    if (sn_tokens_read_npy(o.positional[0], &ids, &n) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    /* With -o the JSON lines are kept in memory: named actions have no media form and are
     * written to the file as JSON lines; other kinds are written as media. */
    char *lines_buf = NULL;
    size_t lines_len = 0;
    if (o.output && !(col.lines = open_memstream(&lines_buf, &lines_len))) {
        rc = fail("out of memory");
        goto done;
    }
    sn_status st = sn_codec_decode(c, ids, n, 0.0, collect, &col);
    if (st == SN_OK)
        st = sn_codec_decode_flush(c, collect, &col);
    if (o.output) {
        fclose(col.lines);
        col.lines = NULL;
    }
    if (st != SN_OK) {
        rc = col.error[0] ? fail("%s: %s", o.positional[0], col.error) : lib_fail();
    } else if (o.output && col.kind == SN_ACTION_NAMED && !col.mixed) {
        sn_media m = {.kind = SN_MEDIA_TEXT, .text = {lines_buf, lines_len}};
        if (sn_media_write(o.output, &m) != SN_OK)
            rc = lib_fail();
    } else if (o.output) {
        rc = write_collected(&col, o.output);
    }
    free(lines_buf);
    if (rc)
        goto done;
    fprintf(stderr, "%s (%zu tokens) -> %s with %s%s%s\n", o.positional[0], n,
            col.kind ? "events" : "no events", o.plugin, o.output ? " -> " : "",
            o.output ? o.output : "");
done:
    free(col.text);
    free(col.samples);
    free(col.rows);
    free(col.image);
    sn_free(ids);
    sn_codec_close(c);
    sn_plugins_close(ps);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium fit                                                                            */
/* ---------------------------------------------------------------------------------------- */

static const char fit_help[] =
    "usage: sensorium fit --plugin NAME [--config JSON|@FILE] DATA... -o FILE\n"
    "\n"
    "Learns what plugin NAME needs from data (a k-means codebook, per-dimension value ranges)\n"
    "and writes it to FILE. Put FILE in the model folder (or the --data-dir of tokenize) under\n"
    "the name the plugin's configuration gives; the plugin's README says which. Deterministic:\n"
    "the same data and configuration give the same file. Progress is shown as it goes.\n";

static int cmd_fit(int argc, char **argv)
{
    opts o = {0};
    int rc = parse_opts("fit", argc, argv, "pco", argc, &o);
    if (rc)
        return rc;
    if (o.help) {
        fputs(fit_help, stdout);
        return 0;
    }
    if (!o.plugin)
        return usage_error("fit", "fit: --plugin NAME is required");
    if (!o.output)
        return usage_error("fit", "fit: -o FILE is required");
    if (o.n_positional < 1)
        return usage_error("fit", "fit: give at least one DATA file");
    sn_plugins *ps;
    if ((rc = open_plugins(&o, &ps)))
        return rc;
    char *config = NULL;
    sn_media *data = calloc((size_t)o.n_positional, sizeof *data);
    if (!data) {
        rc = fail("out of memory");
        goto done;
    }
    if (o.config && !(config = read_config(o.config))) {
        rc = EXIT_FAILURE;
        goto done;
    }
    for (int i = 0; i < o.n_positional; i++) {
        if (sn_media_read(o.positional[i], &data[i]) != SN_OK) {
            rc = lib_fail();
            goto done;
        }
    }
    fprintf(stderr, "fitting %s on %d file%s\n", o.plugin, o.n_positional, o.n_positional == 1 ? "" : "s");
    if (sn_fit(ps, o.plugin, config, data, (size_t)o.n_positional, o.output) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    fprintf(stderr, "wrote %s\n", o.output);
done:
    for (int i = 0; data && i < o.n_positional; i++)
        sn_media_release(&data[i]);
    free(data);
    free(config);
    sn_plugins_close(ps);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium vocab                                                                          */
/* ---------------------------------------------------------------------------------------- */

static const char vocab_help[] =
    "usage: sensorium vocab [--plugin-path DIRS] MODEL_DIR|MODEL.gguf\n"
    "\n"
    "Reads MODEL_DIR/sensorium.json (or a GGUF file's tokenizer), creates each segment's plugin\n"
    "with its configuration, checks the layout and prints it: every id range with its role,\n"
    "modality and plugin.\n";

static const char *role_str(sn_token_role r)
{
    switch (r) {
    case SN_TOKEN_UNUSED: return "(unused)";
    case SN_TOKEN_PLUGIN: return "tokens";
    case SN_TOKEN_BOS: return "bos";
    case SN_TOKEN_EOS: return "eos";
    case SN_TOKEN_PAD: return "pad";
    case SN_TOKEN_BEGIN: return "begin";
    case SN_TOKEN_END: return "end";
    }
    return "?";
}

/* The layout as a table: runs of ids with the same role and segment on one line. */
static void print_layout(const sn_vocab *v)
{
    uint32_t size = sn_vocab_size(v);
    printf("%u ids, %zu segments\n\n", size, sn_vocab_segment_count(v));
    printf("%-15s %-9s %-12s %-18s %s\n", "IDS", "ROLE", "MODALITY", "PLUGIN", "CONFIG");
    /* Runs of ids with the same role and segment print as one line. */
    for (uint32_t g = 0; g < size;) {
        sn_token_info info = sn_vocab_lookup(v, (int32_t)g);
        uint32_t end = g + 1;
        while (end < size) {
            sn_token_info next = sn_vocab_lookup(v, (int32_t)end);
            if (next.role != info.role || next.segment != info.segment ||
                info.role == SN_TOKEN_BEGIN || info.role == SN_TOKEN_END)
                break;
            end++;
        }
        char ids[32];
        if (end - g == 1)
            snprintf(ids, sizeof ids, "%u", g);
        else
            snprintf(ids, sizeof ids, "%u..%u", g, end - 1);
        sn_vocab_segment seg = {0};
        if (info.segment >= 0)
            sn_vocab_segment_get(v, (size_t)info.segment, &seg);
        printf("%-15s %-9s %-12s %-18s %s\n", ids, role_str(info.role),
               seg.modality ? seg.modality : "", info.role == SN_TOKEN_PLUGIN ? seg.plugin : "",
               info.role == SN_TOKEN_PLUGIN ? seg.config_json : "");
        g = end;
    }
}

static int cmd_vocab(int argc, char **argv)
{
    opts o = {0};
    int rc = parse_opts("vocab", argc, argv, "", 1, &o);
    if (rc)
        return rc;
    if (o.help) {
        fputs(vocab_help, stdout);
        return 0;
    }
    if (o.n_positional != 1)
        return usage_error("vocab", "vocab: give one MODEL_DIR");
    sn_plugins *ps;
    if ((rc = open_plugins(&o, &ps)))
        return rc;
    sn_vocab *v;
    if (sn_vocab_open(o.positional[0], ps, &v) != SN_OK) {
        rc = lib_fail();
        sn_plugins_close(ps);
        return rc;
    }
    printf("model %s: ", o.positional[0]);
    print_layout(v);
    sn_vocab_close(v);
    sn_plugins_close(ps);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium run and info                                                                   */
/* ---------------------------------------------------------------------------------------- */

static const char run_help[] =
    "usage: sensorium run -m MODEL [--feed MODALITY:FILE]... [--feed-tokens IDS|@FILE.npy]...\n"
    "                     [--generate MODALITY[,MODALITY...]|raw] [--max-tokens N]\n"
    "                     [--max-segments N] [--seed S] [--temperature T] [--top-k K]\n"
    "                     [--top-p P] [--min-p P] [--repetition-penalty R]\n"
    "                     [--sampling MODALITY:T,K,P,MINP,R] [--print-tokens] [-o DIR]\n"
    "                     [--backend auto|cpu|cuda] [--threads N] [--tp N] [--dp N] [--kv-mb MB]\n"
    "                     [--prompt TEXT] [--chat TEXT [--system TEXT]] [--plain]\n"
    "\n"
    "Feeds stimuli (each tokenized by its modality's plugin as <begin:M> ... <end:M>) and raw\n"
    "token ids (comma- or space-separated, or an integer NPY file) in the order given, then\n"
    "generates up to --max-tokens tokens (default 64), constrained to the listed output\n"
    "modalities ('raw': any id, no automaton). Decoded actions print as JSON lines; audio and\n"
    "images are written to DIR (default .) as MODALITY-N.wav / MODALITY-N.png.\n"
    "--sampling sets one modality's parameters (temperature,top_k,top_p,min_p,penalty).\n"
    "--print-tokens prints the generated ids as one JSON line. Greedy by default.\n"
    "--prompt feeds TEXT to the 'text' modality; --chat feeds it as one user turn in a GGUF\n"
    "model's chat template (after --system TEXT, else the template's default system prompt);\n"
    "either makes 'text' the default --generate. --plain prints generated text as it comes\n"
    "instead of JSON lines.\n"
    "--tp N splits every layer over N GPUs (N CPU shards on --backend cpu); --dp N runs N\n"
    "replicas of the model (replica r on GPUs r*tp ...), each with its own KV pool of\n"
    "--kv-mb, and spreads sessions over them.\n";

typedef struct run_out {
    const char *dir;
    int plain;         /* text actions as plain text, not JSON lines */
    int n_audio, n_image;
    const char *audio_modality;
    float *audio;      /* concatenated audio of the current run, written at the end */
    size_t n_samples;
    uint32_t rate;
    int failed;
} run_out;

static int run_on_action(void *ctx, sn_session *s, const char *modality, const sn_action *a)
{
    (void)s;
    run_out *ro = ctx;
    if (ro->plain && a->kind == SN_ACTION_TEXT) {
        fwrite(a->text.utf8, 1, a->text.len, stdout);
        fflush(stdout);
        return 0;
    }
    json_t *j = json_object();
    json_object_set_new(j, "t", json_real(a->t));
    json_object_set_new(j, "modality", json_string(modality));
    char path[1024];
    switch (a->kind) {
    case SN_ACTION_NAMED:
        json_object_set_new(j, "kind", json_string("action"));
        json_object_set_new(j, "name", json_string(a->named.name));
        json_object_set_new(j, "index", json_integer(a->named.index));
        break;
    case SN_ACTION_VECTOR: {
        json_object_set_new(j, "kind", json_string("vector"));
        json_t *vals = json_array();
        for (size_t i = 0; i < a->vector.n; i++)
            json_array_append_new(vals, json_real(a->vector.values[i]));
        json_object_set_new(j, "values", vals);
        break;
    }
    case SN_ACTION_TEXT:
        json_object_set_new(j, "kind", json_string("text"));
        json_object_set_new(j, "text", json_stringn(a->text.utf8, a->text.len));
        break;
    case SN_ACTION_AUDIO: {
        json_object_set_new(j, "kind", json_string("audio"));
        json_object_set_new(j, "samples", json_integer((json_int_t)a->audio.n_samples));
        json_object_set_new(j, "sample_rate", json_integer(a->audio.sample_rate));
        float *grown = realloc(ro->audio, (ro->n_samples + a->audio.n_samples + 1) * sizeof *grown);
        if (!grown) {
            ro->failed = 1;
            break;
        }
        ro->audio = grown;
        memcpy(ro->audio + ro->n_samples, a->audio.samples, a->audio.n_samples * sizeof *grown);
        ro->n_samples += a->audio.n_samples;
        ro->rate = a->audio.sample_rate;
        ro->audio_modality = modality;
        break;
    }
    case SN_ACTION_IMAGE: {
        snprintf(path, sizeof path, "%s/%s-%d.png", ro->dir, modality, ro->n_image++);
        sn_media m = {.kind = SN_MEDIA_IMAGE, .image = a->image};
        json_object_set_new(j, "kind", json_string("image"));
        json_object_set_new(j, "file", json_string(path));
        if (sn_media_write(path, &m) != SN_OK) {
            fail("%s", sn_errmsg());
            ro->failed = 1;
        }
        break;
    }
    }
    char *line = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (line)
        printf("%s\n", line);
    free(line);
    json_decref(j);
    return 0;
}

/* Parses "1, 2 3" into ids (malloc'ed), or reads an integer NPY file given as @FILE; on
 * failure prints why and returns -1. */
static int parse_ids(const char *arg, int32_t **ids, size_t *n)
{
    if (arg[0] == '@') {
        if (sn_tokens_read_npy(arg + 1, ids, n) == SN_OK)
            return 0;
        lib_fail();
        return -1;
    }
    size_t cap = strlen(arg) / 2 + 1;
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    if (!*ids) {
        fail("out of memory");
        return -1;
    }
    const char *p = arg;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            fail("--feed-tokens: '%s' is not a list of token ids", arg);
            free(*ids);
            *ids = NULL;
            return -1;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = end;
    }
    return 0;
}

/* "T,K,P,MINP,R" into params; fields may be left empty to keep the default. */
static int parse_sampling(const char *spec, sn_sampling_params *p)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL, *f = strtok_r(buf, ",", &save);
    for (int i = 0; f && i < 5; i++, f = strtok_r(NULL, ",", &save)) {
        char *end;
        double v = strtod(f, &end);
        if (*end)
            return -1;
        switch (i) {
        case 0: p->temperature = (float)v; break;
        case 1: p->top_k = (int32_t)v; break;
        case 2: p->top_p = (float)v; break;
        case 3: p->min_p = (float)v; break;
        case 4: p->repetition_penalty = (float)v; break;
        }
    }
    return 0;
}

typedef enum feed_kind { FEED_MEDIA, FEED_TOKENS, FEED_PROMPT, FEED_CHAT } feed_kind;

typedef struct feed_item {
    feed_kind kind;
    const char *arg;  /* MODALITY:FILE, the ids, or the text */
} feed_item;

static int cmd_run(int argc, char **argv)
{
    sn_engine_opts eo = sn_engine_opts_default();
    sn_session_opts so = sn_session_opts_default();
    const char *generate = NULL, *out_dir = ".", *system_prompt = NULL;
    long max_tokens = 64, max_segments = 0;
    sn_chat *chat = NULL;
    int n_turns = 0;
    int print_tokens = 0;
    feed_item *feeds = calloc((size_t)argc, sizeof *feeds);
    const char **sampling_specs = calloc((size_t)argc, sizeof *sampling_specs);
    int n_feeds = 0, n_specs = 0, rc = 0;
    sn_engine *e = NULL;
    sn_session *s = NULL;
    run_out ro = {0};
    if (!feeds || !sampling_specs) {
        rc = fail("out of memory");
        goto done;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(run_help, stdout);
            goto done;
        }
        if (strcmp(a, "--print-tokens") == 0) {
            print_tokens = 1;
            continue;
        }
        if (strcmp(a, "--plain") == 0) {
            ro.plain = 1;
            continue;
        }
        if (!v) {
            rc = usage_error("run", "run: option '%s' %s", a, a[0] == '-' ? "needs a value or is unknown" : "is not an option");
            goto done;
        }
        char *end = NULL;
        i++;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) eo.model_dir = v;
        else if (strcmp(a, "--plugin-path") == 0) eo.plugin_path = v;
        else if (strcmp(a, "--feed") == 0) feeds[n_feeds++] = (feed_item){FEED_MEDIA, v};
        else if (strcmp(a, "--feed-tokens") == 0) feeds[n_feeds++] = (feed_item){FEED_TOKENS, v};
        else if (strcmp(a, "--prompt") == 0) feeds[n_feeds++] = (feed_item){FEED_PROMPT, v};
        else if (strcmp(a, "--chat") == 0) feeds[n_feeds++] = (feed_item){FEED_CHAT, v};
        else if (strcmp(a, "--system") == 0) system_prompt = v;
        else if (strcmp(a, "--generate") == 0) generate = v;
        else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) out_dir = v;
        else if (strcmp(a, "--backend") == 0) eo.backend = v;
        else if (strcmp(a, "--sampling") == 0) sampling_specs[n_specs++] = v;
        else if (strcmp(a, "--max-tokens") == 0) max_tokens = strtol(v, &end, 10);
        else if (strcmp(a, "--max-segments") == 0) max_segments = strtol(v, &end, 10);
        else if (strcmp(a, "--seed") == 0) so.seed = strtoull(v, &end, 10);
        else if (strcmp(a, "--temperature") == 0) so.sampling.temperature = strtof(v, &end);
        else if (strcmp(a, "--top-k") == 0) so.sampling.top_k = (int32_t)strtol(v, &end, 10);
        else if (strcmp(a, "--top-p") == 0) so.sampling.top_p = strtof(v, &end);
        else if (strcmp(a, "--min-p") == 0) so.sampling.min_p = strtof(v, &end);
        else if (strcmp(a, "--repetition-penalty") == 0) so.sampling.repetition_penalty = strtof(v, &end);
        else if (strcmp(a, "--threads") == 0) eo.threads = (int32_t)strtol(v, &end, 10);
        else if (strcmp(a, "--tp") == 0) eo.tp = (int32_t)strtol(v, &end, 10);
        else if (strcmp(a, "--dp") == 0) eo.dp = (int32_t)strtol(v, &end, 10);
        else if (strcmp(a, "--kv-mb") == 0) eo.kv_bytes = (size_t)strtoull(v, &end, 10) << 20;
        else {
            rc = usage_error("run", "run: unknown option '%s'", a);
            goto done;
        }
        if (end && (*end || end == v)) {
            rc = usage_error("run", "run: %s needs a number, not '%s'", a, v);
            goto done;
        }
    }
    if (!eo.model_dir) {
        rc = usage_error("run", "run: -m MODEL is required");
        goto done;
    }
    if (max_tokens <= 0 || max_tokens > INT32_MAX) {
        rc = usage_error("run", "run: --max-tokens must be positive");
        goto done;
    }
    eo.max_sessions = 1;
    if (sn_engine_open(&eo, &e) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    fprintf(stderr, "%s\n", sn_engine_describe(e));
    ro.dir = out_dir;
    so.callbacks = (sn_session_callbacks){.ctx = &ro, .on_action = run_on_action};
    if (sn_session_open(e, &so, &s) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    for (int i = 0; i < n_specs; i++) {
        const char *colon = strchr(sampling_specs[i], ':');
        sn_sampling_params p = so.sampling;
        char mod[128];
        if (!colon || (size_t)(colon - sampling_specs[i]) >= sizeof mod || parse_sampling(colon + 1, &p)) {
            rc = usage_error("run", "run: --sampling wants MODALITY:T,K,P,MINP,R, not '%s'", sampling_specs[i]);
            goto done;
        }
        snprintf(mod, sizeof mod, "%.*s", (int)(colon - sampling_specs[i]), sampling_specs[i]);
        if (sn_session_set_sampling(s, mod, &p) != SN_OK) {
            rc = lib_fail();
            goto done;
        }
    }
    for (int i = 0; i < n_feeds; i++) {
        if (feeds[i].kind == FEED_PROMPT || feeds[i].kind == FEED_CHAT) {
            if (!generate)
                generate = "text";
            sn_media m = {.kind = SN_MEDIA_TEXT, .text = {feeds[i].arg, strlen(feeds[i].arg)}};
            sn_status st;
            if (feeds[i].kind == FEED_PROMPT)
                st = sn_session_feed(s, "text", &m);
            else if (!chat && (st = sn_chat_open(eo.model_dir, &chat)) != SN_OK)
                ;
            else
                st = sn_chat_feed_turn(chat, s, system_prompt, feeds[i].arg, n_turns++ == 0);
            if (st != SN_OK) {
                rc = lib_fail();
                goto done;
            }
            continue;
        }
        if (feeds[i].kind == FEED_TOKENS) {
            int32_t *ids = NULL;
            size_t n = 0;
            if (parse_ids(feeds[i].arg, &ids, &n) != 0) {
                rc = EXIT_FAILURE;
                goto done;
            }
            sn_status st = sn_session_feed_tokens(s, ids, n);
            sn_free(ids);
            if (st != SN_OK) {
                rc = lib_fail();
                goto done;
            }
            continue;
        }
        const char *colon = strchr(feeds[i].arg, ':');
        if (!colon || colon == feeds[i].arg) {
            rc = usage_error("run", "run: --feed wants MODALITY:FILE, not '%s'", feeds[i].arg);
            goto done;
        }
        char mod[128];
        snprintf(mod, sizeof mod, "%.*s", (int)(colon - feeds[i].arg), feeds[i].arg);
        sn_media m = {0};
        sn_status st = sn_media_read(colon + 1, &m);
        if (st == SN_OK)
            st = sn_session_feed(s, mod, &m);
        sn_media_release(&m);
        if (st != SN_OK) {
            rc = lib_fail();
            goto done;
        }
    }
    /* --generate a,b or raw */
    const char *mods[64];
    size_t n_mods = 0;
    char gen_buf[1024] = "";
    if (generate && strcmp(generate, "raw") != 0) {
        snprintf(gen_buf, sizeof gen_buf, "%s", generate);
        char *save = NULL;
        for (char *m = strtok_r(gen_buf, ",", &save); m && n_mods < 64; m = strtok_r(NULL, ",", &save))
            mods[n_mods++] = m;
    } else if (!generate && sn_engine_vocab(e)) {
        rc = usage_error("run", "run: say what to generate: --generate MODALITY[,...] or --generate raw");
        goto done;
    }
    size_t n_before;
    sn_session_tokens(s, &n_before);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (sn_session_generate(s, n_mods ? mods : NULL, n_mods, (int32_t)max_tokens, (int32_t)max_segments) != SN_OK ||
        sn_engine_run(e) != SN_OK) {
        rc = lib_fail();
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    size_t n_after;
    const int32_t *toks = sn_session_tokens(s, &n_after);
    if (print_tokens) {
        printf("{\"generated\": [");
        for (size_t i = n_before; i < n_after; i++)
            printf("%s%d", i > n_before ? ", " : "", toks[i]);
        printf("]}\n");
    }
    if (ro.n_samples) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s-0.wav", out_dir, ro.audio_modality);
        sn_media m = {.kind = SN_MEDIA_AUDIO, .audio = {ro.audio, ro.n_samples, ro.rate}};
        if (sn_media_write(path, &m) != SN_OK)
            rc = lib_fail();
        else
            fprintf(stderr, "wrote %s (%.2f s of audio)\n", path, (double)ro.n_samples / ro.rate);
    }
    static const char *reasons[] = {"none", "eos", "max tokens", "segments", "error", "callback"};
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    sn_stop_reason why = sn_session_stop_reason(s);
    fprintf(stderr, "prompt %zu tokens, generated %zu in %.3f s (%.1f tokens/s), stopped: %s%s%s\n",
            n_before, n_after - n_before, secs, secs > 0 ? (double)(n_after - n_before) / secs : 0.0,
            reasons[why <= SN_STOP_CALLER ? why : 0], sn_session_error(s)[0] ? ": " : "", sn_session_error(s));
    if (why == SN_STOP_ERROR || ro.failed)
        rc = EXIT_FAILURE;
done:
    if (ro.plain && rc == 0)
        putchar('\n');
    sn_chat_close(chat);
    free(ro.audio);
    free(feeds);
    free(sampling_specs);
    sn_session_close(s);
    sn_engine_close(e);
    return rc;
}

static const char info_help[] =
    "usage: sensorium info -m MODEL [--plugin-path DIRS] [--backend auto|cpu|cuda] [--tp N] [--dp N]\n"
    "\n"
    "Loads the model and prints its architecture, sizes, the backend it would run on and its\n"
    "vocabulary layout.\n";

static int cmd_info(int argc, char **argv)
{
    sn_engine_opts eo = sn_engine_opts_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(info_help, stdout);
            return 0;
        }
        if (!v)
            return usage_error("info", "info: option '%s' needs a value or is unknown", a);
        i++;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) eo.model_dir = v;
        else if (strcmp(a, "--plugin-path") == 0) eo.plugin_path = v;
        else if (strcmp(a, "--backend") == 0) eo.backend = v;
        else if (strcmp(a, "--tp") == 0 || strcmp(a, "--dp") == 0) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || end == v)
                return usage_error("info", "info: %s needs a number, not '%s'", a, v);
            *(a[2] == 't' ? &eo.tp : &eo.dp) = (int32_t)n;
        } else
            return usage_error("info", "info: unknown option '%s'", a);
    }
    if (!eo.model_dir)
        return usage_error("info", "info: -m MODEL is required");
    eo.max_sessions = 1;
    eo.max_batch_tokens = 1;
    eo.kv_bytes = (size_t)64 << 20; /* info runs nothing: a small pool, enough for a block of any model */
    sn_engine *e;
    if (sn_engine_open(&eo, &e) != SN_OK)
        return lib_fail();
    printf("%s\n", sn_engine_describe(e));
    if (sn_engine_vocab(e)) {
        printf("vocabulary: ");
        print_layout(sn_engine_vocab(e));
    } else
        printf("vocabulary: no layout (a plain checkpoint): raw token ids\n");
    sn_engine_close(e);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

static const char main_help[] =
    "usage: sensorium [--plugin-path DIRS] COMMAND [ARGS]\n"
    "\n"
    "Sensorium turns stimuli into tokens and tokens into actions through .so plugins.\n"
    "\n"
    "commands:\n"
    "  plugins      list the plugins found and the files that failed to load\n"
    "  tokenize     tokenize a stimulus file with a plugin\n"
    "  detokenize   decode token ids into actions, text, audio or images\n"
    "  vocab        print and check a model's vocabulary layout\n"
    "  fit          learn a plugin's codebook or value ranges from data\n"
    "  run          feed stimuli to a model and decode the actions it generates\n"
    "  info         print a model's architecture and vocabulary layout\n"
    "  extend       add plugins' id ranges to a model's vocabulary, write a new model package\n"
    "  dataset      turn episodes into training sequences with a model's own tokenization\n"
    "  demo         held-out reflex episodes through a model: decisions, timing, accuracy\n"
    "  live         a model in a closed loop with a simulated body: reaction times, balance\n"
    "\n"
    "`sensorium COMMAND --help` describes each. Plugins are searched in --plugin-path, then\n"
    "SENSORIUM_PLUGIN_PATH (colon-separated folders or .so files), then the build's plugin\n"
    "folder. Exit status: 0 ok, 1 runtime error, 2 usage error.\n";

/* ---------------------------------------------------------------------------------------- */
/* sensorium dataset                                                                        */
/* ---------------------------------------------------------------------------------------- */

static const char dataset_help[] =
    "usage: sensorium dataset -m MODEL_DIR --episodes FILE.jsonl -o OUT [--split NAME]\n"
    "                         [--targets-as-json MODALITY] [--plugin-path DIRS]\n"
    "\n"
    "Turns episodes (stimulus files and target actions, one JSON object per line) into\n"
    "training sequences with MODEL_DIR's own plugins and vocabulary layout, the tokenization\n"
    "inference uses: [bos] <each feed as a segment> <each target as a segment> eos. Writes\n"
    "OUT.tokens.npy (int32, the sequences end to end), OUT.mask.npy (int32, 1 on the targets'\n"
    "tokens and eos: the loss mask) and OUT.offsets.npy (int32, where each sequence starts,\n"
    "and the end). An episode:\n"
    "  {\"id\": \"e1\", \"split\": \"train\",\n"
    "   \"feeds\": [{\"modality\": \"audio\", \"file\": \"audio/e1.wav\"}],\n"
    "   \"targets\": [{\"modality\": \"action\", \"text\": \"stop\"},\n"
    "               {\"modality\": \"joints\", \"values\": [[0.5, -1.0]]}]}\n"
    "with files relative to the manifest. --split keeps one split; --targets-as-json writes\n"
    "the targets as one JSON function call in a text modality instead (the text baseline).\n";

static void dataset_progress(void *ctx, size_t done, size_t total)
{
    (void)ctx;
    fprintf(stderr, "dataset: %zu/%zu manifest lines\n", done, total);
}

static int cmd_dataset(int argc, char **argv)
{
    sn_dataset_opts o = {0};
    const char *plugin_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(dataset_help, stdout);
            return 0;
        }
        if (!v)
            return usage_error("dataset", "dataset: option '%s' %s", a,
                               a[0] == '-' ? "needs a value or is unknown" : "is not an option");
        i++;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) o.model_dir = v;
        else if (strcmp(a, "--episodes") == 0) o.manifest = v;
        else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) o.out = v;
        else if (strcmp(a, "--split") == 0) o.split = v;
        else if (strcmp(a, "--targets-as-json") == 0) o.json_modality = v;
        else if (strcmp(a, "--plugin-path") == 0) plugin_path = v;
        else
            return usage_error("dataset", "dataset: unknown option '%s'", a);
    }
    if (!o.model_dir || !o.manifest || !o.out)
        return usage_error("dataset", "dataset: -m MODEL_DIR, --episodes FILE and -o OUT are required");
    sn_plugins *ps;
    if (sn_plugins_open(plugin_path, 0, &ps) != SN_OK)
        return lib_fail();
    o.plugins = ps;
    o.progress = dataset_progress;
    sn_dataset_stats stats;
    int rc = 0;
    if (sn_dataset_build(&o, &stats) != SN_OK)
        rc = lib_fail();
    else
        fprintf(stderr, "%s: %zu episodes, %zu tokens (%zu answer tokens, loss-masked in), longest %zu -> %s.{tokens,mask,offsets}.npy\n",
                o.manifest, stats.episodes, stats.tokens, stats.target_tokens, stats.longest, o.out);
    sn_plugins_close(ps);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* sensorium extend                                                                         */
/* ---------------------------------------------------------------------------------------- */

static const char extend_help[] =
    "usage: sensorium extend -m MODEL_DIR --add MODALITY:PLUGIN[:CONFIG_JSON|@FILE] [--add ...]\n"
    "                        -o OUT_DIR [--seed S] [--data-dir DIR] [--force] [--plugin-path DIRS]\n"
    "\n"
    "Adds plugins' id ranges to a model's vocabulary and writes the extended model to OUT_DIR,\n"
    "to be fine-tuned elsewhere. For each --add, in order, a begin marker, an end marker and the\n"
    "plugin's ids (as many as it has under CONFIG) are appended after the current ids. The\n"
    "embedding, and the output head unless tied, gains a row per new id drawn from a normal\n"
    "distribution with the mean and covariance of its existing rows; existing rows and every\n"
    "other tensor are copied unchanged, each in its dtype.\n"
    "  --add       MODALITY:PLUGIN, MODALITY:PLUGIN:{...} (a JSON object) or\n"
    "              MODALITY:PLUGIN:@FILE (a file holding one); the modality must be new\n"
    "  --seed S    seed of the new rows (default 0): the same seed gives the same bytes\n"
    "  --data-dir  where the added plugins find their data files (default MODEL_DIR)\n"
    "  --force     write into a non-empty OUT_DIR, replacing the files extend writes\n"
    "MODEL_DIR is a Sensorium package (sensorium.json with architecture and weights) or a\n"
    "Hugging Face folder (config.json with eos_token_id, safetensors weights): there a\n"
    "tokenizer.json makes the existing ids a 'text' segment of plugin text.bpe without markers;\n"
    "without one they stay raw ids, outside any segment. OUT_DIR gets sensorium.json,\n"
    "config.json (the architecture, for Hugging Face tools), model.safetensors, the data files\n"
    "the configurations name (and PLUGIN.npy) and the tokenizer files there are.\n";

/* Progress on one line that rewrites itself on a terminal; otherwise a line per tenth. */
static void cli_progress(void *ctx, size_t done, size_t total)
{
    int tty = *(const int *)ctx;
    if (tty)
        fprintf(stderr, "\rwriting model.safetensors: %zu/%zu tensors%s", done, total, done == total ? "\n" : "");
    else if (done == total || done * 10 / total != (done - 1) * 10 / total)
        fprintf(stderr, "writing model.safetensors: %zu/%zu tensors\n", done, total);
}

static int cmd_extend(int argc, char **argv)
{
    sn_extend_opts o = {0};
    const char *plugin_path = NULL;
    sn_extend_add *adds = calloc((size_t)argc + 1, sizeof *adds);
    char **owned = calloc((size_t)argc + 1, sizeof *owned); /* the strings adds point into */
    size_t n_owned = 0;
    sn_extend_range *ranges = NULL;
    sn_plugins *ps = NULL;
    int rc = 0;
    if (!adds || !owned) {
        rc = fail("out of memory");
        goto done;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(extend_help, stdout);
            goto done;
        }
        if (strcmp(a, "--force") == 0) {
            o.force = 1;
            continue;
        }
        int known = strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0 || strcmp(a, "--add") == 0 ||
                    strcmp(a, "--seed") == 0 || strcmp(a, "--plugin-path") == 0 || strcmp(a, "--data-dir") == 0 ||
                    strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0;
        if (!known) {
            rc = a[0] == '-' ? usage_error("extend", "extend: unknown option '%s'", a)
                             : usage_error("extend", "extend: unexpected argument '%s'", a);
            goto done;
        }
        if (!v) {
            rc = usage_error("extend", "extend: option '%s' needs a value", a);
            goto done;
        }
        i++;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0)
            o.model_dir = v;
        else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0)
            o.out_dir = v;
        else if (strcmp(a, "--plugin-path") == 0)
            plugin_path = v;
        else if (strcmp(a, "--data-dir") == 0)
            o.data_dir = v;
        else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            o.seed = strtoull(v, &end, 10);
            if (errno || *end || end == v || v[0] == '-') {
                rc = usage_error("extend", "extend: --seed needs a non-negative integer, not '%s'", v);
                goto done;
            }
        } else { /* --add MODALITY:PLUGIN[:CONFIG] */
            const char *c1 = strchr(v, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            const char *plugin_end = c2 ? c2 : c1 ? c1 + strlen(c1) : NULL;
            if (!c1 || c1 == v || plugin_end == c1 + 1) {
                rc = usage_error("extend", "extend: --add wants MODALITY:PLUGIN[:CONFIG_JSON|@FILE], not '%s'", v);
                goto done;
            }
            sn_extend_add *add = &adds[o.n_adds++];
            char *mod = owned[n_owned++] = malloc(strlen(v) + 1);
            if (!mod) {
                rc = fail("out of memory");
                goto done;
            }
            strcpy(mod, v);
            mod[c1 - v] = '\0';
            mod[plugin_end - v] = '\0';
            add->modality = mod;
            add->plugin = mod + (c1 - v) + 1;
            const char *config = c2 ? c2 + 1 : NULL;
            if (config && !(config = owned[n_owned++] = read_config(config))) {
                rc = EXIT_FAILURE;
                goto done;
            }
            add->config_json = config;
        }
    }
    if (!o.model_dir) {
        rc = usage_error("extend", "extend: -m MODEL_DIR is required");
        goto done;
    }
    if (!o.n_adds) {
        rc = usage_error("extend", "extend: give at least one --add MODALITY:PLUGIN[:CONFIG]");
        goto done;
    }
    if (!o.out_dir) {
        rc = usage_error("extend", "extend: -o OUT_DIR is required");
        goto done;
    }
    if (sn_plugins_open(plugin_path, 0, &ps) != SN_OK) {
        rc = fail("%s", sn_errmsg());
        goto done;
    }
    int tty = isatty(fileno(stderr));
    o.adds = adds;
    o.progress = cli_progress;
    o.progress_ctx = &tty;
    if (!(ranges = calloc(o.n_adds, sizeof *ranges))) {
        rc = fail("out of memory");
        goto done;
    }
    sn_status st = sn_extend(ps, &o, ranges);
    if (st != SN_OK) {
        rc = fail("%s", sn_errmsg());
        /* a missing plugin is often among the files that failed to load */
        if (strstr(sn_errmsg(), "unknown plugin"))
            for (size_t i = 0; i < sn_plugins_error_count(ps); i++)
                fprintf(stderr, "  not loaded: %s\n", sn_plugins_error(ps, i));
        goto done;
    }
    const sn_extend_range *last = &ranges[o.n_adds - 1];
    fprintf(stderr, "%s (%d ids) -> %s (%u ids):\n", o.model_dir, ranges[0].begin, o.out_dir,
            last->start + last->size);
    for (size_t i = 0; i < o.n_adds; i++)
        fprintf(stderr, "  %-12s %-18s begin %d, end %d, ids %u..%u\n", adds[i].modality, adds[i].plugin,
                ranges[i].begin, ranges[i].end, ranges[i].start, ranges[i].start + ranges[i].size - 1);
done:
    sn_plugins_close(ps);
    free(ranges);
    for (size_t i = 0; owned && i < n_owned; i++)
        free(owned[i]);
    free(owned);
    free(adds);
    return rc;
}

int main(int argc, char **argv)
{
    sn_set_log_handler(log_to_stderr, NULL);
    /* Global options before the command: --plugin-path is passed on to the command. */
    const char *plugin_path = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(main_help, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("sensorium %s (plugin ABI %d.%d)\n", sn_version(), SN_PLUGIN_ABI_MAJOR, SN_PLUGIN_ABI_MINOR);
            return 0;
        } else if (strcmp(argv[i], "--plugin-path") == 0 && i + 1 < argc) {
            plugin_path = argv[++i];
        } else
            return usage_error(NULL, "unknown option '%s'", argv[i]);
    }
    if (i >= argc) {
        fputs(main_help, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    /* Re-insert a global --plugin-path as the command's own option. */
    char **args = NULL;
    if (plugin_path) {
        args = malloc((size_t)(sub_argc + 3) * sizeof *args);
        if (!args)
            return fail("out of memory");
        args[0] = sub_argv[0];
        args[1] = "--plugin-path";
        args[2] = (char *)plugin_path;
        memcpy(args + 3, sub_argv + 1, (size_t)(sub_argc - 1) * sizeof *args);
        sub_argc += 2;
        sub_argv = args;
    }
    int rc;
    if (strcmp(cmd, "plugins") == 0)
        rc = cmd_plugins(sub_argc, sub_argv);
    else if (strcmp(cmd, "tokenize") == 0)
        rc = cmd_tokenize(sub_argc, sub_argv);
    else if (strcmp(cmd, "detokenize") == 0)
        rc = cmd_detokenize(sub_argc, sub_argv);
    else if (strcmp(cmd, "vocab") == 0)
        rc = cmd_vocab(sub_argc, sub_argv);
    else if (strcmp(cmd, "fit") == 0)
        rc = cmd_fit(sub_argc, sub_argv);
    else if (strcmp(cmd, "run") == 0)
        rc = cmd_run(sub_argc, sub_argv);
    else if (strcmp(cmd, "info") == 0)
        rc = cmd_info(sub_argc, sub_argv);
    else if (strcmp(cmd, "extend") == 0)
        rc = cmd_extend(sub_argc, sub_argv);
    else if (strcmp(cmd, "dataset") == 0)
        rc = cmd_dataset(sub_argc, sub_argv);
    else if (strcmp(cmd, "demo") == 0)
        rc = cmd_demo(sub_argc, sub_argv);
    else if (strcmp(cmd, "live") == 0)
        rc = cmd_live(sub_argc, sub_argv);
    else
        rc = usage_error(NULL, "unknown command '%s'", cmd);
    free(args);
    return rc;
}

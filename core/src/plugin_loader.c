/*
 * plugin_loader.c - finds plugin files, dlopens them and checks their descriptors.
 *
 * First stage of the pipeline: nothing downstream (vocabulary layout, engine, CLI) touches a
 * plugin file except through the records made here. Every way a file can be wrong becomes one
 * line "FILE: reason" in the plugin set's error list, and loading goes on with the next file:
 * a broken plugin must never take the engine or the good plugins down with it.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "plugin_impl.h"

#ifndef SN_DEFAULT_PLUGIN_DIR
#define SN_DEFAULT_PLUGIN_DIR ""
#endif

/* An entry function that never returns NULL would loop forever. */
#define MAX_PLUGINS_PER_FILE 1024

typedef struct loaded_file {
    char *path; /* as found (shown to the user) */
    char *real; /* realpath, to load each file once */
    void *dl;   /* dlopen handle while the file provides a plugin, else NULL */
} loaded_file;

struct sn_plugins {
    loaded_file *files; /* (n_files) */
    size_t n_files, cap_files;
    sn_plugin_rec *recs; /* (n_recs) */
    size_t n_recs, cap_recs;
    char **errors; /* (n_errors) "FILE: reason" */
    size_t n_errors, cap_errors;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 8;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static sn_status add_error(sn_plugins *ps, const char *fmt, ...) SN_PRINTF(2, 3);
static sn_status add_error(sn_plugins *ps, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *c = line; *c; c++)
        if (*c == '\n')
            *c = ' ';
    char *copy = sn_strdup(line);
    if (!copy || grow((void **)&ps->errors, &ps->cap_errors, ps->n_errors + 1, sizeof *ps->errors)) {
        free(copy);
        return sn_fail(SN_ERR_NOMEM, "out of memory recording a plugin error");
    }
    ps->errors[ps->n_errors++] = copy;
    return SN_OK;
}

static int valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 64)
        return 0;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-'))
            return 0;
    return 1;
}

/* Why a descriptor cannot be used, or NULL when it can. The copy in *out is zero-padded to
 * the size this host knows, so fields the plugin does not declare read as NULL/0. */
static const char *check_desc(const sn_plugin_desc *d, sn_plugin_desc *out, char *why,
                              size_t why_len)
{
    /* struct_size and the version are the first 8 bytes of every major version. */
    if (d->struct_size < 8) {
        snprintf(why, why_len, "descriptor declares struct_size %u, too small to hold even its ABI version",
                 d->struct_size);
        return why;
    }
    if (d->abi_major != SN_PLUGIN_ABI_MAJOR) {
        snprintf(why, why_len,
                 "built for plugin ABI %u.%u but this engine speaks %d.x (rebuild it against this engine's plugin.h)",
                 d->abi_major, d->abi_minor, SN_PLUGIN_ABI_MAJOR);
        return why;
    }
    if (d->struct_size < SN_PLUGIN_DESC_V1_SIZE) {
        snprintf(why, why_len, "descriptor is %u bytes, smaller than ABI v1's %zu (struct_size must be sizeof(sn_plugin_desc))",
                 d->struct_size, (size_t)SN_PLUGIN_DESC_V1_SIZE);
        return why;
    }
    memset(out, 0, sizeof *out);
    memcpy(out, d, d->struct_size < sizeof *out ? d->struct_size : sizeof *out);

    if (!out->name) {
        snprintf(why, why_len, "descriptor has no name (required)");
        return why;
    }
    if (!valid_name(out->name)) {
        snprintf(why, why_len, "plugin name '%.64s' is not 1-64 characters of [A-Za-z0-9._-]", out->name);
        return why;
    }
    const char *missing = NULL;
    if (!out->version) missing = "version";
    else if (!out->create) missing = "create";
    else if (!out->destroy) missing = "destroy";
    else if (!out->vocab_size) missing = "vocab_size";
    else if (!out->open_stream) missing = "open_stream";
    else if (!out->close_stream) missing = "close_stream";
    else if ((out->kind & SN_PLUGIN_TOKENIZER) && !out->encode) missing = "encode (required for a tokenizer)";
    else if ((out->kind & SN_PLUGIN_DECODER) && !out->decode) missing = "decode (required for a decoder)";
    if (missing) {
        snprintf(why, why_len, "plugin '%s': required function %s is NULL", out->name, missing);
        return why;
    }
    if (out->kind == 0 || (out->kind & ~(SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER))) {
        snprintf(why, why_len, "plugin '%s': kind 0x%x is not SN_PLUGIN_TOKENIZER and/or SN_PLUGIN_DECODER",
                 out->name, out->kind);
        return why;
    }
    const uint32_t known_media = SN_MEDIA_BIT(SN_MEDIA_TEXT) | SN_MEDIA_BIT(SN_MEDIA_AUDIO) |
                                 SN_MEDIA_BIT(SN_MEDIA_IMAGE) | SN_MEDIA_BIT(SN_MEDIA_SERIES);
    if ((out->kind & SN_PLUGIN_TOKENIZER) && (out->media_kinds == 0 || (out->media_kinds & ~known_media))) {
        snprintf(why, why_len, "plugin '%s': a tokenizer must accept some media: media_kinds 0x%x is not an OR of SN_MEDIA_BIT() values",
                 out->name, out->media_kinds);
        return why;
    }
    return NULL;
}

/* Is the file an ELF object? dlopen's own message for a text file ("invalid ELF header") is
 * accurate but cryptic; say it plainly. */
static int is_elf(const char *path, char *why, size_t why_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_len, "cannot open: %s", strerror(errno));
        return 0;
    }
    unsigned char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got < 4 || memcmp(magic, "\x7f" "ELF", 4) != 0) {
        snprintf(why, why_len, "not a shared object (no ELF header; is it a plugin built with sn_add_plugin or `cc -shared`?)");
        return 0;
    }
    return 1;
}

static sn_status load_file(sn_plugins *ps, const char *path)
{
    char real[PATH_MAX];
    if (!realpath(path, real))
        return add_error(ps, "%s: %s", path, strerror(errno));
    for (size_t i = 0; i < ps->n_files; i++)
        if (strcmp(ps->files[i].real, real) == 0)
            return SN_OK; /* the same file reached twice through the search path */

    if (grow((void **)&ps->files, &ps->cap_files, ps->n_files + 1, sizeof *ps->files))
        return sn_fail(SN_ERR_NOMEM, "out of memory loading plugins");
    loaded_file *lf = &ps->files[ps->n_files];
    lf->path = sn_strdup(path);
    lf->real = sn_strdup(real);
    lf->dl = NULL;
    if (!lf->path || !lf->real) {
        free(lf->path);
        free(lf->real);
        return sn_fail(SN_ERR_NOMEM, "out of memory loading plugins");
    }
    ps->n_files++;

    char why[512];
    if (!is_elf(path, why, sizeof why))
        return add_error(ps, "%s: %s", path, why);

    dlerror();
    void *dl = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        return add_error(ps, "%s: cannot load: %s", path, e ? e : "dlopen failed");
    }
    dlerror();
    void *sym = dlsym(dl, SN_PLUGIN_ENTRY_SYMBOL);
    if (!sym) {
        dlclose(dl);
        return add_error(ps, "%s: no entry symbol '%s' (define it with SN_PLUGIN_ENTRY; `nm -D %s` lists what the file exports)",
                         path, SN_PLUGIN_ENTRY_SYMBOL, path);
    }
    sn_plugin_entry_fn entry;
    /* POSIX guarantees object and function pointers convert through dlsym. */
    memcpy(&entry, &sym, sizeof entry);

    size_t kept = 0;
    sn_status st = SN_OK;
    for (uint32_t i = 0;; i++) {
        if (i == MAX_PLUGINS_PER_FILE) {
            st = add_error(ps, "%s: the entry function returned %d descriptors without a NULL; the rest are ignored",
                           path, MAX_PLUGINS_PER_FILE);
            break;
        }
        const sn_plugin_desc *d = entry(i);
        if (!d)
            break;
        sn_plugin_desc copy;
        if (check_desc(d, &copy, why, sizeof why)) {
            st = add_error(ps, "%s: descriptor #%u: %s", path, i, why);
            if (st != SN_OK)
                break;
            continue;
        }
        const sn_plugin_rec *other = sn_plugins_lookup(ps, copy.name);
        if (other) {
            st = add_error(ps, "%s: duplicate plugin name '%s': already provided by %s; this one is skipped",
                           path, copy.name, other->file);
            if (st != SN_OK)
                break;
            continue;
        }
        if (grow((void **)&ps->recs, &ps->cap_recs, ps->n_recs + 1, sizeof *ps->recs)) {
            st = sn_fail(SN_ERR_NOMEM, "out of memory loading plugins");
            break;
        }
        sn_plugin_rec *r = &ps->recs[ps->n_recs++];
        r->desc = copy;
        r->file = lf->path;
        r->info = (sn_plugin_info){
            .name = copy.name,
            .version = copy.version,
            .description = copy.description ? copy.description : "",
            .file = lf->path,
            .kind = copy.kind,
            .media_kinds = copy.media_kinds,
            .abi_major = copy.abi_major,
            .abi_minor = copy.abi_minor,
        };
        kept++;
    }
    if (kept)
        lf->dl = dl;
    else
        dlclose(dl);
    return st;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && strcmp(s + n - m, suffix) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads a folder's *.so files in name order, or one file. origin says where the entry came
 * from, for the message when it does not exist. */
static sn_status load_entry(sn_plugins *ps, const char *entry, const char *origin, int quiet_missing)
{
    struct stat sb;
    if (stat(entry, &sb) != 0) {
        if (quiet_missing)
            return SN_OK;
        return add_error(ps, "%s: %s (from %s)", entry, strerror(errno), origin);
    }
    if (!S_ISDIR(sb.st_mode))
        return load_file(ps, entry);

    DIR *dir = opendir(entry);
    if (!dir)
        return add_error(ps, "%s: cannot read folder: %s (from %s)", entry, strerror(errno), origin);
    char **names = NULL;
    size_t n = 0, cap = 0;
    sn_status st = SN_OK;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!has_suffix(de->d_name, ".so"))
            continue;
        sn_str full = {0};
        if (sn_str_printf(&full, "%s/%s", entry, de->d_name) != SN_OK ||
            grow((void **)&names, &cap, n + 1, sizeof *names)) {
            sn_str_free(&full);
            st = sn_fail(SN_ERR_NOMEM, "out of memory listing %s", entry);
            break;
        }
        names[n++] = full.s;
    }
    closedir(dir);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (st == SN_OK)
            st = load_file(ps, names[i]);
        free(names[i]);
    }
    free(names);
    return st;
}

static sn_status load_list(sn_plugins *ps, const char *list, const char *origin)
{
    char *copy = sn_strdup(list);
    if (!copy)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    sn_status st = SN_OK;
    char *save = NULL;
    for (char *e = strtok_r(copy, ":", &save); e && st == SN_OK; e = strtok_r(NULL, ":", &save))
        st = load_entry(ps, e, origin, 0);
    free(copy);
    return st;
}

sn_status sn_plugins_open(const char *search_path, uint32_t flags, sn_plugins **out)
{
    sn_clear_error();
    if (!out)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_plugins_open: out is NULL");
    *out = NULL;
    sn_plugins *ps = calloc(1, sizeof *ps);
    if (!ps)
        return sn_fail(SN_ERR_NOMEM, "out of memory");
    sn_status st = SN_OK;
    if (search_path && *search_path)
        st = load_list(ps, search_path, "--plugin-path");
    const char *env = getenv("SENSORIUM_PLUGIN_PATH");
    if (st == SN_OK && !(flags & SN_PLUGINS_NO_ENV) && env && *env)
        st = load_list(ps, env, "SENSORIUM_PLUGIN_PATH");
    /* The build folder is a default, not something the user named: absent is fine. */
    if (st == SN_OK && !(flags & SN_PLUGINS_NO_DEFAULT) && *SN_DEFAULT_PLUGIN_DIR)
        st = load_entry(ps, SN_DEFAULT_PLUGIN_DIR, "the build's plugin folder", 1);
    if (st != SN_OK) {
        sn_plugins_close(ps);
        return st;
    }
    *out = ps;
    return SN_OK;
}

void sn_plugins_close(sn_plugins *ps)
{
    if (!ps)
        return;
    for (size_t i = 0; i < ps->n_files; i++) {
        if (ps->files[i].dl)
            dlclose(ps->files[i].dl);
        free(ps->files[i].path);
        free(ps->files[i].real);
    }
    for (size_t i = 0; i < ps->n_errors; i++)
        free(ps->errors[i]);
    free(ps->files);
    free(ps->recs);
    free(ps->errors);
    free(ps);
}

size_t sn_plugins_count(const sn_plugins *ps) { return ps ? ps->n_recs : 0; }

sn_status sn_plugins_get(const sn_plugins *ps, size_t i, sn_plugin_info *out)
{
    if (!ps || !out || i >= ps->n_recs)
        return sn_fail(SN_ERR_INVALID_ARG, "sn_plugins_get: index %zu out of range (%zu plugins)",
                       i, ps ? ps->n_recs : 0);
    *out = ps->recs[i].info;
    return SN_OK;
}

long sn_plugins_find(const sn_plugins *ps, const char *name)
{
    if (!ps || !name)
        return -1;
    for (size_t i = 0; i < ps->n_recs; i++)
        if (strcmp(ps->recs[i].desc.name, name) == 0)
            return (long)i;
    return -1;
}

const sn_plugin_rec *sn_plugins_rec(const sn_plugins *ps, size_t i)
{
    return ps && i < ps->n_recs ? &ps->recs[i] : NULL;
}

const sn_plugin_rec *sn_plugins_lookup(const sn_plugins *ps, const char *name)
{
    long i = sn_plugins_find(ps, name);
    return i < 0 ? NULL : &ps->recs[i];
}

size_t sn_plugins_error_count(const sn_plugins *ps) { return ps ? ps->n_errors : 0; }

const char *sn_plugins_error(const sn_plugins *ps, size_t i)
{
    return ps && i < ps->n_errors ? ps->errors[i] : NULL;
}

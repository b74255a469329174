/*
 * test_plugin.c - the loader's test subjects: one small plugin compiled several times, each
 * build (selected with -DTP_...) getting one thing wrong the way a real plugin might. The
 * loader suite checks that each gets its one-line error and that the good ones still load.
 *
 * The good plugin ("test.good"): vocab 4, encodes each text byte as byte % 4, decodes each id
 * as the named action "a0".."a3".
 */
#include <stdlib.h>
#include <string.h>

#include <sensorium/plugin.h>

#ifndef TP_NAME
#define TP_NAME "test.good"
#endif

struct sn_instance {
    int unused;
};
struct sn_stream {
    int unused;
};

static sn_plugin_status tp_create(const sn_host *host, sn_instance **out, sn_plugin_error *err)
{
    (void)host;
#ifdef TP_CREATE_FAIL
    sn_plugin_error_set(err, "the test plugin always fails create (TP_CREATE_FAIL)");
    *out = NULL;
    return SN_PLUGIN_ERR_CONFIG;
#else
    *out = calloc(1, sizeof **out);
    if (!*out) {
        sn_plugin_error_set(err, "out of memory");
        return SN_PLUGIN_ERR_NOMEM;
    }
    return SN_PLUGIN_OK;
#endif
}

static void tp_destroy(sn_instance *inst) { free(inst); }

static uint32_t tp_vocab_size(const sn_instance *inst)
{
    (void)inst;
    return 4;
}

static sn_plugin_status tp_open_stream(sn_instance *inst, sn_stream **out, sn_plugin_error *err)
{
    (void)inst;
    *out = calloc(1, sizeof **out);
    if (!*out) {
        sn_plugin_error_set(err, "out of memory");
        return SN_PLUGIN_ERR_NOMEM;
    }
    return SN_PLUGIN_OK;
}

static void tp_close_stream(sn_stream *s) { free(s); }

static sn_plugin_status tp_encode(sn_stream *s, const sn_media *m, const sn_token_sink *sink,
                                  sn_plugin_error *err)
{
    (void)s;
    if (m->kind != SN_MEDIA_TEXT) {
        sn_plugin_error_set(err, "text only");
        return SN_PLUGIN_ERR_INVALID;
    }
    for (size_t i = 0; i < m->text.len; i++) {
#ifdef TP_BAD_IDS
        int32_t id = 4 + (unsigned char)m->text.utf8[i]; /* past vocab_size */
#else
        int32_t id = (unsigned char)m->text.utf8[i] % 4;
#endif
        sn_plugin_status st = sink->emit(sink->ctx, &id, 1, m->t);
        if (st != SN_PLUGIN_OK)
            return st;
    }
    return SN_PLUGIN_OK;
}

static sn_plugin_status tp_decode(sn_stream *s, const int32_t *ids, size_t n, double t,
                                  const sn_action_sink *sink, sn_plugin_error *err)
{
    (void)s;
    (void)err;
    static const char *const names[] = {"a0", "a1", "a2", "a3"};
    for (size_t i = 0; i < n; i++) {
        sn_action a = {.kind = SN_ACTION_NAMED, .t = t};
        a.named.name = names[ids[i]];
        a.named.index = (uint32_t)ids[i];
        sn_plugin_status st = sink->emit(sink->ctx, &a);
        if (st != SN_PLUGIN_OK)
            return st;
    }
    return SN_PLUGIN_OK;
}

#if defined(TP_V1_0)
static sn_plugin_status tp_fit_never(const sn_host *host, const sn_media *data, size_t n,
                                     const char *out_path, sn_plugin_error *err)
{
    (void)host, (void)data, (void)n, (void)out_path, (void)err;
    return SN_PLUGIN_OK;
}
#endif

#define TP_DESC(desc_name, plugin_name)                                \
    {                                                                  \
        .struct_size = sizeof(sn_plugin_desc),                         \
        .abi_major = SN_PLUGIN_ABI_MAJOR,                              \
        .abi_minor = SN_PLUGIN_ABI_MINOR,                              \
        .name = plugin_name,                                           \
        .version = "0.0.1",                                            \
        .description = "a loader test subject",                        \
        .kind = SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER,               \
        .media_kinds = SN_MEDIA_BIT(SN_MEDIA_TEXT),                    \
        .create = tp_create,                                           \
        .destroy = tp_destroy,                                         \
        .vocab_size = tp_vocab_size,                                   \
        .open_stream = tp_open_stream,                                 \
        .close_stream = tp_close_stream,                               \
        .encode = tp_encode,                                           \
        .decode = tp_decode,                                           \
    }

#if defined(TP_NEWER_MINOR)
/* A plugin from a future 1.x: a bigger descriptor with a field this host does not know. */
static struct {
    sn_plugin_desc d;
    void *field_from_the_future;
} desc_v1_99 = {TP_DESC(d, TP_NAME), (void *)&desc_v1_99};
#else
static sn_plugin_desc desc = TP_DESC(desc, TP_NAME);
#endif

#if defined(TP_MULTI)
static sn_plugin_desc desc_b = TP_DESC(desc_b, "test.multi_b");
static sn_plugin_desc desc_bad = TP_DESC(desc_bad, "test.multi_bad");
#endif

static const sn_plugin_desc *tp_get(uint32_t index)
{
#if defined(TP_NEWER_MINOR)
    desc_v1_99.d.struct_size = sizeof desc_v1_99;
    desc_v1_99.d.abi_minor = 99;
    return index == 0 ? &desc_v1_99.d : NULL;
#else
#if defined(TP_ABI_MAJOR)
    desc.abi_major = SN_PLUGIN_ABI_MAJOR + 1; /* a plugin from a future 2.0 */
    desc.abi_minor = 0;
#elif defined(TP_SMALL_DESC)
    desc.struct_size = (uint32_t)offsetof(sn_plugin_desc, decode); /* an older, shorter layout */
#elif defined(TP_V1_0)
    desc.struct_size = (uint32_t)SN_PLUGIN_DESC_V1_SIZE; /* built against plugin.h 1.0 */
    desc.abi_minor = 0;
    desc.fit = tp_fit_never; /* past the declared size: the host must not see it */
#elif defined(TP_NULL_FN)
    desc.encode = NULL; /* a tokenizer without encode */
#endif
#if defined(TP_MULTI)
    desc_bad.destroy = NULL;
    const sn_plugin_desc *all[] = {&desc, &desc_bad, &desc_b};
    return index < 3 ? all[index] : NULL;
#else
    return index == 0 ? &desc : NULL;
#endif
#endif
}

#if defined(TP_NO_ENTRY)
/* Exported, but under the wrong name. */
SN_PLUGIN_EXPORT const sn_plugin_desc *sn_plugin_entry_misspelt(uint32_t index) { return tp_get(index); }
#else
SN_PLUGIN_ENTRY(index) { return tp_get(index); }
#endif

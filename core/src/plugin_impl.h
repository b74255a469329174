/*
 * plugin_impl.h - the core's view of loaded plugins: the loader's records (plugin_loader.c)
 * and plugin instances with their host-services table (plugin_host.c). The vocabulary
 * layout and, later, the engine create instances through this header.
 */
#ifndef SN_PLUGIN_IMPL_H
#define SN_PLUGIN_IMPL_H

#include <jansson.h>

#include "internal.h"

/* One plugin found in a file. */
typedef struct sn_plugin_rec {
    sn_plugin_desc desc; /* the plugin's descriptor, fields past its struct_size zeroed */
    sn_plugin_info info; /* strings point into desc (plugin memory) and file */
    const char *file;    /* owned by the sn_plugins file table */
} sn_plugin_rec;

/* The record of plugin i (i < sn_plugins_count). */
const sn_plugin_rec *sn_plugins_rec(const sn_plugins *plugins, size_t i);
/* The record named name, or NULL. */
const sn_plugin_rec *sn_plugins_lookup(const sn_plugins *plugins, const char *name);

/* A created plugin: the plugin's instance plus the host table it was given. */
typedef struct sn_plugin_instance {
    const sn_plugin_rec *rec;
    sn_host host;          /* host.ctx points back to this struct */
    json_t *config;        /* owned reference: the plugin's configuration object */
    char *data_dir;        /* owned; NULL for none */
    sn_instance *instance; /* the plugin's */
    uint32_t vocab_size;
} sn_plugin_instance;

/*
 * Creates an instance of rec with config (a JSON object; borrowed, a reference is taken) and
 * data_dir (may be NULL). On failure the message names the plugin and file and carries the
 * plugin's own text.
 */
sn_status sn_plugin_instance_create(const sn_plugin_rec *rec, json_t *config,
                                    const char *data_dir, sn_plugin_instance **out);
void sn_plugin_instance_destroy(sn_plugin_instance *inst);

/* Stream calls on an instance, with every result the plugin hands back checked: ids inside
 * its vocabulary, well-formed actions, a constraint that leaves a way forward. Errors name
 * the plugin and its file. */
sn_status sn_instance_open_stream(sn_plugin_instance *inst, sn_stream **out);
void sn_instance_close_stream(sn_plugin_instance *inst, sn_stream *stream);
/* Appends the plugin's local ids. */
sn_status sn_instance_encode(sn_plugin_instance *inst, sn_stream *stream, const sn_media *media,
                             sn_tokens *out);
sn_status sn_instance_encode_flush(sn_plugin_instance *inst, sn_stream *stream, sn_tokens *out);
sn_status sn_instance_decode(sn_plugin_instance *inst, sn_stream *stream, const int32_t *ids,
                             size_t n, double t, sn_action_fn fn, void *ctx);
sn_status sn_instance_decode_flush(sn_plugin_instance *inst, sn_stream *stream, sn_action_fn fn,
                                   void *ctx);
/* Fills allowed (vocab_size bits) and *may_end with the plugin's constraint. */
sn_status sn_instance_constrain(sn_plugin_instance *inst, sn_stream *stream,
                                const int32_t *segment, size_t n, uint64_t *allowed, int *may_end);

/* Formats a failed plugin call: "PLUGIN (FILE): WHAT: MESSAGE" and returns SN_ERR_PLUGIN
 * (SN_ERR_NOMEM when the plugin ran out of memory). */
sn_status sn_plugin_fail(const sn_plugin_rec *rec, const char *what, sn_plugin_status st,
                         const sn_plugin_error *err);

/* The name of a plugin status ("invalid input"). */
const char *sn_plugin_status_str(sn_plugin_status st);

/* The log handler installed with sn_set_log_handler (internal to plugin_host.c). */
void sn_log_emit(sn_log_level level, const char *source, const char *msg);

#endif /* SN_PLUGIN_IMPL_H */

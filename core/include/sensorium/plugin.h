/*
 * sensorium/plugin.h - the Sensorium plugin ABI, version 1.
 *
 * This header is the whole contract between the engine (the "host") and a plugin: a shared
 * object that turns stimuli into tokens (a tokenizer) and/or tokens back into effects (a
 * decoder). A plugin includes this header and nothing else of the engine, and links against
 * nothing of the engine: everything the host offers reaches the plugin through the sn_host
 * table passed to create(). Everything a plugin must do is written here; the README and
 * docs/plugins.md show worked examples.
 *
 * Data flow:  media (sn_media) --encode--> local token ids 0..vocab_size-1 --(host maps into
 * the model's shared vocabulary)--> model --> local ids --decode--> action events (sn_action).
 *
 * Versioning. The descriptor and the host table begin with their size and the ABI version.
 * The host refuses a plugin whose major version differs from its own and accepts any minor
 * version; it never reads a descriptor field past the size the plugin declares, so fields are
 * only ever appended, and a field a plugin does not declare takes the default written below.
 * Likewise a plugin must not read a host-table field past host->struct_size.
 *
 * Threads. create() and destroy() are called from one thread, never concurrently with any
 * other call on the same instance. Instance calls (vocab_size, open_stream) may come from any
 * thread, concurrently: treat the instance as read-only after create(). Stream calls may run
 * concurrently on *different* streams; the host never calls one stream from two threads at
 * once. Host services may be called from any thread.
 *
 * Memory. Whoever allocates frees. Pointers the host passes (media, ids, config strings,
 * sinks) stay valid for the duration of the call only, except where stated otherwise. Pointers
 * a plugin passes to a sink (token ids, action payloads) need stay valid only until the sink
 * returns; the host copies what it keeps.
 *
 * Errors. Every fallible call returns an sn_plugin_status and receives an sn_plugin_error
 * whose message the host has emptied; on failure the plugin writes one line there (use
 * sn_plugin_error_set) saying what is wrong and what to do. The host shows it prefixed with
 * the plugin's name and file. A plugin never aborts or exits the process and never prints.
 *
 * Example (a complete plugin): see "Writing a plugin" in the README.
 */
#ifndef SENSORIUM_PLUGIN_H
#define SENSORIUM_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SN_PLUGIN_ABI_MAJOR 1
#define SN_PLUGIN_ABI_MINOR 1

/* The one symbol a plugin file exports (see SN_PLUGIN_ENTRY below). */
#define SN_PLUGIN_ENTRY_SYMBOL "sn_plugin_entry"

#if defined(_WIN32)
#define SN_PLUGIN_EXPORT __declspec(dllexport)
#else
#define SN_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------- */
/* Status codes and error messages                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Append-only; values are never renumbered. */
typedef enum sn_plugin_status {
    SN_PLUGIN_OK = 0,
    SN_PLUGIN_ERR_INVALID = 1,     /* the input (media, ids) is malformed or of the wrong kind */
    SN_PLUGIN_ERR_CONFIG = 2,      /* the configuration is missing a key, or a value is wrong */
    SN_PLUGIN_ERR_NOMEM = 3,       /* an allocation failed */
    SN_PLUGIN_ERR_IO = 4,          /* a file the plugin needs (e.g. a codebook) is unreadable */
    SN_PLUGIN_ERR_UNSUPPORTED = 5, /* valid input the plugin does not handle */
    SN_PLUGIN_ERR_NOT_FOUND = 6,   /* a host config look-up: the key is absent */
    SN_PLUGIN_ERR_INTERNAL = 7,    /* a bug in the plugin */
    SN_PLUGIN_ERR_ABORTED = 8      /* a sink asked the plugin to stop; return it unchanged */
} sn_plugin_status;

#define SN_PLUGIN_ERROR_MAX 512

/* One line of text, NUL-terminated, owned by the host. */
typedef struct sn_plugin_error {
    char message[SN_PLUGIN_ERROR_MAX];
} sn_plugin_error;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static inline void sn_plugin_error_set(sn_plugin_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------- */
/* Media: what a tokenizer reads                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef enum sn_media_kind {
    SN_MEDIA_TEXT = 1,   /* UTF-8 text */
    SN_MEDIA_AUDIO = 2,  /* mono PCM, float32 in [-1, 1] */
    SN_MEDIA_IMAGE = 3,  /* 8-bit pixels, row-major, interleaved channels */
    SN_MEDIA_SERIES = 4  /* sensor series: ticks x dims float32 */
} sn_media_kind;

/* Bit for a media kind in sn_plugin_desc.media_kinds. */
#define SN_MEDIA_BIT(kind) (1u << (unsigned)(kind))

typedef struct sn_media_text {
    const char *utf8; /* (len) bytes of valid UTF-8, whole characters (the host never splits a
                         character across chunks); not NUL-terminated */
    size_t len;
} sn_media_text;

typedef struct sn_media_audio {
    const float *samples; /* (n_samples) mono samples in [-1, 1] */
    size_t n_samples;
    uint32_t sample_rate; /* Hz, > 0 */
} sn_media_audio;

typedef struct sn_media_image {
    const uint8_t *pixels; /* (height, stride) bytes; each row holds width*channels bytes */
    uint32_t width, height;
    uint32_t channels;     /* 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA */
    size_t stride;         /* bytes from one row to the next, >= width*channels */
} sn_media_image;

typedef struct sn_media_series {
    const float *values; /* (n_ticks, dims) row-major */
    size_t n_ticks;
    uint32_t dims;
    double rate_hz;      /* ticks per second; 0 when unknown */
} sn_media_series;

/* A typed view of one chunk of a stimulus. A live feed arrives as many chunks in order. */
typedef struct sn_media {
    sn_media_kind kind;
    double t;            /* stream time of the first element, in seconds */
    union {
        sn_media_text text;
        sn_media_audio audio;
        sn_media_image image;
        sn_media_series series;
    };
} sn_media;

/* ---------------------------------------------------------------------------------------- */
/* Actions: what a decoder emits                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef enum sn_action_kind {
    SN_ACTION_NAMED = 1,  /* a discrete action by name ("raise_left_hand") */
    SN_ACTION_VECTOR = 2, /* a float vector (joint targets, a sensor reading) */
    SN_ACTION_AUDIO = 3,  /* PCM audio to play */
    SN_ACTION_TEXT = 4,   /* UTF-8 text; always whole characters */
    SN_ACTION_IMAGE = 5   /* a picture */
} sn_action_kind;

typedef struct sn_action_named {
    const char *name; /* NUL-terminated */
    uint32_t index;   /* the action's position in the plugin's list */
} sn_action_named;

typedef struct sn_action_vector {
    const float *values; /* (n) */
    size_t n;
} sn_action_vector;

typedef struct sn_action {
    sn_action_kind kind;
    double t; /* stream time the event takes effect, in seconds */
    union {
        sn_action_named named;
        sn_action_vector vector;
        sn_media_audio audio;
        sn_media_text text; /* whole UTF-8 characters only */
        sn_media_image image;
    };
} sn_action;

/* ---------------------------------------------------------------------------------------- */
/* Sinks: how a plugin hands results to the host                                            */
/* ---------------------------------------------------------------------------------------- */

/* Receives local token ids 0..vocab_size-1 in order; t is the stream time of the first. A
 * return other than SN_PLUGIN_OK means stop: the plugin returns that status at once. */
typedef struct sn_token_sink {
    void *ctx;
    sn_plugin_status (*emit)(void *ctx, const int32_t *ids, size_t n, double t);
} sn_token_sink;

/* Receives action events in order. Same stop rule as sn_token_sink. */
typedef struct sn_action_sink {
    void *ctx;
    sn_plugin_status (*emit)(void *ctx, const sn_action *action);
} sn_action_sink;

/* ---------------------------------------------------------------------------------------- */
/* Host services                                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef enum sn_log_level {
    SN_LOG_ERROR = 0,
    SN_LOG_WARN = 1,
    SN_LOG_INFO = 2,
    SN_LOG_DEBUG = 3
} sn_log_level;

/*
 * The table the host passes to create(). It and every string it returns stay valid until
 * destroy() returns, so an instance may keep the pointer. Every function is non-NULL.
 *
 * Configuration is the plugin's JSON object from the model manifest (or --config on the
 * command line). Look-ups take a top-level key and return SN_PLUGIN_OK, SN_PLUGIN_ERR_NOT_FOUND
 * when the key is absent (use your default), or SN_PLUGIN_ERR_CONFIG when the value has the
 * wrong type; in that case *out is untouched and the host has written the reason to err
 * (err may be NULL). Integers are accepted where floats are asked for, not the reverse.
 */
typedef struct sn_host {
    uint32_t struct_size;
    uint16_t abi_major, abi_minor;
    void *ctx; /* the host's; pass the table itself to each function */

    /* A message for the user, shown with the plugin's name. printf-style. */
    void (*log)(const struct sn_host *host, sn_log_level level, const char *fmt, ...);

    sn_plugin_status (*config_int)(const struct sn_host *host, const char *key, int64_t *out,
                                   sn_plugin_error *err);
    sn_plugin_status (*config_float)(const struct sn_host *host, const char *key, double *out,
                                     sn_plugin_error *err);
    sn_plugin_status (*config_bool)(const struct sn_host *host, const char *key, int *out,
                                    sn_plugin_error *err);
    /* *out points into host memory, NUL-terminated, valid until destroy(). */
    sn_plugin_status (*config_string)(const struct sn_host *host, const char *key,
                                      const char **out, sn_plugin_error *err);
    /*
     * Arrays: *n receives the array's length; up to cap elements are written to out (out may
     * be NULL when cap is 0, to ask for the length first). Every element must have the type
     * asked for, or the call fails with SN_PLUGIN_ERR_CONFIG naming the bad index.
     */
    sn_plugin_status (*config_int_array)(const struct sn_host *host, const char *key,
                                         int64_t *out, size_t cap, size_t *n,
                                         sn_plugin_error *err);
    sn_plugin_status (*config_float_array)(const struct sn_host *host, const char *key,
                                           double *out, size_t cap, size_t *n,
                                           sn_plugin_error *err);
    sn_plugin_status (*config_string_array)(const struct sn_host *host, const char *key,
                                            const char **out, size_t cap, size_t *n,
                                            sn_plugin_error *err);
    /* The i-th top-level key of the configuration, or NULL past the last: lets a plugin
     * reject keys it does not know (a misspelt key should be an error, not a silent default). */
    const char *(*config_key)(const struct sn_host *host, size_t i);

    /* The model's data directory (codebooks and other files a plugin loads), without a
     * trailing slash; NULL when the plugin runs without a model. */
    const char *(*data_dir)(const struct sn_host *host);
} sn_host;

/* ---------------------------------------------------------------------------------------- */
/* The descriptor                                                                           */
/* ---------------------------------------------------------------------------------------- */

#define SN_PLUGIN_TOKENIZER 1u /* encodes media into tokens */
#define SN_PLUGIN_DECODER 2u   /* decodes tokens into actions */

/* Opaque to the host: a plugin defines these structs as it likes. */
typedef struct sn_instance sn_instance;
typedef struct sn_stream sn_stream;

typedef struct sn_plugin_desc {
    /* sizeof(sn_plugin_desc) as the plugin was compiled; at least SN_PLUGIN_DESC_V1_SIZE. */
    uint32_t struct_size;
    uint16_t abi_major; /* SN_PLUGIN_ABI_MAJOR */
    uint16_t abi_minor; /* SN_PLUGIN_ABI_MINOR */

    /* Unique across all loaded plugins: "family.variant", e.g. "audio.mulaw". Required. */
    const char *name;
    const char *version;     /* free-form, e.g. "1.0.0". Required. */
    const char *description; /* one line for `sensorium plugins`; NULL: none. */
    uint32_t kind;           /* SN_PLUGIN_TOKENIZER and/or SN_PLUGIN_DECODER; non-zero */
    uint32_t media_kinds;    /* tokenizers: OR of SN_MEDIA_BIT(kind) accepted by encode */

    /* --- lifecycle: all required -------------------------------------------------------- */

    /* Once per engine. Read the configuration through host (and keep host if you need it
     * later), validate it, load files from host->data_dir(host), and set *out. On failure
     * return a status, write why to err, and leave nothing allocated. */
    sn_plugin_status (*create)(const sn_host *host, sn_instance **out, sn_plugin_error *err);
    /* Frees everything of the instance. Called after every stream is closed. */
    void (*destroy)(sn_instance *instance);
    /* The number of local ids this plugin uses (its range in the model's vocabulary). Fixed
     * for the instance's lifetime; must be > 0. */
    uint32_t (*vocab_size)(const sn_instance *instance);
    /* One stream per session: the state a live feed or a generated segment needs between
     * calls. A stream of a plugin that is both tokenizer and decoder keeps both directions'
     * state apart; they never interfere. */
    sn_plugin_status (*open_stream)(sn_instance *instance, sn_stream **out,
                                    sn_plugin_error *err);
    void (*close_stream)(sn_stream *stream);

    /* --- tokenizer: encode required when kind has SN_PLUGIN_TOKENIZER ------------------- */

    /* Tokenize one chunk. Chunks of one stimulus arrive in order; feeding a stimulus in any
     * chunking must give the same ids as feeding it whole (keep partial frames in the
     * stream). Emit ids as soon as they are final. The host passes only media kinds in
     * media_kinds; a malformed chunk (wrong shape, values the plugin cannot take) is
     * SN_PLUGIN_ERR_INVALID with a message. After any failed call the host treats the
     * stimulus as ended: reset the encoder, so that the next call starts afresh. */
    sn_plugin_status (*encode)(sn_stream *stream, const sn_media *media,
                               const sn_token_sink *sink, sn_plugin_error *err);
    /* The stimulus has ended: emit what is still held and reset the encoder for the next
     * stimulus. Optional; NULL means nothing is ever held back. */
    sn_plugin_status (*encode_flush)(sn_stream *stream, const sn_token_sink *sink,
                                     sn_plugin_error *err);

    /* --- decoder: decode required when kind has SN_PLUGIN_DECODER ----------------------- */

    /* Decode the next ids of a segment (local ids, each < vocab_size; the host guarantees
     * the range). t is the stream time of the first id. Emit events as soon as they are
     * whole; keep partial state (half a UTF-8 character, 3 of 7 joints) in the stream. */
    sn_plugin_status (*decode)(sn_stream *stream, const int32_t *ids, size_t n, double t,
                               const sn_action_sink *sink, sn_plugin_error *err);
    /* The segment has ended: emit or resolve what is held and reset for the next segment.
     * Events emitted here carry the t of the latest decode call. After any failed decode
     * call the host treats the segment as ended: reset the decoder likewise. Optional; NULL
     * means nothing is ever held back. */
    sn_plugin_status (*decode_flush)(sn_stream *stream, const sn_action_sink *sink,
                                     sn_plugin_error *err);
    /*
     * Constrained generation. Given the local ids of the segment so far (n of them), say
     * which local id may come next. On entry allowed holds vocab_size bits, all set (bit i is
     * allowed[i / 64] >> (i % 64) & 1), and *may_end is 1 (the segment may end here); clear
     * what must not follow. Leaving no id allowed and *may_end 0 is a plugin error. Must not
     * change the stream's state: the host may call it speculatively. Optional; NULL means
     * every id may follow and the segment may end anywhere.
     */
    sn_plugin_status (*constrain)(sn_stream *stream, const int32_t *segment, size_t n,
                                  uint64_t *allowed, int *may_end, sn_plugin_error *err);

    /* --- since ABI 1.1 ------------------------------------------------------------------ */

    /*
     * Learns from data what the plugin needs beyond its configuration (a codebook, value
     * ranges) and writes it to out_path, the file a later create() loads from the model's
     * data directory (`sensorium fit`). Called without an instance: read the configuration
     * through host, as create() does. data holds n whole stimuli (never chunks). Must be
     * deterministic for the same data and configuration (fixed seeds). Report progress of
     * long work through host->log at SN_LOG_INFO, say every few seconds. Optional; NULL means
     * the plugin needs no fitting.
     */
    sn_plugin_status (*fit)(const sn_host *host, const sn_media *data, size_t n,
                            const char *out_path, sn_plugin_error *err);
} sn_plugin_desc;

/* The size of the version 1.0 descriptor, the smallest the host accepts. A 1.0 plugin's
 * descriptor ends after constrain, and the host reads fit as NULL for it. */
#define SN_PLUGIN_DESC_V1_SIZE \
    (offsetof(sn_plugin_desc, constrain) + sizeof(((sn_plugin_desc *)0)->constrain))

/*
 * The entry point. Each plugin file defines it once:
 *
 *     SN_PLUGIN_ENTRY(index) { return index == 0 ? &my_desc : NULL; }
 *
 * The host calls it with index 0, 1, 2, ... until it returns NULL, so one file may hold
 * several plugins (a tokenizer and its matching decoder, say). Returned descriptors must stay
 * valid while the file is loaded (use static storage).
 */
typedef const sn_plugin_desc *(*sn_plugin_entry_fn)(uint32_t index);

/* Declared here so that plugins build cleanly with -Wmissing-prototypes. */
#ifdef __cplusplus
extern "C" SN_PLUGIN_EXPORT const sn_plugin_desc *sn_plugin_entry(uint32_t index);
#else
SN_PLUGIN_EXPORT const sn_plugin_desc *sn_plugin_entry(uint32_t index);
#endif

#ifdef __cplusplus
#define SN_PLUGIN_ENTRY(index_param) \
    extern "C" SN_PLUGIN_EXPORT const sn_plugin_desc *sn_plugin_entry(uint32_t index_param)
#else
#define SN_PLUGIN_ENTRY(index_param) \
    SN_PLUGIN_EXPORT const sn_plugin_desc *sn_plugin_entry(uint32_t index_param)
#endif

#ifdef __cplusplus
}
#endif

#endif /* SENSORIUM_PLUGIN_H */

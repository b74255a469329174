/*
 * sensorium/sensorium.h - the Sensorium engine API.
 *
 * What a program (the `sensorium` CLI, a benchmark, a Python script through ctypes) uses to
 * load plugins, read and write stimuli, turn them into tokens and tokens back into actions,
 * and read a model's vocabulary layout. The plugin side of the contract is plugin.h.
 *
 * Conventions. Functions return an sn_status; on failure the calling thread's last-error
 * message (sn_errmsg) says what went wrong and where, in one line. Handles are opaque; each
 * *_open has a *_close that accepts NULL. The library never prints and never exits. Strings
 * the library returns stay valid until the handle they came from is closed.
 *
 * Threads. Distinct handles may be used from distinct threads at once; one handle is used
 * from one thread at a time. sn_plugins and sn_vocab are read-only after opening and may be
 * shared by any number of threads.
 */
#ifndef SENSORIUM_H
#define SENSORIUM_H

#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SN_API __declspec(dllexport)
#else
#define SN_API __attribute__((visibility("default")))
#endif

#define SN_VERSION "0.1.0"

/* ---------------------------------------------------------------------------------------- */
/* Status and errors                                                                        */
/* ---------------------------------------------------------------------------------------- */

/* Append-only; values are never renumbered. */
typedef enum sn_status {
    SN_OK = 0,
    SN_ERR_INVALID_ARG = 1, /* a caller mistake: NULL handle, index out of range */
    SN_ERR_NOMEM = 2,       /* out of memory */
    SN_ERR_IO = 3,          /* a file could not be opened, read or written */
    SN_ERR_FORMAT = 4,      /* a file is malformed or corrupted */
    SN_ERR_UNSUPPORTED = 5, /* a well-formed input this build does not handle */
    SN_ERR_NOT_FOUND = 6,   /* no such plugin, file or entry */
    SN_ERR_PLUGIN = 7,      /* a plugin failed; the message carries its own */
    SN_ERR_CONFIG = 8,      /* a configuration (manifest, --config) is wrong */
    SN_ERR_VOCAB = 9,       /* the vocabulary layout is inconsistent */
    SN_ERR_INTERNAL = 10    /* a bug in Sensorium */
} sn_status;

/* A short name for any status ("format error"); never NULL. */
SN_API const char *sn_status_str(sn_status status);

/* The one-line message of the calling thread's last failed call; "" if none. Valid until
 * the thread's next failing call. */
SN_API const char *sn_errmsg(void);

/* The library's version, SN_VERSION as built. */
SN_API const char *sn_version(void);

/* Frees memory the library handed out (token arrays). Accepts NULL. */
SN_API void sn_free(void *p);

/* Receives what plugins log through their host table (source: the plugin's name). The
 * library prints nothing itself: without a handler, log messages are discarded. The
 * handler may be called from any thread. Pass NULL to remove it. */
typedef void (*sn_log_fn)(void *ctx, sn_log_level level, const char *source,
                          const char *message);
SN_API void sn_set_log_handler(sn_log_fn fn, void *ctx);

/* ---------------------------------------------------------------------------------------- */
/* Media files                                                                              */
/* ---------------------------------------------------------------------------------------- */

/*
 * Reads a stimulus, choosing the reader by the file's content:
 *   audio  - WAV, FLAC, Ogg and whatever else libsndfile reads; mixed down to mono float32,
 *            the sample rate kept;
 *   image  - PNG (any bit depth, reduced to 8 bits; gray, gray+alpha, RGB, RGBA) and PPM/PGM
 *            (P2, P3, P5, P6);
 *   series - NPY arrays of floats or integers, shape (ticks,) or (ticks, dims), as float32;
 *   text   - anything else that is valid UTF-8.
 * On success *out owns its buffer (release with sn_media_release); media t is 0. Empty,
 * truncated and corrupted files are SN_ERR_FORMAT with a message saying what is wrong.
 */
SN_API sn_status sn_media_read(const char *path, sn_media *out);

/* Frees the buffer of media filled by sn_media_read and zeroes it. Accepts NULL. */
SN_API void sn_media_release(sn_media *media);

/*
 * Writes media, choosing the format by the path's extension: audio to .wav (16-bit PCM,
 * clipped to [-1, 1]), image to .png, series to .npy (float32, shape (ticks, dims)), text to
 * any other name (raw UTF-8). A kind the extension cannot hold is SN_ERR_UNSUPPORTED.
 */
SN_API sn_status sn_media_write(const char *path, const sn_media *media);

/* The lower-case name of a media kind ("audio"), or "unknown". */
SN_API const char *sn_media_kind_name(sn_media_kind kind);

/* Reads an NPY array of integers (any integer dtype, any shape, flattened in C order) as
 * token ids. *ids is freed with sn_free. Values outside int32 are SN_ERR_FORMAT. */
SN_API sn_status sn_tokens_read_npy(const char *path, int32_t **ids, size_t *n);

/* Writes token ids as a 1-D int32 NPY array. */
SN_API sn_status sn_tokens_write_npy(const char *path, const int32_t *ids, size_t n);

/* ---------------------------------------------------------------------------------------- */
/* Plugins                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct sn_plugins sn_plugins;

/* Flags for sn_plugins_open. */
#define SN_PLUGINS_NO_ENV 1u     /* ignore SENSORIUM_PLUGIN_PATH */
#define SN_PLUGINS_NO_DEFAULT 2u /* ignore the build's plugin folder */

typedef struct sn_plugin_info {
    const char *name;
    const char *version;
    const char *description; /* "" when the plugin gives none */
    const char *file;        /* the shared object it came from */
    uint32_t kind;           /* SN_PLUGIN_TOKENIZER | SN_PLUGIN_DECODER */
    uint32_t media_kinds;    /* OR of SN_MEDIA_BIT(kind) */
    uint32_t abi_major, abi_minor;
} sn_plugin_info;

/*
 * Finds and loads every plugin, in this order: the entries of search_path (colon-separated
 * folders or .so files; NULL for none), then those of SENSORIUM_PLUGIN_PATH, then the build's
 * plugin folder. Folders are scanned (not recursively) for *.so files in name order. When two
 * files provide the same plugin name the first wins and the second is reported.
 *
 * A file that fails (not a shared object, no entry symbol, wrong ABI major, descriptor too
 * small, a required function NULL, duplicate name) does not fail the call: it is recorded as
 * one line "FILE: reason" in the error list and the other plugins load. Fails only when out
 * of memory.
 */
SN_API sn_status sn_plugins_open(const char *search_path, uint32_t flags, sn_plugins **out);
SN_API void sn_plugins_close(sn_plugins *plugins);

SN_API size_t sn_plugins_count(const sn_plugins *plugins);
SN_API sn_status sn_plugins_get(const sn_plugins *plugins, size_t i, sn_plugin_info *out);
/* The index of the plugin with this name, or -1. */
SN_API long sn_plugins_find(const sn_plugins *plugins, const char *name);

/* The files that failed to load, one line each ("FILE: reason"). */
SN_API size_t sn_plugins_error_count(const sn_plugins *plugins);
SN_API const char *sn_plugins_error(const sn_plugins *plugins, size_t i);

/* ---------------------------------------------------------------------------------------- */
/* Codecs: one plugin instance with one stream, for tokenizing and detokenizing directly    */
/* ---------------------------------------------------------------------------------------- */

typedef struct sn_codec sn_codec;

/* A growable array of token ids; zero-initialise, append with the codec calls, free with
 * sn_tokens_clear. */
typedef struct sn_tokens {
    int32_t *ids;
    size_t n, cap;
} sn_tokens;

SN_API void sn_tokens_clear(sn_tokens *tokens);

/* Called for each decoded action; the action's pointers are valid during the call only.
 * Return 0 to go on, anything else to stop (the decode call then fails with SN_ERR_PLUGIN). */
typedef int (*sn_action_fn)(void *ctx, const sn_action *action);

/*
 * Creates an instance of the named plugin with a JSON configuration object (NULL or "" for
 * {}) and a data directory (NULL for none), and opens one stream on it. A create that fails
 * is SN_ERR_PLUGIN with the plugin's own message.
 */
SN_API sn_status sn_codec_open(const sn_plugins *plugins, const char *name,
                               const char *config_json, const char *data_dir, sn_codec **out);
SN_API void sn_codec_close(sn_codec *codec);

SN_API uint32_t sn_codec_vocab_size(const sn_codec *codec);
SN_API const sn_plugin_info *sn_codec_info(const sn_codec *codec);

/* Appends the local ids of one chunk (encode) or of what the plugin still held (flush). */
SN_API sn_status sn_codec_encode(sn_codec *codec, const sn_media *media, sn_tokens *out);
SN_API sn_status sn_codec_encode_flush(sn_codec *codec, sn_tokens *out);

/* Decodes local ids (each checked against the vocabulary size) into actions. */
SN_API sn_status sn_codec_decode(sn_codec *codec, const int32_t *ids, size_t n, double t,
                                 sn_action_fn fn, void *ctx);
SN_API sn_status sn_codec_decode_flush(sn_codec *codec, sn_action_fn fn, void *ctx);

/* The plugin's constraint on the next id of a segment (see plugin.h); allowed holds
 * (vocab_size + 63) / 64 words and is filled by the call. */
SN_API sn_status sn_codec_constrain(sn_codec *codec, const int32_t *segment, size_t n,
                                    uint64_t *allowed, int *may_end);

/*
 * Fits what the named plugin learns from data (a codebook, value ranges) on n whole stimuli
 * and writes it to out_path, for the plugin to load later from the model's data directory.
 * Progress arrives through the log handler. A plugin without a fit function is
 * SN_ERR_UNSUPPORTED.
 */
SN_API sn_status sn_fit(const sn_plugins *plugins, const char *name, const char *config_json,
                        const sn_media *data, size_t n, const char *out_path);

/* ---------------------------------------------------------------------------------------- */
/* Vocabulary layout                                                                        */
/* ---------------------------------------------------------------------------------------- */

typedef struct sn_vocab sn_vocab;

/* What a global id is. */
typedef enum sn_token_role {
    SN_TOKEN_UNUSED = 0, /* in no range: never sampled */
    SN_TOKEN_PLUGIN = 1, /* a plugin's token */
    SN_TOKEN_BOS = 2,
    SN_TOKEN_EOS = 3,
    SN_TOKEN_PAD = 4,
    SN_TOKEN_BEGIN = 5, /* <begin:M> */
    SN_TOKEN_END = 6    /* <end:M> */
} sn_token_role;

typedef struct sn_token_info {
    sn_token_role role;
    int32_t segment; /* the layout entry (PLUGIN, BEGIN, END); -1 otherwise */
    int32_t local;   /* the plugin's local id (PLUGIN); -1 otherwise */
} sn_token_info;

/* One entry of the layout: a modality, its plugin and its id range. */
typedef struct sn_vocab_segment {
    const char *modality;    /* unique name, e.g. "text" */
    const char *plugin;      /* plugin name */
    const char *config_json; /* the plugin's configuration, compact JSON */
    uint32_t start, size;    /* global ids start .. start+size-1 */
    int32_t begin, end;      /* the marker ids; -1 for an open segment (see sn_vocab_open) */
} sn_vocab_segment;

/*
 * Reads the layout from MODEL_DIR/sensorium.json, creates each segment's plugin with its
 * configuration (data directory: MODEL_DIR) and checks the layout: ranges and markers inside
 * the vocabulary and disjoint, each plugin known and its vocab_size equal to its range.
 * Errors name the entry (vocab.segments[2] ...), or the line and column of malformed JSON.
 *
 * MODEL_DIR may also be a GGUF language model: its layout is one open "text" segment (no
 * markers) over the whole vocabulary, tokenized by the text.bpe plugin from the file's own
 * tokenizer, with the file's eos and every other control token as ids that end generation.
 * A segment without markers is open: generated without them, and special ids may lie in
 * its range (a language model's control tokens, which its tokenizer never produces).
 */
SN_API sn_status sn_vocab_open(const char *model_dir, const sn_plugins *plugins,
                               sn_vocab **out);
SN_API void sn_vocab_close(sn_vocab *vocab);

SN_API uint32_t sn_vocab_size(const sn_vocab *vocab);
SN_API size_t sn_vocab_segment_count(const sn_vocab *vocab);
SN_API sn_status sn_vocab_segment_get(const sn_vocab *vocab, size_t i, sn_vocab_segment *out);
/* The segment of a modality, or -1. */
SN_API long sn_vocab_find(const sn_vocab *vocab, const char *modality);
/* The id of BOS, EOS or PAD, or -1 when the layout has none. */
SN_API int32_t sn_vocab_special(const sn_vocab *vocab, sn_token_role role);

/* Global -> role and local id, in constant time. Ids outside the vocabulary are UNUSED. */
SN_API sn_token_info sn_vocab_lookup(const sn_vocab *vocab, int32_t global_id);
/* Local id of a segment -> global id, or -1 when out of range. */
SN_API int32_t sn_vocab_global(const sn_vocab *vocab, size_t segment, int32_t local_id);


/* ---------------------------------------------------------------------------------------- */
/* Engine and sessions                                                                      */
/* ---------------------------------------------------------------------------------------- */

/*
 * An engine holds one model, its plugins and a compute backend, and runs the token streams
 * of many sessions at once: each sn_engine_step packs the pending tokens of every session
 * (decode tokens first, then chunks of prompts) into one batch under a token budget, runs the
 * model once, and samples the next token of each generating session. Sessions may join, be
 * fed and leave between steps. One engine is driven from one thread.
 */
typedef struct sn_engine sn_engine;
typedef struct sn_session sn_session;

typedef struct sn_engine_opts {
    const char *model_dir;    /* a Sensorium model folder or a Hugging Face folder; required */
    const char *plugin_path;  /* extra plugin search path (as --plugin-path); NULL: none */
    const char *backend;      /* "auto", "cpu" or "cuda"; NULL: "auto" */
    int32_t threads;          /* CPU threads; 0: all cores */
    int32_t tp;               /* tensor-parallel shards; 0 or 1: none */
    size_t kv_bytes;          /* KV-cache budget in bytes; 0: a full context per session */
    int32_t max_sessions;     /* sessions open at once; 0: 16 */
    int32_t max_batch_tokens; /* tokens per step; 0: 256 */
    int keep_logits;          /* nonzero: sessions keep their latest logits (sn_session_logits) */
    int32_t dp;               /* data-parallel replicas, each with its own weights and KV pool
                                 of kv_bytes (GPU backends: replica r on GPUs r*tp...), sessions
                                 spread over them; 0 or 1: none */
} sn_engine_opts;

/* Sampling parameters; temperature 0 is greedy. */
typedef struct sn_sampling_params {
    float temperature;        /* 0: greedy */
    int32_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
} sn_sampling_params;

/* Why a generation ended. */
typedef enum sn_stop_reason {
    SN_STOP_NONE = 0,       /* still generating */
    SN_STOP_EOS = 1,        /* the model emitted EOS */
    SN_STOP_MAX_TOKENS = 2, /* max_tokens reached */
    SN_STOP_SEGMENTS = 3,   /* the requested number of segments was generated */
    SN_STOP_ERROR = 4,      /* a plugin failed or a dead end; see the session's error */
    SN_STOP_CALLER = 5      /* the on_action callback asked to stop */
} sn_stop_reason;

typedef struct sn_session_callbacks {
    void *ctx;
    /* Every sampled token (global id); may be NULL. */
    void (*on_token)(void *ctx, sn_session *session, int32_t token);
    /* Every action a decoder emits, with the modality of its segment; may be NULL. Return
     * nonzero to stop the session's generation. */
    int (*on_action)(void *ctx, sn_session *session, const char *modality, const sn_action *action);
    /* The generation ended; may be NULL. */
    void (*on_stop)(void *ctx, sn_session *session, sn_stop_reason reason);
} sn_session_callbacks;

typedef struct sn_session_opts {
    uint64_t seed;               /* the session's Philox seed */
    sn_sampling_params sampling; /* the default for every modality */
    sn_session_callbacks callbacks;
    int no_bos;                  /* nonzero: do not start the context with BOS */
} sn_session_opts;

SN_API sn_engine_opts sn_engine_opts_default(void);
SN_API sn_sampling_params sn_sampling_params_default(void);
SN_API sn_session_opts sn_session_opts_default(void);

SN_API sn_status sn_engine_open(const sn_engine_opts *opts, sn_engine **out);
SN_API void sn_engine_close(sn_engine *engine);

/* The model's vocabulary layout (NULL for a model without one: raw tokens only), plugins
 * and a one-line description of the model and backend. */
SN_API const sn_vocab *sn_engine_vocab(const sn_engine *engine);
SN_API const sn_plugins *sn_engine_plugins(const sn_engine *engine);
SN_API const char *sn_engine_describe(const sn_engine *engine);

/* One batched step over every session with work. *n_tokens (may be NULL) receives how many
 * tokens the step processed (0: idle). A failing session stops with SN_STOP_ERROR without
 * failing the step; the step fails only for engine-wide errors. */
SN_API sn_status sn_engine_step(sn_engine *engine, int32_t *n_tokens);
/* Steps until no session has work. */
SN_API sn_status sn_engine_run(sn_engine *engine);

SN_API sn_status sn_session_open(sn_engine *engine, const sn_session_opts *opts, sn_session **out);
/* Ends the session and returns its KV blocks. Accepts NULL. */
SN_API void sn_session_close(sn_session *session);

/* Sampling parameters for tokens inside segments of one output modality. */
SN_API sn_status sn_session_set_sampling(sn_session *session, const char *modality,
                                         const sn_sampling_params *params);

/* Appends a stimulus as a segment <begin:M> tokens <end:M>, tokenized by modality M's plugin
 * at once. May be called between steps, also while generating (a live feed). */
SN_API sn_status sn_session_feed(sn_session *session, const char *modality, const sn_media *media);
/* Appends raw global ids, for checking against other implementations. */
SN_API sn_status sn_session_feed_tokens(sn_session *session, const int32_t *ids, size_t n);

/*
 * Asks for up to max_tokens generated tokens. modalities lists the output modalities
 * allowed (n of them): outside a segment only their begin markers and EOS may be sampled;
 * inside segment M only M's ids the plugin allows next, and <end:M> when the plugin lets the
 * segment end. modalities NULL with n 0 samples raw ids with no constraint. max_segments > 0
 * stops after that many segments.
 */
SN_API sn_status sn_session_generate(sn_session *session, const char *const *modalities,
                                     size_t n, int32_t max_tokens, int32_t max_segments);

/* Whether the session still has tokens to process or generate. */
SN_API int sn_session_busy(const sn_session *session);
SN_API sn_stop_reason sn_session_stop_reason(const sn_session *session);
/* The session's last error message ("" if none). */
SN_API const char *sn_session_error(const sn_session *session);
/* The session's tokens so far (the context, fed and generated). */
SN_API const int32_t *sn_session_tokens(const sn_session *session, size_t *n);
/* The logits of the session's latest position (engines opened with keep_logits). */
SN_API const float *sn_session_logits(const sn_session *session, int32_t *vocab_size);

/* ---------------------------------------------------------------------------------------- */
/* Chat templates                                                                           */
/* ---------------------------------------------------------------------------------------- */

/*
 * A GGUF model's chat template (tokenizer.chat_template), recognised by family and rendered
 * in C: a turn is fed to a session as the template's control tokens (raw ids) and the text
 * between them (through the "text" modality, so the model's own tokenizer splits it).
 *   chatml (<|im_start|>: SmolLM2, Qwen): <|im_start|>ROLE\nCONTENT<|im_end|>\n per message,
 *          then <|im_start|>assistant\n; the template's own default system prompt is used
 *          when it inserts one and none is given;
 *   llama3 (<|start_header_id|>): <|begin_of_text|>, then
 *          <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> per message, then
 *          the assistant header.
 * Any other template is SN_ERR_UNSUPPORTED naming it: this is not a Jinja engine.
 */
typedef struct sn_chat sn_chat;

SN_API sn_status sn_chat_open(const char *gguf_path, sn_chat **out);
SN_API void sn_chat_close(sn_chat *chat);
/* "chatml" or "llama3". */
SN_API const char *sn_chat_family(const sn_chat *chat);
/* Feeds one turn: the system prompt when first is set (system, else the template's default,
 * else none), the user's text, and the assistant header; then generate "text". */
SN_API sn_status sn_chat_feed_turn(const sn_chat *chat, sn_session *session, const char *system,
                                   const char *user, int first);

#ifdef __cplusplus
}
#endif

#endif /* SENSORIUM_H */

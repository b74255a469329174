/*
 * extend.h - `sensorium extend`: adds plugins' id ranges (each with its begin and end marker)
 * to an existing model's vocabulary and writes a new model package whose embedding (and
 * output head, when untied) has a row for every new id, ready to be fine-tuned elsewhere.
 *
 * Stage of the pipeline: beside loading, offline. It reads a model the way model_loader.c
 * does (sensorium.json or a Hugging Face folder, safetensors weights), creates each added
 * plugin through the plugin host to learn its vocabulary size, and writes sensorium.json,
 * config.json and model.safetensors (safetensors.c's writer) into a fresh folder. Nothing
 * here runs the model.
 *
 * New rows are drawn from N(mean, covariance) of the existing rows of the same matrix
 * (Hewitt, "Initializing new word embeddings for pretrained language models", 2021): the
 * moments are computed in double precision, the covariance factored by Cholesky (with a small
 * diagonal jitter, reported in a log line, when it is not positive definite), and the draws
 * come from a seeded generator, so a seed gives the same bytes on the same machine.
 */
#ifndef SN_EXTEND_H
#define SN_EXTEND_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* One plugin to add: a new modality name, the plugin, its configuration. */
typedef struct sn_extend_add {
    const char *modality;
    const char *plugin;
    const char *config_json; /* a JSON object; NULL or "" for {} */
} sn_extend_add;

/* Where an added plugin landed: markers, then its ids. */
typedef struct sn_extend_range {
    int32_t begin, end;   /* the marker ids */
    uint32_t start, size; /* the plugin's ids start .. start+size-1 */
} sn_extend_range;

typedef struct sn_extend_opts {
    const char *model_dir;     /* a Sensorium package or a Hugging Face folder; required */
    const char *out_dir;       /* must not exist, or be empty, or force; required */
    const sn_extend_add *adds; /* (n_adds) at least one, appended in this order */
    size_t n_adds;
    const char *data_dir;      /* where the added plugins find their data files; NULL: model_dir */
    uint64_t seed;             /* of the new rows */
    int force;                 /* nonzero: write into a non-empty out_dir */
    /* Called after each tensor is written (done of total); may be NULL. */
    void (*progress)(void *ctx, size_t done, size_t total);
    void *progress_ctx;
} sn_extend_opts;

/*
 * Extends the model in opts->model_dir by opts->adds and writes the result to opts->out_dir:
 *   - sensorium.json: the source manifest with architecture.vocab_size grown, weights
 *     "model.safetensors" and, for each add, a segment whose begin marker, end marker and
 *     range follow the current vocabulary in that order. A Hugging Face folder gets a layout
 *     made from config.json's eos_token_id (its other ids when a list: "stop"), bos_token_id
 *     and pad_token_id, in which a tokenizer.json's ids are an open "text" segment of plugin
 *     text.bpe (no markers) and, without one, the existing ids stay raw, outside any segment;
 *   - config.json: the architecture, for Hugging Face tools;
 *   - model.safetensors: every tensor of the source, byte for byte, except the embedding and
 *     an untied lm_head, which gain the new rows (in their own dtype); a tied model's stored
 *     copy of the head is dropped (a log line says so);
 *   - the data files the segments' configurations name by relative path, and PLUGIN.npy
 *     (the reference plugins' default), from the model folder (existing segments) or
 *     data_dir (added ones), and the Hugging Face tokenizer and generation files present.
 * The package is built in a hidden folder beside out_dir, checked (the layout opens with
 * sn_vocab_open, the model with sn_model_open) and only then renamed into place; on failure
 * nothing is left behind. A bad configuration fails with the plugin's own message.
 * ranges (n_adds entries, may be NULL) receives where each add landed.
 */
sn_status sn_extend(const sn_plugins *plugins, const sn_extend_opts *opts, sn_extend_range *ranges);

#endif /* SN_EXTEND_H */

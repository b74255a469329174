/*
 * dataset.h - `sensorium dataset`: episodes (stimulus files and target actions, listed in a
 * JSON-lines manifest) turned into training sequences with a model package's own plugins
 * and layout, so that training and inference see the same tokens.
 *
 * The manifest, one episode per line:
 *   {"id": "train-00042", "split": "train",
 *    "feeds":   [{"modality": "audio", "file": "audio/train-00042.wav"},
 *                {"modality": "imu", "file": "imu/train-00042.npy"}],
 *    "targets": [{"modality": "action", "text": "raise_left_hand"},
 *                {"modality": "joints", "values": [[-3.1, 12.4]]}],
 *    "meta": {...}}                                          (ignored)
 * A feed or target is {"file": PATH} (any media file sensorium reads; relative to the
 * manifest's folder), {"text": STRING} or {"values": [[...], ...]} (a series, ticks x dims).
 *
 * A sequence is [bos] <feeds as segments> <targets as segments> eos, each segment encoded by
 * sn_vocab_encode_segment on a fresh stream (as a new session would), and the loss mask is 1
 * on the targets' tokens (markers included) and the eos: the model learns to answer, not to
 * predict its stimuli. With json_modality set, the targets are instead written as one JSON
 * function call, {"name": ACTION, "arguments": {MODALITY: [values...], ...}}, fed as text to
 * that modality: the text baseline the action tokens are compared with.
 *
 * Output, for OUT: OUT.tokens.npy (int32, every sequence end to end), OUT.mask.npy (int32,
 * 0/1 per token) and OUT.offsets.npy (int32, n_sequences + 1: sequence i is
 * [offsets[i], offsets[i+1])).
 */
#ifndef SN_DATASET_H
#define SN_DATASET_H

#include "internal.h"

typedef struct sn_dataset_opts {
    const char *model_dir;     /* a package with a vocabulary layout (weights not needed) */
    const sn_plugins *plugins;
    const char *manifest;      /* the episodes, JSON lines */
    const char *split;         /* only episodes of this split; NULL: all */
    const char *out;           /* the output prefix */
    const char *json_modality; /* NULL, or the text modality for the JSON baseline */
    /* progress: episodes done of total, called every 100 episodes and at the end */
    void (*progress)(void *ctx, size_t done, size_t total);
    void *progress_ctx;
} sn_dataset_opts;

typedef struct sn_dataset_stats {
    size_t episodes, tokens, target_tokens, longest;
} sn_dataset_stats;

/* Builds the dataset; errors name the manifest line and what is wrong with it. */
sn_status sn_dataset_build(const sn_dataset_opts *opts, sn_dataset_stats *stats);

#endif /* SN_DATASET_H */

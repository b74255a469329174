/*
 * vocab_impl.h - what the engine needs of a vocabulary layout beyond the public API: the
 * plugin instance each segment created from its configuration.
 */
#ifndef SN_VOCAB_IMPL_H
#define SN_VOCAB_IMPL_H

#include "plugin_impl.h"

/* The instance of segment i's plugin, created by sn_vocab_open; owned by the vocabulary. */
sn_plugin_instance *sn_vocab_instance(const sn_vocab *vocab, size_t i);

/* Tokenizes media with segment seg's plugin on stream (encode, then flush) and appends
 * <begin:M> ids <end:M> to out as global ids (no markers for an open segment). The one place
 * stimuli become a model's tokens: sessions and `sensorium dataset` both come here, so
 * training data and inference see the same tokens. */
sn_status sn_vocab_encode_segment(const sn_vocab *vocab, size_t seg, sn_stream *stream, const sn_media *media,
                                  sn_tokens *out);

/* The ids that end generation: eos first, then the manifest's "stop" ids. */
const int32_t *sn_vocab_stops(const sn_vocab *vocab, size_t *n);

/* The segment without markers (generated without them, specials inside its range), or -1. */
long sn_vocab_open_segment(const sn_vocab *vocab);

#endif /* SN_VOCAB_IMPL_H */

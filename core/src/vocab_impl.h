/*
 * vocab_impl.h - what the engine needs of a vocabulary layout beyond the public API: the
 * plugin instance each segment created from its configuration.
 */
#ifndef SN_VOCAB_IMPL_H
#define SN_VOCAB_IMPL_H

#include "plugin_impl.h"

/* The instance of segment i's plugin, created by sn_vocab_open; owned by the vocabulary. */
sn_plugin_instance *sn_vocab_instance(const sn_vocab *vocab, size_t i);

#endif /* SN_VOCAB_IMPL_H */

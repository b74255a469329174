/*
 * bpe.h - the parts of the text.bpe plugin and how they meet: a loaded byte-level BPE
 * tokenizer (bpe_model, built by bpe_model.c from a Hugging Face tokenizer.json or a GGUF
 * file), the pre-tokenizer scanners that cut text into words (bpe_pretok.c), and the merge
 * loop that turns one word into token ids (bpe_model.c). text_bpe.c drives them as a stream.
 *
 * Data flow of one stimulus, the tokenizers library's own order:
 *   text --added tokens split out (two passes)--> pieces --pre-tokenizer stages--> words
 *        --GPT-2 byte-to-unicode mapping, merges by rank--> ids
 * Internal to the plugin; nothing here is ABI.
 */
#ifndef SN_BPE_H
#define SN_BPE_H

#include <stddef.h>
#include <stdint.h>

#include <sensorium/plugin.h>

/* The largest id a tokenizer may use: bounds every per-id array a file can make us allocate. */
#define BPE_MAX_ID (1u << 24)

/* ---------------------------------------------------------------------------------------- */
/* Hash maps                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Byte strings to ids, open addressing. Keys point into memory the owner keeps alive. */
typedef struct bpe_strmap {
    struct bpe_strmap_slot {
        const uint8_t *key;
        uint32_t len;
        int32_t id; /* -1: empty slot */
    } *slots;
    size_t mask; /* capacity - 1; capacity a power of two */
    size_t n;
} bpe_strmap;

/* Pairs of ids (the two halves of a merge) to the merge's rank and result. */
typedef struct bpe_pairmap {
    struct bpe_pair_slot {
        uint64_t key; /* left << 32 | right; UINT64_MAX: empty */
        uint32_t rank;
        int32_t id;
    } *slots;
    size_t mask;
    size_t n;
} bpe_pairmap;

/* ---------------------------------------------------------------------------------------- */
/* Pre-tokenizer                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* One splitting step of a pre-tokenizer, each applied to the pieces of the one before. */
typedef enum bpe_split {
    BPE_SPLIT_GPT2,       /* GPT-2's regex (ByteLevel use_regex, or a Split with it) */
    BPE_SPLIT_LLAMA3,     /* Llama 3's regex (a Split with it) */
    BPE_SPLIT_DIGITS,     /* Digits(individual_digits=true): every numeric character alone */
    BPE_SPLIT_DIGIT_RUNS  /* Digits(individual_digits=false): runs of numeric characters */
} bpe_split;

#define BPE_MAX_SPLITS 4

/* What a scanner found at a position. */
typedef enum bpe_scan_result {
    BPE_SCAN_PIECE, /* a piece that no later text can change ends at *end */
    BPE_SCAN_OPEN,  /* the piece runs at least to the end of the text given: the next stage
                       may work on that much of it (a run of non-digits, say) */
    BPE_SCAN_MORE   /* where the piece ends depends on text not given yet */
} bpe_scan_result;

/* The piece starting at i (< end) of the UTF-8 text s[0..end): end is where the text known so
 * far stops, and final says that nothing follows it. A scanner never reads s[end] or beyond;
 * when final is set it always returns BPE_SCAN_PIECE. */
bpe_scan_result bpe_scan(bpe_split split, const uint8_t *s, size_t i, size_t end, int final,
                         size_t *piece_end);

/* Whether c is White_Space (for added tokens' lstrip and rstrip). */
int bpe_is_space(uint32_t c);

/* The code point of the well-formed UTF-8 character at s, and its length in *len. */
static inline uint32_t bpe_utf8_decode(const uint8_t *s, size_t *len)
{
    uint8_t b = s[0];
    if (b < 0x80) {
        *len = 1;
        return b;
    }
    if (b < 0xE0) {
        *len = 2;
        return (uint32_t)(b & 0x1F) << 6 | (s[1] & 0x3F);
    }
    if (b < 0xF0) {
        *len = 3;
        return (uint32_t)(b & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    }
    *len = 4;
    return (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
           (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

/* ---------------------------------------------------------------------------------------- */
/* The loaded tokenizer                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Per-id flags. */
#define BPE_TOK_SPECIAL 1u /* special (tokenizer.json) or control (GGUF): never produced from
                              text, decodes to nothing */

/* A trie of added tokens for one splitting pass: leftmost-longest matching, as the library's
 * Aho-Corasick automaton does. */
typedef struct bpe_trie {
    bpe_pairmap edges; /* (node << 8 | byte) -> child node (in .id) */
    int32_t *token;    /* (n_nodes) the added token ending at the node (index into
                          bpe_model.added), or -1 */
    uint32_t *kids;    /* (n_nodes) how many edges leave the node */
    uint32_t n_nodes;
    uint8_t first[32]; /* bitset of the bytes a token can start with */
} bpe_trie;

/* The node reached from node by byte, or -1. */
int32_t bpe_trie_child(const bpe_trie *t, uint32_t node, uint8_t byte);

typedef struct bpe_added {
    int32_t id;
    uint8_t special, lstrip, rstrip;
} bpe_added;

typedef struct bpe_model {
    uint32_t vocab_size;      /* max id + 1 */
    uint8_t *flags;           /* (vocab_size) BPE_TOK_* */
    uint32_t *text_off;       /* (vocab_size + 1) each id's decoded bytes: text[off[i]..off[i+1]) */
    uint8_t *text;            /* owned; the bytes a token decodes to (empty for special) */

    int32_t byte_id[256];     /* the id of the one-byte token of each byte, or -1 */
    bpe_pairmap merges;       /* (left id, right id) -> (rank, merged id) */
    int ignore_merges;        /* a word that is a whole token is that token (Llama 3) */
    bpe_strmap words;         /* whole-word tokens, keyed by bytes; used when ignore_merges */
    int32_t unk_id;           /* id for a byte that has no token, or -1 to drop it */
    int fuse_unk;

    bpe_split splits[BPE_MAX_SPLITS];
    int n_splits;

    bpe_added *added;         /* (n_added) */
    size_t n_added;
    bpe_trie tries[2];        /* pass 1: tokens matched in the raw text; pass 2: "normalized"
                                 ones (no normalizer here, so the same text, but a second
                                 pass over what the first left, as the library does) */
    int n_tries;
    int any_lstrip;           /* some non-special added token strips spaces on its left */
} bpe_model;

/* Loads a Hugging Face tokenizer.json / the tokenizer of a GGUF file into m (zeroed by the
 * caller). On failure writes "PATH: what is wrong" to err, frees what it built, and returns
 * the status. */
sn_plugin_status bpe_model_load_json(bpe_model *m, const char *path, sn_plugin_error *err);
sn_plugin_status bpe_model_load_gguf(bpe_model *m, const char *path, sn_plugin_error *err);
void bpe_model_free(bpe_model *m);

/* Scratch memory for the merge loop, one per stream. */
typedef struct bpe_work {
    int32_t *id, *prev, *next;    /* (cap) the word's symbols as a linked list */
    uint32_t *rank;               /* (cap) rank of the pair starting at each symbol */
    struct bpe_heap_item {
        uint32_t rank, pos;
    } *heap;                      /* (heap_cap) pending merges, for long words */
    size_t cap, heap_cap;
    int32_t *out;                 /* (cap) the word's ids */
} bpe_work;

/* The ids of the word s[0..n) (n > 0) into w->out; returns how many, or -1 when out of
 * memory. Picks the lowest-ranked adjacent pair, leftmost first, until none merges: the
 * library's order exactly. */
long bpe_encode_word(const bpe_model *m, bpe_work *w, const uint8_t *s, size_t n);
void bpe_work_free(bpe_work *w);

#endif /* SN_BPE_H */

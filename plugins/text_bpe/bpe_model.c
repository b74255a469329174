/*
 * bpe_model.c - text.bpe's tokenizer as loaded: the vocabulary, the merges and the added
 * tokens of a Hugging Face tokenizer.json or of a GGUF file (tokenizer.ggml.*), checked and
 * turned into the hash maps and tries the encoder reads; and the merge loop for one word.
 *
 * Stage of the pipeline: loading (create) and the last step of encoding (see bpe.h). Both
 * formats end in one builder, so every check is made once and the error names the file.
 *
 * Byte-level BPE stores tokens as text in GPT-2's byte-to-unicode alphabet: each of the 256
 * bytes is one printable character (printable Latin-1 stands for itself, the other 68 bytes
 * for U+0100..U+0143). A word's bytes start as one symbol each; merges then join adjacent
 * symbols, lowest rank first, leftmost among equals, until no adjacent pair has a merge. That
 * is the order of the library's priority queue, so the ids are the library's.
 */
#include "bpe.h"

#include "gguf.h"
#include "plugin_util.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Words up to this many symbols merge by scanning an array; longer ones use a heap, so that a
 * megabyte without a break costs n log n, not n^2. */
#define LINEAR_MAX 64

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static sn_plugin_status fail(sn_plugin_error *err, const char *path, sn_plugin_status st,
                             const char *fmt, ...)
{
    char msg[SN_PLUGIN_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sn_plugin_error_set(err, "%s: %s", path, msg);
    return st;
}

/* A token's text for a message: quoted, control bytes escaped, cut at 60 bytes. */
typedef struct quoted {
    char s[80];
} quoted;

static quoted quote(const char *s, size_t n)
{
    quoted q;
    sn_pu_quote(q.s, sizeof q.s, s, n);
    return q;
}

/* ---------------------------------------------------------------------------------------- */
/* Hash maps                                                                                */
/* ---------------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 32);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}

/* Capacity for n entries at a load factor of at most one half. */
static size_t capacity_for(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    return cap;
}

static int strmap_init(bpe_strmap *m, size_t n)
{
    size_t cap = capacity_for(n);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return -1;
    for (size_t i = 0; i < cap; i++)
        m->slots[i].id = -1;
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

/* The id of key, or -1. */
static int32_t strmap_find(const bpe_strmap *m, const uint8_t *key, size_t len)
{
    if (!m->slots)
        return -1;
    for (size_t i = hash_bytes(key, len) & m->mask;; i = (i + 1) & m->mask) {
        const struct bpe_strmap_slot *s = &m->slots[i];
        if (s->id < 0)
            return -1;
        if (s->len == len && memcmp(s->key, key, len) == 0)
            return s->id;
    }
}

/* Adds key -> id unless key is there already; returns the id the key maps to afterwards.
 * Sized at init for every key, so it never grows. */
static int32_t strmap_add(bpe_strmap *m, const uint8_t *key, size_t len, int32_t id)
{
    for (size_t i = hash_bytes(key, len) & m->mask;; i = (i + 1) & m->mask) {
        struct bpe_strmap_slot *s = &m->slots[i];
        if (s->id < 0) {
            s->key = key;
            s->len = (uint32_t)len;
            s->id = id;
            m->n++;
            return id;
        }
        if (s->len == len && memcmp(s->key, key, len) == 0)
            return s->id;
    }
}

static int pairmap_init(bpe_pairmap *m, size_t n)
{
    size_t cap = capacity_for(n);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return -1;
    for (size_t i = 0; i < cap; i++)
        m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

static uint64_t pair_key(int32_t a, int32_t b)
{
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static const struct bpe_pair_slot *pairmap_find(const bpe_pairmap *m, uint64_t key)
{
    for (size_t i = hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
        const struct bpe_pair_slot *s = &m->slots[i];
        if (s->key == key)
            return s;
        if (s->key == UINT64_MAX)
            return NULL;
    }
}

/* Sets key -> (rank, id); a later merge of the same pair replaces the earlier one, as the
 * library's map does. Sized at init, never grows. */
static void pairmap_set(bpe_pairmap *m, uint64_t key, uint32_t rank, int32_t id)
{
    for (size_t i = hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
        struct bpe_pair_slot *s = &m->slots[i];
        if (s->key == UINT64_MAX)
            m->n++;
        if (s->key == UINT64_MAX || s->key == key) {
            s->key = key;
            s->rank = rank;
            s->id = id;
            return;
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* GPT-2's byte <-> unicode alphabet                                                        */
/* ---------------------------------------------------------------------------------------- */

#define ALPHABET_END 0x144 /* every character of the alphabet is below this */

/* byte_of[c] = the byte the alphabet's character c stands for, or -1. */
static void alphabet_init(int16_t byte_of[ALPHABET_END])
{
    for (int c = 0; c < ALPHABET_END; c++)
        byte_of[c] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        byte_of[printable ? b : 0x100 + n++] = (int16_t)b;
    }
}

/* The bytes token text s[0..n) stands for, written to out (n bytes free): the alphabet read
 * back when every character is in it, otherwise the text's own bytes (the library's
 * ByteLevel decoder does the same, for added tokens such as "<|im_start|>" or "a b").
 * Returns the length and sets *mapped. */
static size_t token_bytes(const int16_t byte_of[ALPHABET_END], const char *s, size_t n,
                          uint8_t *out, int *mapped)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = sn_pu_utf8_char_len(u + i, n - i);
        if (k == 0)
            break;
        size_t len;
        uint32_t c = bpe_utf8_decode(u + i, &len);
        if (c >= ALPHABET_END || byte_of[c] < 0)
            break;
        out[o++] = (uint8_t)byte_of[c];
        i += k;
        if (i == n) {
            *mapped = 1;
            return o;
        }
    }
    *mapped = n == 0;
    memcpy(out, s, n);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Added-token tries                                                                        */
/* ---------------------------------------------------------------------------------------- */

int32_t bpe_trie_child(const bpe_trie *t, uint32_t node, uint8_t byte)
{
    const struct bpe_pair_slot *e = pairmap_find(&t->edges, (uint64_t)node << 8 | byte);
    return e ? e->id : -1;
}

static void trie_free(bpe_trie *t)
{
    free(t->edges.slots);
    free(t->token);
    free(t->kids);
    memset(t, 0, sizeof *t);
}

/* A trie of the added tokens whose pass is `pass`; nodes number at most 1 + total bytes. */
static int trie_build(bpe_trie *t, const bpe_model *m, const uint8_t *const *content,
                      const size_t *len, const uint8_t *pass_of, int pass)
{
    size_t total = 1;
    for (size_t i = 0; i < m->n_added; i++)
        if (pass_of[i] == pass)
            total += len[i];
    if (pairmap_init(&t->edges, total) || !(t->token = malloc(total * sizeof *t->token)) ||
        !(t->kids = calloc(total, sizeof *t->kids)))
        return -1;
    t->token[0] = -1;
    t->n_nodes = 1;
    for (size_t i = 0; i < m->n_added; i++) {
        if (pass_of[i] != pass)
            continue;
        uint32_t node = 0;
        for (size_t k = 0; k < len[i]; k++) {
            uint64_t key = (uint64_t)node << 8 | content[i][k];
            const struct bpe_pair_slot *e = pairmap_find(&t->edges, key);
            if (e) {
                node = (uint32_t)e->id;
                continue;
            }
            uint32_t child = t->n_nodes++;
            t->token[child] = -1;
            pairmap_set(&t->edges, key, 0, (int32_t)child);
            t->kids[node]++;
            node = child;
        }
        t->token[node] = (int32_t)i;
        t->first[content[i][0] / 8] |= (uint8_t)(1u << (content[i][0] % 8));
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The builder both formats feed                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef struct src_token {
    const char *s;
    size_t len;
    int32_t id;
} src_token;

typedef struct src_added {
    const char *s;
    size_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
    uint8_t raw; /* GGUF user-defined: the text is the token's own bytes, not the alphabet */
} src_added;

typedef struct src_merge {
    const char *a, *b;
    size_t alen, blen;
} src_merge;

typedef struct source {
    const char *path;
    src_token *vocab;
    size_t n_vocab;
    src_added *added;
    size_t n_added;
    src_merge *merges;
    size_t n_merges;
    uint8_t *unused;     /* GGUF: (n_vocab) token type UNUSED; NULL for tokenizer.json */
    const char *unk;     /* tokenizer.json model.unk_token, or NULL */
    size_t unk_len;
} source;

static void source_free(source *src)
{
    free(src->vocab);
    free(src->added);
    free(src->merges);
    free(src->unused);
}

#define NOMEM(what) fail(err, src->path, SN_PLUGIN_ERR_NOMEM, "out of memory %s", what)

static sn_plugin_status build(bpe_model *m, const source *src, sn_plugin_error *err)
{
    sn_plugin_status st = SN_PLUGIN_OK;
    bpe_strmap by_text = {0}; /* a token's stored text -> id, for merges and checks */
    int32_t *owner = NULL;    /* (vocab_size) the vocab entry or -2 - added entry of each id */
    const uint8_t **content = NULL;
    size_t *content_len = NULL;
    uint8_t *pass_of = NULL;

    /* Ids: max + 1 of both lists, each id named once. */
    uint32_t max_id = 0;
    int any = 0;
    for (size_t i = 0; i < src->n_vocab; i++) {
        if (src->vocab[i].id < 0 || (uint32_t)src->vocab[i].id >= BPE_MAX_ID)
            return fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                        "token '%s' has id %ld, outside 0..%u",
                        quote(src->vocab[i].s, src->vocab[i].len).s, (long)src->vocab[i].id,
                        BPE_MAX_ID - 1);
        if (!any || (uint32_t)src->vocab[i].id > max_id)
            max_id = (uint32_t)src->vocab[i].id;
        any = 1;
    }
    for (size_t i = 0; i < src->n_added; i++) {
        if (src->added[i].id < 0 || (uint32_t)src->added[i].id >= BPE_MAX_ID)
            return fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                        "added token '%s' has id %ld, outside 0..%u",
                        quote(src->added[i].s, src->added[i].len).s, (long)src->added[i].id,
                        BPE_MAX_ID - 1);
        if (!any || (uint32_t)src->added[i].id > max_id)
            max_id = (uint32_t)src->added[i].id;
        any = 1;
    }
    if (!any)
        return fail(err, src->path, SN_PLUGIN_ERR_CONFIG, "the vocabulary is empty");
    m->vocab_size = max_id + 1;
    m->flags = calloc(m->vocab_size, 1);
    m->text_off = calloc((size_t)m->vocab_size + 1, sizeof *m->text_off);
    owner = malloc(m->vocab_size * sizeof *owner);
    if (!m->flags || !m->text_off || !owner) {
        st = NOMEM("for the vocabulary");
        goto out;
    }
    for (uint32_t i = 0; i < m->vocab_size; i++)
        owner[i] = -1;
    if (strmap_init(&by_text, src->n_vocab + src->n_added)) {
        st = NOMEM("for the vocabulary");
        goto out;
    }
    for (size_t i = 0; i < src->n_vocab; i++) {
        const src_token *t = &src->vocab[i];
        if (owner[t->id] >= 0) {
            const src_token *o = &src->vocab[owner[t->id]];
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                      "duplicate id %ld: tokens '%s' and '%s' both have it", (long)t->id,
                      quote(o->s, o->len).s, quote(t->s, t->len).s);
            goto out;
        }
        owner[t->id] = (int32_t)i;
        int32_t had = strmap_add(&by_text, (const uint8_t *)t->s, t->len, t->id);
        if (had != t->id) {
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                      "duplicate token '%s': ids %ld and %ld both spell it",
                      quote(t->s, t->len).s, (long)had, (long)t->id);
            goto out;
        }
    }
    /* Added tokens may repeat a vocabulary entry (same id, same text) or add an id. */
    for (size_t i = 0; i < src->n_added; i++) {
        const src_added *a = &src->added[i];
        if (a->len == 0) {
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG, "added token %zu (id %ld) is empty",
                      i, (long)a->id);
            goto out;
        }
        if (owner[a->id] >= 0) {
            const src_token *o = &src->vocab[owner[a->id]];
            if (o->len != a->len || memcmp(o->s, a->s, a->len) != 0) {
                st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                          "duplicate id %ld: added token '%s' and vocabulary token '%s' both have it",
                          (long)a->id, quote(a->s, a->len).s, quote(o->s, o->len).s);
                goto out;
            }
        } else if (owner[a->id] <= -2) {
            const src_added *o = &src->added[-2 - owner[a->id]];
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                      "duplicate id %ld: added tokens '%s' and '%s' both have it", (long)a->id,
                      quote(o->s, o->len).s, quote(a->s, a->len).s);
            goto out;
        } else {
            owner[a->id] = -2 - (int32_t)i;
            int32_t had = strmap_add(&by_text, (const uint8_t *)a->s, a->len, a->id);
            if (had != a->id) {
                st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                          "duplicate token '%s': ids %ld and %ld both spell it",
                          quote(a->s, a->len).s, (long)had, (long)a->id);
                goto out;
            }
        }
        if (a->single_word && !a->special) {
            st = fail(err, src->path, SN_PLUGIN_ERR_UNSUPPORTED,
                      "added token '%s' has single_word=true, which text.bpe does not support",
                      quote(a->s, a->len).s);
            goto out;
        }
        if (a->special)
            m->flags[a->id] |= BPE_TOK_SPECIAL;
    }

    /* What each id decodes to. Bytes never outnumber the stored text. */
    int16_t byte_of[ALPHABET_END];
    alphabet_init(byte_of);
    size_t total = 0;
    for (size_t i = 0; i < src->n_vocab; i++)
        total += src->vocab[i].len;
    for (size_t i = 0; i < src->n_added; i++)
        total += src->added[i].len;
    m->text = malloc(total ? total : 1);
    uint8_t *mapped = calloc(m->vocab_size, 1); /* the id's text is all alphabet */
    uint8_t *raw = calloc(m->vocab_size, 1);    /* the id's text is its own bytes */
    if (!m->text || !mapped || !raw) {
        free(mapped);
        free(raw);
        st = NOMEM("for token texts");
        goto out;
    }
    for (size_t i = 0; i < src->n_added; i++)
        raw[src->added[i].id] |= src->added[i].raw;
    size_t off = 0;
    for (uint32_t id = 0; id < m->vocab_size; id++) {
        m->text_off[id] = (uint32_t)off;
        int32_t o = owner[id];
        if (o == -1 || (m->flags[id] & BPE_TOK_SPECIAL) || (src->unused && o >= 0 && src->unused[o]))
            continue;
        const char *s = o >= 0 ? src->vocab[o].s : src->added[-2 - o].s;
        size_t n = o >= 0 ? src->vocab[o].len : src->added[-2 - o].len;
        int is_mapped = 0;
        if (raw[id]) {
            memcpy(m->text + off, s, n);
            off += n;
        } else {
            off += token_bytes(byte_of, s, n, m->text + off, &is_mapped);
        }
        mapped[id] = (uint8_t)(is_mapped && o >= 0);
    }
    free(raw);
    m->text_off[m->vocab_size] = (uint32_t)off;

    /* The one-byte tokens every word starts from. A byte without one is dropped, or becomes
     * the unknown token, as in the library. */
    for (int b = 0; b < 256; b++)
        m->byte_id[b] = -1;
    for (int c = 0; c < ALPHABET_END; c++) {
        if (byte_of[c] < 0)
            continue;
        uint8_t utf8[2];
        size_t n = 1;
        if (c < 0x80) {
            utf8[0] = (uint8_t)c;
        } else {
            utf8[0] = (uint8_t)(0xC0 | c >> 6);
            utf8[1] = (uint8_t)(0x80 | (c & 0x3F));
            n = 2;
        }
        int32_t id = strmap_find(&by_text, utf8, n);
        if (id >= 0 && !(m->flags[id] & BPE_TOK_SPECIAL))
            m->byte_id[byte_of[c]] = id;
    }
    m->unk_id = -1;
    if (src->unk) {
        m->unk_id = strmap_find(&by_text, (const uint8_t *)src->unk, src->unk_len);
        if (m->unk_id < 0) {
            free(mapped);
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                      "model.unk_token '%s' is not in the vocabulary",
                      quote(src->unk, src->unk_len).s);
            goto out;
        }
    }

    /* Merges: both halves and their concatenation must be tokens. */
    if (pairmap_init(&m->merges, src->n_merges)) {
        free(mapped);
        st = NOMEM("for the merges");
        goto out;
    }
    char *joined = NULL;
    size_t joined_cap = 0;
    for (size_t i = 0; i < src->n_merges; i++) {
        const src_merge *mg = &src->merges[i];
        int32_t a = strmap_find(&by_text, (const uint8_t *)mg->a, mg->alen);
        int32_t b = strmap_find(&by_text, (const uint8_t *)mg->b, mg->blen);
        if (a < 0 || b < 0) {
            free(joined);
            free(mapped);
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                      "merge %zu ('%s' '%s') names the unknown token '%s'", i,
                      quote(mg->a, mg->alen).s, quote(mg->b, mg->blen).s,
                      a < 0 ? quote(mg->a, mg->alen).s : quote(mg->b, mg->blen).s);
            goto out;
        }
        if (mg->alen + mg->blen > joined_cap) {
            joined_cap = 2 * (mg->alen + mg->blen);
            char *p = realloc(joined, joined_cap);
            if (!p) {
                free(joined);
                free(mapped);
                st = NOMEM("for the merges");
                goto out;
            }
            joined = p;
        }
        memcpy(joined, mg->a, mg->alen);
        memcpy(joined + mg->alen, mg->b, mg->blen);
        int32_t r = strmap_find(&by_text, (const uint8_t *)joined, mg->alen + mg->blen);
        if (r < 0) {
            free(mapped);
            st = fail(err, src->path, SN_PLUGIN_ERR_CONFIG,
                      "merge %zu ('%s' '%s') makes '%s', which is not in the vocabulary", i,
                      quote(mg->a, mg->alen).s, quote(mg->b, mg->blen).s,
                      quote(joined, mg->alen + mg->blen).s);
            free(joined);
            goto out;
        }
        /* A merge that would spell a special token is left out: special tokens never come
         * from text. */
        if (!(m->flags[r] & BPE_TOK_SPECIAL))
            pairmap_set(&m->merges, pair_key(a, b), (uint32_t)i, r);
    }
    free(joined);

    /* Whole words (ignore_merges): the ordinary tokens, by the bytes they stand for. */
    if (m->ignore_merges) {
        if (strmap_init(&m->words, src->n_vocab)) {
            free(mapped);
            st = NOMEM("for the vocabulary");
            goto out;
        }
        for (uint32_t id = 0; id < m->vocab_size; id++)
            if (mapped[id] && !(m->flags[id] & BPE_TOK_SPECIAL))
                strmap_add(&m->words, m->text + m->text_off[id],
                           m->text_off[id + 1] - m->text_off[id], (int32_t)id);
    }
    free(mapped);

    /* Added tokens, matched in the text in two passes as the library does: first those
     * matched against the raw text ("normalized": false), then the others. */
    if (src->n_added) {
        m->added = calloc(src->n_added, sizeof *m->added);
        content = malloc(src->n_added * sizeof *content);
        content_len = malloc(src->n_added * sizeof *content_len);
        pass_of = malloc(src->n_added);
        if (!m->added || !content || !content_len || !pass_of) {
            st = NOMEM("for the added tokens");
            goto out;
        }
        m->n_added = src->n_added;
        int used[2] = {0, 0};
        for (size_t i = 0; i < src->n_added; i++) {
            const src_added *a = &src->added[i];
            m->added[i] = (bpe_added){a->id, a->special, a->lstrip, a->rstrip};
            content[i] = (const uint8_t *)a->s;
            content_len[i] = a->len;
            pass_of[i] = a->normalized ? 1 : 0;
            used[pass_of[i]] = 1;
            if (!a->special && a->lstrip)
                m->any_lstrip = 1;
        }
        for (int pass = 0; pass < 2; pass++) {
            if (!used[pass])
                continue;
            if (trie_build(&m->tries[m->n_tries], m, content, content_len, pass_of, pass)) {
                st = NOMEM("for the added tokens");
                goto out;
            }
            m->n_tries++;
        }
    }

out:
    free(by_text.slots);
    free(owner);
    free(content);
    free(content_len);
    free(pass_of);
    if (st != SN_PLUGIN_OK)
        bpe_model_free(m);
    return st;
}

void bpe_model_free(bpe_model *m)
{
    if (!m)
        return;
    free(m->flags);
    free(m->text_off);
    free(m->text);
    free(m->merges.slots);
    free(m->words.slots);
    free(m->added);
    for (int i = 0; i < 2; i++)
        trie_free(&m->tries[i]);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------------------- */
/* tokenizer.json                                                                           */
/* ---------------------------------------------------------------------------------------- */

/* The pre-tokenizer patterns text.bpe knows, exactly as tokenizer.json spells them. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const char *type_of(const json_t *obj)
{
    const char *t = json_string_value(json_object_get(obj, "type"));
    return t ? t : "(no type)";
}

/* A boolean member, *out = dflt when absent or null. */
static int get_bool(const json_t *obj, const char *key, int dflt, int *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return -1;
    *out = json_is_true(v);
    return 0;
}

/* One pre-tokenizer step into m->splits; *byte_level set when it was the ByteLevel step. */
static sn_plugin_status pretok_step(bpe_model *m, const char *path, const json_t *p,
                                    int *byte_level, sn_plugin_error *err)
{
    const char *type = type_of(p);
    if (*byte_level)
        return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                    "pre_tokenizer step %s comes after ByteLevel; text.bpe needs ByteLevel last",
                    type);
    if (m->n_splits == BPE_MAX_SPLITS)
        return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED, "pre_tokenizer has more than %d steps",
                    BPE_MAX_SPLITS);
    if (strcmp(type, "ByteLevel") == 0) {
        int prefix, use_regex;
        if (get_bool(p, "add_prefix_space", 0, &prefix) || get_bool(p, "use_regex", 1, &use_regex))
            return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                        "pre_tokenizer ByteLevel: add_prefix_space and use_regex must be booleans");
        if (prefix)
            return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                        "pre_tokenizer ByteLevel has add_prefix_space=true, which text.bpe does not support");
        if (use_regex)
            m->splits[m->n_splits++] = BPE_SPLIT_GPT2;
        *byte_level = 1;
        return SN_PLUGIN_OK;
    }
    if (strcmp(type, "Digits") == 0) {
        int individual;
        if (get_bool(p, "individual_digits", 0, &individual))
            return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                        "pre_tokenizer Digits: individual_digits must be a boolean");
        m->splits[m->n_splits++] = individual ? BPE_SPLIT_DIGITS : BPE_SPLIT_DIGIT_RUNS;
        return SN_PLUGIN_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
        const char *behavior = json_string_value(json_object_get(p, "behavior"));
        int invert;
        if (!re)
            return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                        "pre_tokenizer Split has no {\"Regex\": ...} pattern; text.bpe knows only the GPT-2 and Llama 3 regexes");
        if (!behavior || strcmp(behavior, "Isolated") != 0 || get_bool(p, "invert", 0, &invert) ||
            invert)
            return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                        "pre_tokenizer Split must have behavior Isolated and invert false (has %s)",
                        behavior ? behavior : "no behavior");
        if (strcmp(re, GPT2_PATTERN) == 0)
            m->splits[m->n_splits++] = BPE_SPLIT_GPT2;
        else if (strcmp(re, LLAMA3_PATTERN) == 0)
            m->splits[m->n_splits++] = BPE_SPLIT_LLAMA3;
        else
            return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                        "unknown pre-tokenizer regex '%s'; text.bpe knows the GPT-2 and Llama 3 ones",
                        quote(re, strlen(re)).s);
        return SN_PLUGIN_OK;
    }
    return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                "unknown pre-tokenizer %s; text.bpe knows ByteLevel, Digits and Split (GPT-2 or Llama 3 regex)",
                type);
}

static sn_plugin_status parse_pretok(bpe_model *m, const char *path, const json_t *pre,
                                     sn_plugin_error *err)
{
    if (!json_is_object(pre))
        return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                    "no pre_tokenizer: not a byte-level BPE tokenizer (need a ByteLevel pre-tokenizer)");
    int byte_level = 0;
    sn_plugin_status st;
    if (strcmp(type_of(pre), "Sequence") == 0) {
        const json_t *steps = json_object_get(pre, "pretokenizers");
        if (!json_is_array(steps))
            return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                        "pre_tokenizer Sequence has no pretokenizers array");
        for (size_t i = 0; i < json_array_size(steps); i++)
            if ((st = pretok_step(m, path, json_array_get(steps, i), &byte_level, err)))
                return st;
    } else if ((st = pretok_step(m, path, pre, &byte_level, err))) {
        return st;
    }
    if (!byte_level)
        return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                    "pre_tokenizer has no ByteLevel step: not a byte-level BPE tokenizer");
    return SN_PLUGIN_OK;
}

static sn_plugin_status parse_model_options(bpe_model *m, source *src, const json_t *model,
                                            sn_plugin_error *err)
{
    const char *path = src->path;
    int b;
    if (get_bool(model, "ignore_merges", 0, &m->ignore_merges) ||
        get_bool(model, "fuse_unk", 0, &m->fuse_unk) || get_bool(model, "byte_fallback", 0, &b))
        return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                    "model.ignore_merges, fuse_unk and byte_fallback must be booleans");
    if (b)
        return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                    "model.byte_fallback is true: a SentencePiece-style BPE, not byte-level");
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0)
        return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                    "model.dropout is set; text.bpe encodes deterministically (remove it)");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, affixes[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                        "model.%s is set, which byte-level BPE does not use", affixes[i]);
    }
    const json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        src->unk = json_string_value(unk);
        src->unk_len = json_string_length(unk);
    } else if (unk && !json_is_null(unk)) {
        return fail(err, path, SN_PLUGIN_ERR_CONFIG, "model.unk_token must be a string or null");
    }
    return SN_PLUGIN_OK;
}

static sn_plugin_status parse_merges(source *src, const json_t *merges, sn_plugin_error *err)
{
    const char *path = src->path;
    if (!json_is_array(merges))
        return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                    "model.merges is missing or not an array: a BPE needs its merges");
    size_t n = json_array_size(merges);
    src->merges = malloc((n ? n : 1) * sizeof *src->merges);
    if (!src->merges)
        return NOMEM("for the merges");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(merges, i);
        src_merge *mg = &src->merges[i];
        if (json_is_string(e)) {
            const char *s = json_string_value(e);
            size_t len = json_string_length(e);
            const char *sp = memchr(s, ' ', len);
            if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
                return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                            "merge %zu is '%s', not two tokens separated by one space", i,
                            quote(s, len).s);
            *mg = (src_merge){s, sp + 1, (size_t)(sp - s), len - (size_t)(sp + 1 - s)};
        } else if (json_is_array(e) && json_array_size(e) == 2 &&
                   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
            const json_t *a = json_array_get(e, 0), *b = json_array_get(e, 1);
            *mg = (src_merge){json_string_value(a), json_string_value(b), json_string_length(a),
                              json_string_length(b)};
        } else {
            return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                        "merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
    }
    src->n_merges = n;
    return SN_PLUGIN_OK;
}

static sn_plugin_status parse_added(source *src, const json_t *added, sn_plugin_error *err)
{
    const char *path = src->path;
    if (!added || json_is_null(added))
        return SN_PLUGIN_OK;
    if (!json_is_array(added))
        return fail(err, path, SN_PLUGIN_ERR_CONFIG, "added_tokens is not an array");
    size_t n = json_array_size(added);
    src->added = calloc(n ? n : 1, sizeof *src->added);
    if (!src->added)
        return NOMEM("for the added tokens");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(added, i);
        const json_t *id = json_object_get(e, "id"), *content = json_object_get(e, "content");
        src_added *a = &src->added[i];
        int special, lstrip, rstrip, single, normalized;
        if (!json_is_integer(id) || !json_is_string(content))
            return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                        "added_tokens[%zu] needs an integer id and a string content", i);
        if (get_bool(e, "special", 0, &special) || get_bool(e, "lstrip", 0, &lstrip) ||
            get_bool(e, "rstrip", 0, &rstrip) || get_bool(e, "single_word", 0, &single) ||
            get_bool(e, "normalized", !special, &normalized))
            return fail(err, path, SN_PLUGIN_ERR_CONFIG,
                        "added_tokens[%zu]: special, lstrip, rstrip, single_word and normalized must be booleans",
                        i);
        json_int_t v = json_integer_value(id);
        a->s = json_string_value(content);
        a->len = json_string_length(content);
        a->id = v < 0 || v >= (json_int_t)BPE_MAX_ID ? -1 : (int32_t)v;
        a->special = (uint8_t)special;
        a->lstrip = (uint8_t)lstrip;
        a->rstrip = (uint8_t)rstrip;
        a->single_word = (uint8_t)single;
        a->normalized = (uint8_t)normalized;
    }
    src->n_added = n;
    return SN_PLUGIN_OK;
}

sn_plugin_status bpe_model_load_json(bpe_model *m, const char *path, sn_plugin_error *err)
{
    source src_ = {.path = path}, *src = &src_;
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        if (jerr.line <= 0) /* jansson reports an unreadable file without a position */
            return fail(err, path, SN_PLUGIN_ERR_IO, "cannot read it: %s", jerr.text);
        return fail(err, path, SN_PLUGIN_ERR_CONFIG, "not valid JSON: line %d, column %d: %s",
                    jerr.line, jerr.column, jerr.text);
    }
    sn_plugin_status st = SN_PLUGIN_OK;
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *norm = json_object_get(root, "normalizer");
    const json_t *dec = json_object_get(root, "decoder");
    if (!json_is_object(root) || !json_is_object(model)) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                  "no \"model\" object: not a Hugging Face tokenizer.json");
        goto out;
    }
    if (json_object_get(model, "type") && strcmp(type_of(model), "BPE") != 0) {
        st = fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED, "model type is %s, not BPE",
                  type_of(model));
        goto out;
    }
    if (norm && !json_is_null(norm)) {
        st = fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                  "normalizer %s is set; text.bpe supports tokenizers without a normalizer",
                  type_of(norm));
        goto out;
    }
    if (dec && !json_is_null(dec) && strcmp(type_of(dec), "ByteLevel") != 0) {
        st = fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                  "decoder is %s, not ByteLevel: not a byte-level BPE tokenizer", type_of(dec));
        goto out;
    }
    if ((st = parse_pretok(m, path, json_object_get(root, "pre_tokenizer"), err)) ||
        (st = parse_model_options(m, src, model, err)))
        goto out;
    if (!json_is_object(vocab)) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG, "model.vocab is missing or not an object");
        goto out;
    }
    src->vocab = malloc((json_object_size(vocab) + 1) * sizeof *src->vocab);
    if (!src->vocab) {
        st = NOMEM("for the vocabulary");
        goto out;
    }
    const char *key;
    size_t key_len;
    json_t *value;
    json_object_keylen_foreach((json_t *)vocab, key, key_len, value)
    {
        if (!json_is_integer(value)) {
            st = fail(err, path, SN_PLUGIN_ERR_CONFIG, "vocab entry '%s' has no integer id",
                      quote(key, key_len).s);
            goto out;
        }
        json_int_t v = json_integer_value(value);
        src->vocab[src->n_vocab++] =
            (src_token){key, key_len, v < 0 || v >= (json_int_t)BPE_MAX_ID ? -1 : (int32_t)v};
    }
    if ((st = parse_merges(src, json_object_get(model, "merges"), err)) ||
        (st = parse_added(src, json_object_get(root, "added_tokens"), err)))
        goto out;
    st = build(m, src, err);
out:
    source_free(src);
    json_decref(root);
    if (st != SN_PLUGIN_OK)
        bpe_model_free(m);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* GGUF                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* llama.cpp's names for the pre-tokenizers text.bpe has (tokenizer.ggml.pre). */
static const struct {
    const char *name;
    bpe_split splits[2];
    int n_splits, ignore_merges;
} gguf_pre[] = {
    {"gpt2", {BPE_SPLIT_GPT2}, 1, 0},
    {"gpt-2", {BPE_SPLIT_GPT2}, 1, 0},
    {"llama-bpe", {BPE_SPLIT_LLAMA3}, 1, 1},
    {"llama3", {BPE_SPLIT_LLAMA3}, 1, 1},
    {"llama-v3", {BPE_SPLIT_LLAMA3}, 1, 1},
    {"smollm", {BPE_SPLIT_DIGITS, BPE_SPLIT_GPT2}, 2, 0},
    {"starcoder", {BPE_SPLIT_DIGITS, BPE_SPLIT_GPT2}, 2, 0},
};

enum { GGUF_NORMAL = 1, GGUF_UNKNOWN = 2, GGUF_CONTROL = 3, GGUF_USER_DEFINED = 4,
       GGUF_UNUSED = 5, GGUF_BYTE = 6 };

sn_plugin_status bpe_model_load_gguf(bpe_model *m, const char *path, sn_plugin_error *err)
{
    char msg[SN_PLUGIN_ERROR_MAX];
    sn_gguf *g = NULL;
    if (sn_gguf_open(path, &g, msg, sizeof msg) != 0) {
        sn_plugin_error_set(err, "%s", msg);
        return access(path, R_OK) != 0 ? SN_PLUGIN_ERR_IO : SN_PLUGIN_ERR_CONFIG;
    }
    source src_ = {.path = path}, *src = &src_;
    sn_gguf_str *tokens = NULL, *merges = NULL;
    sn_plugin_status st = SN_PLUGIN_OK;
    sn_gguf_str model, pre;

    if (sn_gguf_get_str(g, "tokenizer.ggml.model", &model) != 0) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                  "no tokenizer.ggml.model: the file carries no tokenizer");
        goto out;
    }
    if (model.len != 4 || memcmp(model.s, "gpt2", 4) != 0) {
        st = fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                  "tokenizer.ggml.model is '%s', not 'gpt2' (byte-level BPE)",
                  quote(model.s, model.len).s);
        goto out;
    }
    if (sn_gguf_get_str(g, "tokenizer.ggml.pre", &pre) != 0) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                  "no tokenizer.ggml.pre: the pre-tokenizer is not named");
        goto out;
    }
    size_t k = 0, n_pre = sizeof gguf_pre / sizeof gguf_pre[0];
    while (k < n_pre && !(strlen(gguf_pre[k].name) == pre.len &&
                          memcmp(gguf_pre[k].name, pre.s, pre.len) == 0))
        k++;
    if (k == n_pre) {
        st = fail(err, path, SN_PLUGIN_ERR_UNSUPPORTED,
                  "unknown pre-tokenizer tokenizer.ggml.pre = '%s'; text.bpe knows gpt2, llama-bpe and smollm",
                  quote(pre.s, pre.len).s);
        goto out;
    }
    m->n_splits = gguf_pre[k].n_splits;
    memcpy(m->splits, gguf_pre[k].splits, sizeof gguf_pre[k].splits);
    m->ignore_merges = gguf_pre[k].ignore_merges;

    const sn_gguf_kv *tk = sn_gguf_find(g, "tokenizer.ggml.tokens");
    const sn_gguf_kv *mk = sn_gguf_find(g, "tokenizer.ggml.merges");
    const sn_gguf_kv *tt = sn_gguf_find(g, "tokenizer.ggml.token_type");
    if (!tk || tk->type != SN_GGUF_ARRAY || tk->arr_type != SN_GGUF_STRING) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                  "tokenizer.ggml.tokens is missing or not an array of strings");
        goto out;
    }
    if (!mk || mk->type != SN_GGUF_ARRAY || mk->arr_type != SN_GGUF_STRING) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                  "tokenizer.ggml.merges is missing or not an array of strings: a BPE needs its merges");
        goto out;
    }
    if (tk->arr_n == 0 || tk->arr_n > BPE_MAX_ID) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG, "tokenizer.ggml.tokens has %llu entries (1..%u)",
                  (unsigned long long)tk->arr_n, BPE_MAX_ID);
        goto out;
    }
    if (tt && (tt->type != SN_GGUF_ARRAY || tt->arr_n != tk->arr_n ||
               tt->arr_type == SN_GGUF_STRING || tt->arr_type == SN_GGUF_ARRAY ||
               tt->arr_type == SN_GGUF_FLOAT32 || tt->arr_type == SN_GGUF_FLOAT64)) {
        st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                  "tokenizer.ggml.token_type must be an integer array as long as the tokens (%llu)",
                  (unsigned long long)tk->arr_n);
        goto out;
    }
    size_t n = (size_t)tk->arr_n, nm = (size_t)mk->arr_n;
    tokens = malloc(n * sizeof *tokens);
    merges = malloc((nm ? nm : 1) * sizeof *merges);
    src->vocab = malloc(n * sizeof *src->vocab);
    src->unused = calloc(n, 1);
    src->added = calloc(n, sizeof *src->added);
    src->merges = malloc((nm ? nm : 1) * sizeof *src->merges);
    if (!tokens || !merges || !src->vocab || !src->unused || !src->added || !src->merges) {
        st = NOMEM("for the vocabulary");
        goto out;
    }
    sn_gguf_array_strings(tk, tokens);
    sn_gguf_array_strings(mk, merges);
    for (size_t i = 0; i < n; i++) {
        int64_t type = tt ? sn_gguf_array_int(tt, i) : GGUF_NORMAL;
        if (type < GGUF_NORMAL || type > GGUF_BYTE) {
            st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                      "token %zu ('%s') has type %lld; GGUF token types are 1..6", i,
                      quote(tokens[i].s, tokens[i].len).s, (long long)type);
            goto out;
        }
        src->vocab[src->n_vocab++] = (src_token){tokens[i].s, tokens[i].len, (int32_t)i};
        src->unused[i] = type == GGUF_UNUSED;
        if (type == GGUF_CONTROL || type == GGUF_USER_DEFINED)
            src->added[src->n_added++] = (src_added){
                .s = tokens[i].s, .len = tokens[i].len, .id = (int32_t)i,
                .special = type == GGUF_CONTROL, .raw = type == GGUF_USER_DEFINED};
    }
    for (size_t i = 0; i < nm; i++) {
        const char *s = merges[i].s;
        size_t len = merges[i].len;
        const char *sp = memchr(s, ' ', len);
        if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s))) {
            st = fail(err, path, SN_PLUGIN_ERR_CONFIG,
                      "merge %zu is '%s', not two tokens separated by one space", i,
                      quote(s, len).s);
            goto out;
        }
        src->merges[i] = (src_merge){s, sp + 1, (size_t)(sp - s), len - (size_t)(sp + 1 - s)};
    }
    src->n_merges = nm;
    st = build(m, src, err);
out:
    free(tokens);
    free(merges);
    source_free(src);
    sn_gguf_close(g);
    if (st != SN_PLUGIN_OK)
        bpe_model_free(m);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* The merge loop                                                                           */
/* ---------------------------------------------------------------------------------------- */

void bpe_work_free(bpe_work *w)
{
    free(w->id);
    free(w->prev);
    free(w->next);
    free(w->rank);
    free(w->heap);
    free(w->out);
    memset(w, 0, sizeof *w);
}

static int work_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *id = realloc(w->id, cap * sizeof *id);
    if (id)
        w->id = id;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev)
        w->prev = prev;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next)
        w->next = next;
    uint32_t *rank = realloc(w->rank, cap * sizeof *rank);
    if (rank)
        w->rank = rank;
    int32_t *out = realloc(w->out, cap * sizeof *out);
    if (out)
        w->out = out;
    if (!id || !prev || !next || !rank || !out)
        return -1;
    w->cap = cap;
    return 0;
}

/* The rank of merging a and b, or UINT32_MAX when they do not merge. */
static uint32_t rank_of(const bpe_model *m, int32_t a, int32_t b, int32_t *merged)
{
    const struct bpe_pair_slot *s = pairmap_find(&m->merges, pair_key(a, b));
    if (!s)
        return UINT32_MAX;
    *merged = s->id;
    return s->rank;
}

/* Short words: the symbols in an array, the lowest rank found by scanning. */
static size_t merge_linear(const bpe_model *m, int32_t *id, uint32_t *rank, size_t n)
{
    int32_t merged = -1;
    for (size_t i = 0; i + 1 < n; i++)
        rank[i] = rank_of(m, id[i], id[i + 1], &merged);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (rank[i] < rank[best])
                best = i;
        if (rank[best] == UINT32_MAX)
            break;
        rank_of(m, id[best], id[best + 1], &id[best]);
        memmove(id + best + 1, id + best + 2, (n - best - 2) * sizeof *id);
        memmove(rank + best + 1, rank + best + 2, (n - best - 2) * sizeof *rank);
        n--;
        if (best > 0)
            rank[best - 1] = rank_of(m, id[best - 1], id[best], &merged);
        if (best + 1 < n)
            rank[best] = rank_of(m, id[best], id[best + 1], &merged);
    }
    return n;
}

static int heap_less(const struct bpe_heap_item *a, const struct bpe_heap_item *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct bpe_heap_item *h, size_t *n, uint32_t rank, uint32_t pos)
{
    size_t i = (*n)++;
    struct bpe_heap_item it = {rank, pos};
    while (i > 0 && heap_less(&it, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = it;
}

static struct bpe_heap_item heap_pop(struct bpe_heap_item *h, size_t *n)
{
    struct bpe_heap_item top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

/* Long words: a linked list of symbols and a heap of candidate merges ordered by (rank,
 * position), which is the library's own loop. An entry is stale when its pair has changed;
 * ranks are unique per pair, so an equal rank at the same position means the same pair. */
static long merge_heap(const bpe_model *m, bpe_work *w, size_t n)
{
    size_t need = 3 * n;
    if (need > w->heap_cap) {
        struct bpe_heap_item *h = realloc(w->heap, need * sizeof *h);
        if (!h)
            return -1;
        w->heap = h;
        w->heap_cap = need;
    }
    int32_t *id = w->id, *prev = w->prev, *next = w->next, merged = -1;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        uint32_t r = i + 1 < n ? rank_of(m, id[i], id[i + 1], &merged) : UINT32_MAX;
        if (r != UINT32_MAX)
            heap_push(w->heap, &hn, r, (uint32_t)i);
    }
    while (hn) {
        struct bpe_heap_item top = heap_pop(w->heap, &hn);
        int32_t p = (int32_t)top.pos, q = next[p];
        if (id[p] < 0 || q < 0 || rank_of(m, id[p], id[q], &merged) != top.rank)
            continue;
        id[p] = merged;
        id[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0)
            prev[next[q]] = p;
        if (prev[p] >= 0) {
            uint32_t r = rank_of(m, id[prev[p]], id[p], &merged);
            if (r != UINT32_MAX)
                heap_push(w->heap, &hn, r, (uint32_t)prev[p]);
        }
        if (next[p] >= 0) {
            uint32_t r = rank_of(m, id[p], id[next[p]], &merged);
            if (r != UINT32_MAX)
                heap_push(w->heap, &hn, r, (uint32_t)p);
        }
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = next[i])
        w->out[k++] = id[i];
    return (long)k;
}

long bpe_encode_word(const bpe_model *m, bpe_work *w, const uint8_t *s, size_t n)
{
    if (m->ignore_merges) {
        int32_t whole = strmap_find(&m->words, s, n);
        if (whole >= 0) {
            if (work_reserve(w, 1))
                return -1;
            w->out[0] = whole;
            return 1;
        }
    }
    if (work_reserve(w, n))
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = m->byte_id[s[i]];
        if (id < 0) {
            if (m->unk_id < 0 || (m->fuse_unk && k && w->id[k - 1] == m->unk_id))
                continue;
            id = m->unk_id;
        }
        w->id[k++] = id;
    }
    if (k <= LINEAR_MAX) {
        k = merge_linear(m, w->id, w->rank, k);
        memcpy(w->out, w->id, k * sizeof *w->out);
        return (long)k;
    }
    return merge_heap(m, w, k);
}

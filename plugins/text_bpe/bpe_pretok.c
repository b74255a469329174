/*
 * bpe_pretok.c - text.bpe's pre-tokenizers: hand-written scanners that cut UTF-8 text into the
 * pieces the tokenizers library's regular expressions and Digits step would cut it into.
 *
 * Stage of the pipeline: between the added-token split and the merge loop (see bpe.h). Each
 * scanner is the regex compiled by hand: the alternatives tried in order, each greedy, with
 * the backtracking that the patterns can actually do written out (only \s+(?!\S) and
 * \s*[\r\n]+ give characters back). Oniguruma, which the library runs these patterns on,
 * finds each match at the end of the previous one, so a scanner needs only the position.
 *
 * Streaming: a scanner is told where the text known so far ends and whether more may follow.
 * It never reads past that end; when the piece's extent depends on what follows, it says so
 * (BPE_SCAN_MORE) and the caller keeps the text until more arrives.
 */
#include "bpe.h"

#include "unicode_tables.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------------------------------- */
/* Character classes                                                                        */
/* ---------------------------------------------------------------------------------------- */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid][0])
            hi = mid;
        else if (c > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* \p{L} */
static int is_letter(uint32_t c)
{
    if (c < 0x80)
        return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    return in_ranges(bpe_letter_ranges, COUNT(bpe_letter_ranges), c);
}

/* \p{N} */
static int is_number(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    return in_ranges(bpe_number_ranges, COUNT(bpe_number_ranges), c);
}

/* Rust's char::is_numeric, for Digits (a newer Unicode than \p{N}: see unicode_tables.h) */
static int is_numeric(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    return in_ranges(bpe_numeric_ranges, COUNT(bpe_numeric_ranges), c);
}

/* \s */
int bpe_is_space(uint32_t c)
{
    if (c < 0x80)
        return c == ' ' || (c >= '\t' && c <= '\r');
    return in_ranges(bpe_space_ranges, COUNT(bpe_space_ranges), c);
}

/* The three kinds of run the patterns know, for a character that is not \s. */
enum { RUN_LETTER, RUN_NUMBER, RUN_OTHER };

static int run_kind(uint32_t c)
{
    return is_letter(c) ? RUN_LETTER : is_number(c) ? RUN_NUMBER : RUN_OTHER;
}

/* ---------------------------------------------------------------------------------------- */
/* Reading with a horizon                                                                   */
/* ---------------------------------------------------------------------------------------- */

#define AT_END 0xFFFFFFFFu  /* past the end of text that is final: the pattern's $ */
#define AT_MORE 0xFFFFFFFEu /* past the end of the text known so far: not known yet */

typedef struct reader {
    const uint8_t *s;
    size_t end;
    int final;
} reader;

static uint32_t peek(const reader *r, size_t p, size_t *len)
{
    if (p >= r->end) {
        *len = 0;
        return r->final ? AT_END : AT_MORE;
    }
    return bpe_utf8_decode(r->s + p, len);
}

static int is_real(uint32_t c)
{
    return c != AT_END && c != AT_MORE;
}

/* The run of characters of one kind from p (\p{L}+, \p{N}+, [^\s\p{L}\p{N}]+): a greedy
 * loop, decided only once the character after it is known. */
static bpe_scan_result run_of(const reader *r, size_t p, int kind, size_t *end)
{
    for (;;) {
        size_t len;
        uint32_t c = peek(r, p, &len);
        if (c == AT_MORE)
            return BPE_SCAN_MORE;
        if (c == AT_END || bpe_is_space(c) || run_kind(c) != kind)
            break;
        p += len;
    }
    *end = p;
    return BPE_SCAN_PIECE;
}

/* The whitespace alternatives shared by both patterns, at a space i that no earlier
 * alternative took: \s+(?!\S) takes the run but gives its last character back when a
 * non-space follows (that character then leads the next piece, " word"); a lone space before
 * a non-space falls to \s+. With newline_first set, Llama 3's \s*[\r\n]+ comes first: the run
 * up to and including its last \r or \n. */
static bpe_scan_result space_run(const reader *r, size_t i, int newline_first, size_t *end)
{
    size_t p = i, last = i, nl_end = 0, n = 0, len;
    uint32_t c;
    for (;;) {
        c = peek(r, p, &len);
        if (c == AT_MORE)
            return BPE_SCAN_MORE;
        if (c == AT_END || !bpe_is_space(c))
            break;
        if (c == '\r' || c == '\n')
            nl_end = p + len;
        last = p;
        p += len;
        n++;
    }
    if (newline_first && nl_end)
        *end = nl_end;
    else if (c == AT_END || n < 2)
        *end = p;
    else
        *end = last;
    return BPE_SCAN_PIECE;
}

/* ---------------------------------------------------------------------------------------- */
/* The patterns                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static bpe_scan_result scan_gpt2(const reader *r, size_t i, size_t *end)
{
    size_t l0, l1, l2;
    uint32_t c0 = peek(r, i, &l0);
    if (c0 == '\'') {
        uint32_t c1 = peek(r, i + 1, &l1);
        if (c1 == AT_MORE)
            return BPE_SCAN_MORE;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
            *end = i + 2;
            return BPE_SCAN_PIECE;
        }
        if (c1 == 'r' || c1 == 'v' || c1 == 'l') {
            uint32_t c2 = peek(r, i + 2, &l2);
            if (c2 == AT_MORE)
                return BPE_SCAN_MORE;
            if (c2 == (c1 == 'l' ? 'l' : 'e')) {
                *end = i + 3;
                return BPE_SCAN_PIECE;
            }
        }
    }
    /* " ?" then a run: the space joins a letter, number or other run that follows it. */
    size_t start = i + l0;
    uint32_t c = c0;
    if (c0 == ' ') {
        uint32_t c1 = peek(r, i + 1, &l1);
        if (c1 == AT_MORE)
            return BPE_SCAN_MORE;
        if (is_real(c1) && !bpe_is_space(c1)) {
            c = c1;
            start = i + 1 + l1;
        }
    }
    if (!bpe_is_space(c))
        return run_of(r, start, run_kind(c), end);
    return space_run(r, i, 0, end);
}

/* Case-insensitive matching of the contractions: Oniguruma folds U+017F LONG S to s too. */
static uint32_t fold(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    return c == 0x17F ? 's' : c;
}

/* Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *          | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static bpe_scan_result scan_llama3(const reader *r, size_t i, size_t *end)
{
    size_t l0, l1, l2;
    uint32_t c0 = peek(r, i, &l0);
    if (c0 == '\'') {
        uint32_t c1 = peek(r, i + 1, &l1);
        if (c1 == AT_MORE)
            return BPE_SCAN_MORE;
        uint32_t f1 = fold(c1);
        if (f1 == 's' || f1 == 't' || f1 == 'm' || f1 == 'd') {
            *end = i + 1 + l1;
            return BPE_SCAN_PIECE;
        }
        if (f1 == 'r' || f1 == 'v' || f1 == 'l') {
            uint32_t c2 = peek(r, i + 1 + l1, &l2);
            if (c2 == AT_MORE)
                return BPE_SCAN_MORE;
            if (fold(c2) == (f1 == 'l' ? 'l' : 'e')) {
                *end = i + 1 + l1 + l2;
                return BPE_SCAN_PIECE;
            }
        }
    }
    int letter0 = is_letter(c0), number0 = !letter0 && is_number(c0);
    /* [^\r\n\p{L}\p{N}]?\p{L}+: any one other character (a space, a tab, punctuation) may
     * lead a run of letters. */
    if (letter0)
        return run_of(r, i + l0, RUN_LETTER, end);
    if (!number0 && c0 != '\r' && c0 != '\n') {
        uint32_t c1 = peek(r, i + l0, &l1);
        if (c1 == AT_MORE)
            return BPE_SCAN_MORE;
        if (is_real(c1) && is_letter(c1))
            return run_of(r, i + l0 + l1, RUN_LETTER, end);
    }
    /* \p{N}{1,3} */
    if (number0) {
        size_t p = i + l0, len;
        for (int k = 1; k < 3; k++) {
            uint32_t c = peek(r, p, &len);
            if (c == AT_MORE)
                return BPE_SCAN_MORE;
            if (c == AT_END || !is_number(c))
                break;
            p += len;
        }
        *end = p;
        return BPE_SCAN_PIECE;
    }
    /* ` ?[^\s\p{L}\p{N}]+[\r\n]*` */
    size_t start = i + l0;
    uint32_t c = c0;
    if (c0 == ' ') {
        uint32_t c1 = peek(r, i + 1, &l1);
        if (c1 == AT_MORE)
            return BPE_SCAN_MORE;
        if (is_real(c1) && !bpe_is_space(c1) && run_kind(c1) == RUN_OTHER) {
            c = c1;
            start = i + 1 + l1;
        }
    }
    if (!bpe_is_space(c)) {
        size_t p;
        if (run_of(r, start, RUN_OTHER, &p) == BPE_SCAN_MORE)
            return BPE_SCAN_MORE;
        for (;;) {
            size_t len;
            uint32_t x = peek(r, p, &len);
            if (x == AT_MORE)
                return BPE_SCAN_MORE;
            if (x != '\r' && x != '\n')
                break;
            p += len;
        }
        *end = p;
        return BPE_SCAN_PIECE;
    }
    return space_run(r, i, 1, end);
}

/* Digits: numeric characters isolated (one by one, or as runs), and what lies between them
 * as pieces of their own; a stretch of non-digits can be handed on before it is closed. */
static bpe_scan_result scan_digits(const reader *r, size_t i, int individual, size_t *end)
{
    size_t len, p;
    uint32_t c0 = peek(r, i, &len);
    int numeric = is_numeric(c0);
    p = i + len;
    if (numeric && individual) {
        *end = p;
        return BPE_SCAN_PIECE;
    }
    for (;;) {
        uint32_t c = peek(r, p, &len);
        if (c == AT_MORE) {
            *end = p;
            return BPE_SCAN_OPEN;
        }
        if (c == AT_END || is_numeric(c) != numeric)
            break;
        p += len;
    }
    *end = p;
    return BPE_SCAN_PIECE;
}

bpe_scan_result bpe_scan(bpe_split split, const uint8_t *s, size_t i, size_t end, int final,
                         size_t *piece_end)
{
    reader r = {s, end, final};
    switch (split) {
    case BPE_SPLIT_GPT2: return scan_gpt2(&r, i, piece_end);
    case BPE_SPLIT_LLAMA3: return scan_llama3(&r, i, piece_end);
    case BPE_SPLIT_DIGITS: return scan_digits(&r, i, 1, piece_end);
    case BPE_SPLIT_DIGIT_RUNS: return scan_digits(&r, i, 0, piece_end);
    }
    *piece_end = end;
    return BPE_SCAN_PIECE;
}

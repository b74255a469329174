#!/usr/bin/env python3
"""gen_unicode_tables.py - writes unicode_tables.h, the character classes text.bpe's
pre-tokenizers need, as sorted code-point ranges.

The classes must be the ones the Hugging Face `tokenizers` library uses, and the library takes
them from two different Unicode versions:

  \\p{L}, \\p{N}   its regular expressions run on Oniguruma, whose tables are Unicode 16.0
  is_numeric      its Digits pre-tokenizer calls Rust's char::is_numeric (general category
                  Nd, Nl or No), which in tokenizers 0.23 is Unicode 17.0
  \\s              Oniguruma's \\s is the White_Space property (PropList.txt), the same 25
                  code points in every Unicode version since 6.3

Python's own unicodedata is older (3.11 ships 14.0), so the categories come from the
`unicodedata2` backport at the two versions, each installed into its own folder:

    pip download --no-deps -d dl16 unicodedata2==16.0.0 && pip install --target u16 dl16/*.whl
    pip download --no-deps -d dl17 unicodedata2==17.0.0 && pip install --target u17 dl17/*.whl
    python3 gen_unicode_tables.py u16 u17 > unicode_tables.h

When the `tokenizers` package is importable, the script also checks every class against the
library itself (running its regex and Digits pre-tokenizers over all code points) and fails
on any difference, so that a newer library with newer tables is noticed here rather than as
a wrong token id.
"""
import json
import subprocess
import sys

# White_Space (PropList.txt, unchanged since Unicode 6.3 dropped U+180E).
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]

# Run in a child interpreter with one unicodedata2 folder on its path (two versions of one
# module cannot be imported into one process).
CHILD = r"""
import json, sys, unicodedata2 as u
out = {"version": u.unidata_version, "L": [], "N": []}
for cp in range(0x110000):
    cat = u.category(chr(cp))[0]
    if cat in out:
        out[cat].append(cp)
json.dump(out, sys.stdout)
"""


def categories(folder):
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env={"PYTHONPATH": folder}, check=True)
    return json.loads(res.stdout)


def to_ranges(cps):
    ranges = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] + 1 == cp:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return ranges


def expand(ranges):
    return {cp for lo, hi in ranges for cp in range(lo, hi + 1)}


def check_against_library(letters, numbers, numeric, space):
    try:
        import tokenizers
        from tokenizers import Regex
        from tokenizers import pre_tokenizers as P
    except ImportError:
        return "not checked against tokenizers (not installed)"
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chars)

    def regex_class(negated):
        pieces = P.Split(Regex(negated), "removed").pre_tokenize_str(text)
        return {ord(c) for piece, _ in pieces for c in piece}

    spaced = "x" + "x".join(chars) + "x"
    digits = {ord(p) for p, _ in P.Digits(individual_digits=True).pre_tokenize_str(spaced)
              if len(p) == 1 and p != "x"}
    for name, ours, theirs in (("\\p{L}", letters, regex_class(r"[^\p{L}]+")),
                               ("\\p{N}", numbers, regex_class(r"[^\p{N}]+")),
                               ("\\s", space, regex_class(r"\S+")),
                               ("Digits", numeric, digits)):
        if ours != theirs:
            diff = sorted(ours ^ theirs)
            sys.exit(f"{name}: {len(diff)} code points differ from tokenizers "
                     f"{tokenizers.__version__}, first U+{diff[0]:04X}")
    return f"checked against tokenizers {tokenizers.__version__}: identical"


def emit(name, comment, ranges):
    print(f"/* {comment}: {len(ranges)} ranges. */")
    print(f"static const uint32_t {name}[][2] = {{")
    line = "   "
    for lo, hi in ranges:
        item = f" {{0x{lo:X}, 0x{hi:X}}},"
        if len(line) + len(item) > 96:
            print(line)
            line = "   "
        line += item
    print(line)
    print("};")
    print()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_unicode_tables.py UNICODEDATA2_16_DIR UNICODEDATA2_17_DIR > unicode_tables.h")
    u16, u17 = categories(sys.argv[1]), categories(sys.argv[2])
    if not u16["version"].startswith("16.") or not u17["version"].startswith("17."):
        sys.exit(f"need unicodedata2 16.x and 17.x, got {u16['version']} and {u17['version']}")
    letters, numbers = to_ranges(u16["L"]), to_ranges(u16["N"])
    numeric = to_ranges(u17["N"])
    verdict = check_against_library(expand(letters), expand(numbers), expand(numeric),
                                    expand(WHITE_SPACE))
    print(f"""/*
 * unicode_tables.h - character classes of text.bpe's pre-tokenizers, as sorted, disjoint,
 * inclusive code-point ranges. Generated by gen_unicode_tables.py; do not edit.
 *
 * letter, number: general category L and N of Unicode {u16['version']} (Oniguruma's \\p{{L}} and
 *                 \\p{{N}}, which the tokenizers library's regular expressions use)
 * numeric:        general category N of Unicode {u17['version']} (Rust's char::is_numeric, which
 *                 the library's Digits pre-tokenizer uses)
 * space:          the White_Space property (Oniguruma's \\s)
 * {verdict}.
 */
#ifndef SN_BPE_UNICODE_TABLES_H
#define SN_BPE_UNICODE_TABLES_H

#include <stdint.h>
""")
    emit("bpe_letter_ranges", f"General category L, Unicode {u16['version']}", letters)
    emit("bpe_number_ranges", f"General category N, Unicode {u16['version']}", numbers)
    emit("bpe_numeric_ranges", f"General category N, Unicode {u17['version']}", numeric)
    emit("bpe_space_ranges", "White_Space", WHITE_SPACE)
    print("#endif /* SN_BPE_UNICODE_TABLES_H */")


if __name__ == "__main__":
    main()

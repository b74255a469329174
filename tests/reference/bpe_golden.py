#!/usr/bin/env python3
"""bpe_golden.py - golden token ids for the text.bpe plugin, from the Hugging Face `tokenizers`
library itself.

No GPT-2 or Llama 3 tokenizer file is available offline, so the vocabulary and merges are
SmolLM2's (read from its GGUF with the gguf package), and the script builds one Hugging Face
tokenizer per pre-tokenizer text.bpe knows:

  gpt2    ByteLevel(use_regex=True): GPT-2's regex
  llama3  Split(Llama 3's regex) + ByteLevel(use_regex=False), ignore_merges=True as Llama 3
  smollm  Digits(individual_digits=True) + ByteLevel(use_regex=True): SmolLM2's own
  added   smollm plus non-special added tokens of every kind (lstrip, rstrip, normalized or
          not, overlapping each other and the special tokens)
  gpt2_split, digit_runs   GPT-2's regex as a Split step; Digits(individual_digits=False)
  unk, unk_fused   a tiny vocabulary with an unknown token, for the bytes it lacks

each saved as a tokenizer.json twice, with merges as "a b" strings and as ["a", "b"] pairs.
The library loads each file back and records its ids for every text of a corpus: the licence
texts under /usr/share/common-licenses, multilingual and emoji strings, whitespace, digits,
contractions, special-token spellings, characters at the edge of the library's Unicode tables,
and seeded random strings. Special tokens are never split out of the text
(encode_special_tokens), and no post-processor adds BOS/EOS: that is text.bpe's contract.

usage: bpe_golden.py SMOLLM2.gguf OUTDIR
(environment: BPE_GOLDEN_RANDOM, the number of random strings, default 400, and
BPE_GOLDEN_SEED, their seed: more of them for a longer hunt for differences)
writes OUTDIR/*.json and OUTDIR/golden.txt:
  T NAME HEX                      a corpus text (UTF-8 as hex), numbered from 0 in order
  C CONFIG FILE                   a tokenizer; the lines up to the next C belong to it
  I TEXT N ID...                  the ids of text TEXT
  R TEXT HEX                      decode(those ids), where it is not the text itself
  D N ID... HEX                   decode(ids, skip_special_tokens=True) as UTF-8 hex
"""
import json
import os
import random
import sys

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models
from tokenizers import pre_tokenizers as P

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

LICENSES = "/usr/share/common-licenses"

STRINGS = {
    "english": "Hello, world! This is a test of the tokenizer. It's 2024 and we're fine.",
    "contractions": "I'M sure YOU'RE right; WE'VE seen IT'S true. HE'LL go, SHE'D say DON'T. "
                    "they'll we'd you've I'm it's 'S 'T 'RE 'VE 'M 'LL 'D 'Ll 'rE 'ſ o'ſa x'SS",
    "apostrophes": "'hello' ''s '''t \"quoted\" rock'n'roll l'été l’été ’s 's's 'd'd",
    "french": "Ça va très bien, merci! L'élève a été reçu à l'université. Œuvre naïve.",
    "german": "Größenwahn und Übermut: Straße, Fußgänger, ÄÖÜ äöü ß ẞ.",
    "spanish": "¿Dónde está el niño? ¡Mañana será otro día! Pingüino, acción.",
    "vietnamese": "Tiếng Việt có dấu: Hà Nội, Thành phố Hồ Chí Minh, người Việt.",
    "greek": "Καλημέρα κόσμε· η γλώσσα μου έδωσαν ελληνική.",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖИК.",
    "chinese": "你好，世界！这是一个测试。我们在2024年测试分词器。",
    "japanese": "日本語のテキストとカタカナ、ひらがな。ｶﾀｶﾅ半角。東京都。",
    "korean": "한국어 텍스트입니다. 안녕하세요, 세계!",
    "arabic": "مرحبا بالعالم! هذا اختبار ١٢٣ للمحلل. السَّلَامُ عَلَيْكُمْ",
    "hebrew": "שלום עולם! זהו מבחן.",
    "devanagari": "नमस्ते दुनिया! यह एक परीक्षण है। संख्या १२३४५ हिन्दी।",
    "thai": "สวัสดีชาวโลก นี่คือการทดสอบ",
    "emoji": "Emoji: 😀👍🏽🇺🇸 and ❤️ 🎉🎉🎉 👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👩🏽‍💻 coder, 🧑‍🤝‍🧑.",
    "zwj_only": "\u200d\u200c\u200d a\u200db \ufeffBOM \u2060joiner",
    "combining": "e\u0301 a\u0308 n\u0303 \u0301lone Z\u0351\u0352\u0353algo",
    "whitespace": "  leading and trailing spaces  \n\n\n   \t\t \t x  \t\n \n",
    "tabs": "col1\tcol2\t\tcol3\n\tindented\n\t\t\tdeep\t \t",
    "crlf": "line one\r\nline two\r\n\r\nline four\r\n  \r\n\r \n\n\r",
    "unicode_space": "a\u00a0b\u3000c\u2028d\u2029e\u0085f\u000bg\u000ch\u1680i\u2003j\u202fk\u205fl\u180em",
    "digits": "12345 3.14159 1,000,000 007 0x1F 1e-9 2024-11-29 12:30:45 +49 (0) 30 1234567890",
    "long_digits": "9" * 40 + " " + "1234567890" * 30 + " x" + "0" * 7,
    "numerals": "٠١٢٣٤٥ ०१२३ ０１２３ ²³¹ ½¾ Ⅻⅻ ➀➁ 𝟘𝟙𝟚 ๑๒๓ 〇〡〢",
    "unicode_edge": "\U00010d40\U00010d41 \U00011de0\U00011de9 \U00016ff4 x\U00011de5y \U0001e4d0\U0001e4d1 "
                    "\U000105c0 \U0001e5d0 \U00016d70 a\U00016ff5b \U0001ccf0",
    "symbols": "Punctuation!!! ??? ... --- (parens) [brackets] {braces} <angle> @#$%^&*_+=~`|\\/",
    "code": "def foo(x):\n    return x ** 2  # comment\n\nclass Bar:\n\tpass\n\nif __name__ == '__main__':\n    print(foo(3))\n",
    "url": "See https://example.com/path?query=1&b=2#frag or mailto:someone@example.org.",
    "special_spellings": "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi<|im_end|>",
    "special_more": "<|endoftext|> <|endoftext|><|endoftext|> <repo_name>x<reponame><file_sep><filename>"
                    "<gh_stars>10<issue_start><issue_comment><issue_closed><jupyter_start>"
                    "<jupyter_text><jupyter_code><jupyter_output><jupyter_script><empty_output>",
    "special_partial": "<|im_sta <|im_start <|im_start| <<|im_end|>|> <|<|im_start|>|> |>",
    "added_words": "<user_tag> <user <user_tag><user_tag>x start started restart _start _st "
                   "a [LS] b   [LS]c [RS]   d [BOTH]  e \t[BOTH]\t f hello world helloworld "
                   "日本語 日本 <|im_start|> _st<|im_start|>start",
    "empty": "",
    "space": " ",
    "newline": "\n",
    "long_word": "a" * 3000 + "b" * 17 + " " + "ab" * 900,
    "long_spaces": " " * 1000 + "x" + "\n" * 300 + "y" + "\t " * 200,
    "long_punct": "!?" * 500 + ".",
}

# Characters the random strings are drawn from: every class the scanners tell apart.
ALPHABET = (list("abcXYZsStTrReEvVmMlLdD") + list("0123456789") + [" "] * 8 + ["\n", "\r", "\t"] +
            list("'''!?.,-_<>|()\"") + ["ſ", "é", "ß", "Ω", "ж", "中", "文", "ｱ", "١", "२", "²", "½",
                                        "\u00a0", "\u3000", "\u2028", "\u0301", "😀", "👍🏽", "\u200d",
                                        "\U00011de3", "\U00010d42", "\U0001e4d5", "\u180e", "\x0b",
                                        "<|im_start|>", "<|endoftext|>", "<user_tag>", "start",
                                        "_st", "[LS]", "[RS]", "[BOTH]", "hello world", "日本"])


def corpus():
    texts = []
    seen = set()
    for name in sorted(os.listdir(LICENSES)):
        path = os.path.realpath(os.path.join(LICENSES, name))
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding="utf-8") as f:
            texts.append((os.path.basename(path), f.read()))
    texts += list(STRINGS.items())
    rng = random.Random(int(os.environ.get("BPE_GOLDEN_SEED", "20241129")))
    for i in range(int(os.environ.get("BPE_GOLDEN_RANDOM", "400"))):
        n = rng.randrange(0, 40)
        texts.append((f"random{i}", "".join(rng.choice(ALPHABET) for _ in range(n))))
    # Any code point at all, next to the characters the patterns care about.
    for i in range(int(os.environ.get("BPE_GOLDEN_RANDOM", "400")) // 4):
        chars = []
        for _ in range(rng.randrange(0, 30)):
            cp = rng.choice([rng.randrange(0x80, 0x800), rng.randrange(0x800, 0x10000),
                             rng.randrange(0x10000, 0x110000), ord(rng.choice(" '\n\ta1"))])
            chars.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else " ")
        texts.append((f"codepoints{i}", "".join(chars)))
    return texts


def read_gguf(path):
    r = gguf.GGUFReader(path)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in r.fields["tokenizer.ggml.merges"].contents()]
    return tokens, types, merges


def build(tokens, types, merges, config):
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=config == "llama3"))
    if config == "gpt2":
        tok.pre_tokenizer = P.ByteLevel(add_prefix_space=False, use_regex=True)
    elif config == "llama3":
        tok.pre_tokenizer = P.Sequence([P.Split(Regex(LLAMA3), "isolated", invert=False),
                                        P.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif config == "gpt2_split":
        tok.pre_tokenizer = P.Sequence([P.Split(Regex(GPT2), "isolated", invert=False),
                                        P.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = P.Sequence([P.Digits(individual_digits=config != "digit_runs"),
                                        P.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    if config == "added":
        tok.add_tokens([
            AddedToken("<user_tag>", special=False, normalized=False),
            AddedToken("<user", special=False, normalized=False),
            AddedToken("start", special=False, normalized=False),   # in the vocabulary already
            AddedToken("_st", special=False, normalized=True),      # matched in the second pass
            AddedToken("[LS]", special=False, lstrip=True, normalized=False),
            AddedToken("[RS]", special=False, rstrip=True, normalized=False),
            AddedToken("[BOTH]", special=False, lstrip=True, rstrip=True, normalized=True),
            AddedToken("hello world", special=False, normalized=False),
            AddedToken("日本", special=False, normalized=True),
        ])
    return tok


def build_unk(fuse):
    """A tiny vocabulary missing most bytes, with an unknown token (fused or not)."""
    vocab = {"a": 0, "b": 1, "ab": 2, "<unk>": 3, "Ġ": 4, "Ġab": 5, "c": 6}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("Ġ", "ab")], unk_token="<unk>",
                               fuse_unk=fuse))
    tok.pre_tokenizer = P.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def save_both(tok, outdir, config):
    """The tokenizer as two files, merges as ["a", "b"] pairs and as "a b" strings."""
    j = json.loads(tok.to_str())
    files = []
    for form in ("pairs", "strings"):
        merges = j["model"]["merges"]
        if form == "strings":
            j["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in merges]
        else:
            j["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in merges]
        name = f"{config}_{form}.json"
        with open(os.path.join(outdir, name), "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        files.append(name)
    return files


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bpe_golden.py SMOLLM2.gguf OUTDIR")
    gguf_path, outdir = sys.argv[1], sys.argv[2]
    if not os.path.isfile(gguf_path):
        sys.exit(f"{gguf_path}: missing (scripts/test.sh fetches SmolLM2's GGUF)")
    os.makedirs(outdir, exist_ok=True)
    tokens, types, merges = read_gguf(gguf_path)
    texts = corpus()
    rng = random.Random(7)
    lines = [f"T {name} {text.encode('utf-8').hex()}" for name, text in texts]
    summary = []
    for config in ("gpt2", "llama3", "smollm", "added", "gpt2_split", "digit_runs", "unk_fused",
                   "unk"):
        if config.startswith("unk"):
            built = build_unk(config == "unk_fused")
        else:
            built = build(tokens, types, merges, config)
        files = save_both(built, outdir, config)
        if config not in ("gpt2", "llama3", "smollm", "added"):
            files = files[:1]
        if config == "smollm":
            files.append(os.path.abspath(gguf_path))
        for file in files:
            # Ids from the saved file as the library reads it back, not from the object built.
            path = file if os.path.isabs(file) else os.path.join(outdir, file)
            tok = built if file.endswith(".gguf") else Tokenizer.from_file(path)
            tok.encode_special_tokens = True
            name = "gguf" if file.endswith(".gguf") else file[:-5]
            lines.append(f"C {name} {file}")
            n_ids = 0
            for i, (_, text) in enumerate(texts):
                ids = tok.encode(text, add_special_tokens=False).ids
                n_ids += len(ids)
                lines.append(f"I {i} {len(ids)} " + " ".join(map(str, ids)))
                back = tok.decode(ids, skip_special_tokens=True)
                if back != text:  # an added token that strips spaces does not give them back
                    lines.append(f"R {i} {back.encode('utf-8').hex()}")
            # Decoding arbitrary id sequences: bytes cut mid-character, special tokens, added.
            size = tok.get_vocab_size(with_added_tokens=True)
            singles = [i for i in range(size) if len(tok.decode([i])) == 1] or [0]
            for _ in range(60):
                ids = [rng.choice([rng.randrange(size), rng.randrange(min(17, size)),
                                   rng.choice(singles), rng.randrange(min(256, size - 1), size)])
                       for _ in range(rng.randrange(1, 12))]
                text = tok.decode(ids, skip_special_tokens=True)
                lines.append(f"D {len(ids)} " + " ".join(map(str, ids)) + " " +
                             text.encode("utf-8").hex())
            summary.append(f"{name}: {len(texts)} texts, {n_ids} ids")
    with open(os.path.join(outdir, "golden.txt.part"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(outdir, "golden.txt.part"), os.path.join(outdir, "golden.txt"))
    print("bpe_golden.py: tokenizers", __import__("tokenizers").__version__, "; ".join(summary))


if __name__ == "__main__":
    main()

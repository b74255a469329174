#!/usr/bin/env python3
"""gguf_dequant.py - tensors of a GGUF file dequantised by the gguf package (llama.cpp's own
Python reader), the reference the engine's dequantisation must equal bit for bit.

usage: gguf_dequant.py FILE.gguf OUT_DIR [NAME ...]
       writes OUT_DIR/NAME.npy (float32, flat) for each NAME (default: every tensor) and
       OUT_DIR/list.txt with one "NAME TYPE" line per tensor written
"""
import os
import sys

import numpy as np
import gguf


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("usage: ")[1])
    path, out = sys.argv[1], sys.argv[2]
    wanted = set(sys.argv[3:])
    r = gguf.GGUFReader(path)
    with open(os.path.join(out, "list.txt"), "w") as lst:
        for t in r.tensors:
            if wanted and t.name not in wanted:
                continue
            x = gguf.quants.dequantize(t.data, t.tensor_type)
            np.save(os.path.join(out, t.name + ".npy"), np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
            lst.write(f"{t.name} {t.tensor_type.name}\n")


if __name__ == "__main__":
    main()

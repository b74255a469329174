"""actions.py - what decoder plugins emit, as plain Python objects.

The library hands an action's payload to the session callback as pointers valid during the
call only (plugin.h, "Memory"), so each event is copied here into a dataclass holding str
and numpy arrays that stay valid for as long as Python keeps them. Every action carries t
(the stream time it takes effect, seconds) and the modality of the segment it came from.
"""
import ctypes
from dataclasses import dataclass

import numpy as np

from . import _capi


@dataclass
class NamedAction:
    """A discrete action by name ("raise_left_hand"); index is its place in the plugin's list."""
    t: float
    name: str
    index: int
    modality: str = ""


@dataclass
class VectorAction:
    """A float vector (joint targets, a sensor reading), float32 of shape (n,)."""
    t: float
    values: np.ndarray
    modality: str = ""


@dataclass
class TextAction:
    """UTF-8 text, always whole characters."""
    t: float
    text: str
    modality: str = ""


@dataclass
class AudioAction:
    """Mono PCM samples, float32 in [-1, 1] of shape (n,), at rate Hz."""
    t: float
    samples: np.ndarray
    rate: int
    modality: str = ""


@dataclass
class ImageAction:
    """A picture, uint8 of shape (height, width, channels)."""
    t: float
    pixels: np.ndarray
    modality: str = ""


Action = NamedAction | VectorAction | TextAction | AudioAction | ImageAction


def _floats(ptr, n):
    if not n or not ptr:
        return np.zeros(0, np.float32)
    return np.frombuffer(ctypes.string_at(ptr, 4 * n), np.float32).copy()


def from_c(a, modality):
    """A copy of the sn_action a (a ctypes Action) as one of the dataclasses above."""
    t = float(a.t)
    if a.kind == _capi.ACTION_NAMED:
        return NamedAction(t, _capi.pystr(a.named.name) or "", int(a.named.index), modality)
    if a.kind == _capi.ACTION_VECTOR:
        return VectorAction(t, _floats(a.vector.values, a.vector.n), modality)
    if a.kind == _capi.ACTION_TEXT:
        raw = ctypes.string_at(a.text.utf8, a.text.len) if a.text.len else b""
        return TextAction(t, raw.decode("utf-8", "replace"), modality)
    if a.kind == _capi.ACTION_AUDIO:
        return AudioAction(t, _floats(a.audio.samples, a.audio.n_samples),
                           int(a.audio.sample_rate), modality)
    if a.kind == _capi.ACTION_IMAGE:
        im = a.image
        h, w, c, stride = int(im.height), int(im.width), int(im.channels), int(im.stride)
        if not h or not w or not im.pixels:
            return ImageAction(t, np.zeros((h, w, c), np.uint8), modality)
        rows = np.frombuffer(ctypes.string_at(im.pixels, stride * (h - 1) + w * c), np.uint8)
        # rows are stride bytes apart; the last one may end right after its pixels
        view = np.lib.stride_tricks.as_strided(rows, (h, w, c), (stride, c, 1))
        return ImageAction(t, view.copy(), modality)
    raise ValueError(f"unknown action kind {a.kind} from modality '{modality}' "
                     "(a plugin newer than this binding?)")

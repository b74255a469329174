"""media.py - Python values to sn_media, the stimuli a session is fed.

  str or bytes                      text (UTF-8)
  1-D float array + rate            audio: mono samples in [-1, 1] at rate Hz (a 2-D
                                    (samples, channels) array is mixed down to mono; int16
                                    is scaled by 1/32768)
  uint8 array (H, W) or (H, W, C)   image: gray, gray+alpha, RGB or RGBA, row-major
  float array (ticks,) or (ticks, dims) [+ rate]   series: sensor readings

A float array is audio or a series depending on what the modality's plugin accepts (its
media_kinds); pass kind="audio" or kind="series" when a plugin takes both. The returned
Media points into the returned numpy buffer: keep both alive for the library call.
"""
import numpy as np

from . import _capi

KINDS = {"text": _capi.MEDIA_TEXT, "audio": _capi.MEDIA_AUDIO, "image": _capi.MEDIA_IMAGE,
         "series": _capi.MEDIA_SERIES}
KIND_NAMES = {v: k for k, v in KINDS.items()}


def accepted_names(media_kinds):
    return [n for n, k in KINDS.items() if media_kinds & (1 << k)] or ["nothing (a decoder only)"]


def choose_kind(value, media_kinds, rate, modality):
    """The media kind name for value, fed to a plugin accepting media_kinds (a bit set)."""
    ok = lambda k: bool(media_kinds & (1 << KINDS[k]))
    if isinstance(value, (str, bytes, bytearray)):
        return "text"
    a = np.asarray(value)
    if a.dtype == np.uint8 and a.ndim in (2, 3) and ok("image"):
        return "image"
    if a.dtype.kind in "fiu":
        if ok("audio") and a.ndim in (1, 2) and (rate is not None or not ok("series")):
            return "audio"
        if ok("series") and a.ndim in (1, 2):
            return "series"
        if ok("image") and a.ndim in (2, 3):
            return "image"
    raise TypeError(f"modality '{modality}' takes {', '.join(accepted_names(media_kinds))}; "
                    f"cannot feed it a {type(value).__name__}"
                    + (f" of dtype {a.dtype} and shape {a.shape}" if hasattr(value, "shape") else ""))


def to_media(value, kind, rate=None, t=0.0):
    """(Media, buffer) for value as media kind ("text", "audio", "image", "series")."""
    m = _capi.Media()
    m.t = float(t)
    if kind == "text":
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        buf = np.frombuffer(raw or b"\0", np.uint8)  # never a NULL pointer, even for ""
        m.kind = _capi.MEDIA_TEXT
        m.text.utf8 = buf.ctypes.data
        m.text.len = len(raw)
        return m, buf
    a = np.asarray(value)
    if kind == "audio":
        if rate is None or rate <= 0:
            raise ValueError("audio needs its sample rate: feed(modality, samples, rate=16000)")
        if a.dtype == np.int16:
            a = a.astype(np.float32) / 32768.0
        if a.ndim == 2:
            a = a.mean(axis=1)
        if a.ndim != 1:
            raise ValueError(f"audio must be 1-D samples or (samples, channels), not shape {a.shape}")
        buf = np.ascontiguousarray(a, np.float32)
        m.kind = _capi.MEDIA_AUDIO
        m.audio.samples = buf.ctypes.data if buf.size else None
        m.audio.n_samples = buf.size
        m.audio.sample_rate = int(rate)
        return m, buf
    if kind == "image":
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"an image is (height, width) or (height, width, 1..4 channels), not shape {a.shape}")
        if a.dtype != np.uint8:
            raise TypeError(f"image pixels must be uint8, not {a.dtype}")
        buf = np.ascontiguousarray(a)
        h, w, c = buf.shape
        m.kind = _capi.MEDIA_IMAGE
        m.image.pixels = buf.ctypes.data if buf.size else None
        m.image.width, m.image.height, m.image.channels = w, h, c
        m.image.stride = w * c
        return m, buf
    if kind == "series":
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(f"a series is (ticks,) or (ticks, dims), not shape {a.shape}")
        buf = np.ascontiguousarray(a, np.float32)
        m.kind = _capi.MEDIA_SERIES
        m.series.values = buf.ctypes.data if buf.size else None
        m.series.n_ticks, m.series.dims = buf.shape
        m.series.rate_hz = float(rate or 0.0)
        return m, buf
    raise ValueError(f"unknown media kind '{kind}' (text, audio, image or series)")

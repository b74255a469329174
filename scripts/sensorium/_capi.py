"""_capi.py - the ctypes mirror of core/include/sensorium/sensorium.h and plugin.h.

Finds and loads libsensorium.so, declares the structs the binding passes by pointer or by
value (media, actions, engine and session options, callbacks) field for field in the
headers' order, gives every function it calls its argument and return types, and turns a
failed status into SensoriumError. Nothing else in the package touches ctypes prototypes.
"""
import ctypes
import ctypes.util
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, Union, c_char_p, c_double, c_float, c_int,
                    c_int32, c_long, c_size_t, c_uint32, c_uint64, c_void_p)

# sn_status, append-only in the header; index = value.
STATUS_NAMES = ("SN_OK", "SN_ERR_INVALID_ARG", "SN_ERR_NOMEM", "SN_ERR_IO", "SN_ERR_FORMAT",
                "SN_ERR_UNSUPPORTED", "SN_ERR_NOT_FOUND", "SN_ERR_PLUGIN", "SN_ERR_CONFIG",
                "SN_ERR_VOCAB", "SN_ERR_INTERNAL")

# sn_stop_reason, by value.
STOP_REASONS = ("none", "eos", "max_tokens", "segments", "error", "caller")

# sn_log_level, by value.
LOG_LEVELS = ("error", "warn", "info", "debug")

MEDIA_TEXT, MEDIA_AUDIO, MEDIA_IMAGE, MEDIA_SERIES = 1, 2, 3, 4
ACTION_NAMED, ACTION_VECTOR, ACTION_AUDIO, ACTION_TEXT, ACTION_IMAGE = 1, 2, 3, 4, 5
TOKEN_BOS, TOKEN_EOS, TOKEN_PAD = 2, 3, 4


class SensoriumError(Exception):
    """A failed library call: status (int), status_name ("SN_ERR_IO"), status_str ("I/O
    error", the library's sn_status_str) and message (the library's one-line sn_errmsg)."""

    def __init__(self, status, message, status_str=None):
        self.status = int(status)
        self.status_name = (STATUS_NAMES[self.status] if 0 <= self.status < len(STATUS_NAMES)
                            else f"SN_STATUS_{self.status}")
        self.status_str = status_str or self.status_name
        self.message = message
        super().__init__(f"{self.status_name}: {message}" if message else self.status_name)


# ---- plugin.h ---------------------------------------------------------------------------

class MediaText(Structure):
    _fields_ = [("utf8", c_void_p), ("len", c_size_t)]


class MediaAudio(Structure):
    _fields_ = [("samples", c_void_p), ("n_samples", c_size_t), ("sample_rate", c_uint32)]


class MediaImage(Structure):
    _fields_ = [("pixels", c_void_p), ("width", c_uint32), ("height", c_uint32),
                ("channels", c_uint32), ("stride", c_size_t)]


class MediaSeries(Structure):
    _fields_ = [("values", c_void_p), ("n_ticks", c_size_t), ("dims", c_uint32),
                ("rate_hz", c_double)]


class _MediaUnion(Union):
    _fields_ = [("text", MediaText), ("audio", MediaAudio), ("image", MediaImage),
                ("series", MediaSeries)]


class Media(Structure):
    _anonymous_ = ("u",)
    _fields_ = [("kind", c_int), ("t", c_double), ("u", _MediaUnion)]


class ActionNamed(Structure):
    _fields_ = [("name", c_char_p), ("index", c_uint32)]


class ActionVector(Structure):
    _fields_ = [("values", c_void_p), ("n", c_size_t)]


class _ActionUnion(Union):
    _fields_ = [("named", ActionNamed), ("vector", ActionVector), ("audio", MediaAudio),
                ("text", MediaText), ("image", MediaImage)]


class Action(Structure):
    _anonymous_ = ("u",)
    _fields_ = [("kind", c_int), ("t", c_double), ("u", _ActionUnion)]


# ---- sensorium.h ------------------------------------------------------------------------

class PluginInfo(Structure):
    _fields_ = [("name", c_char_p), ("version", c_char_p), ("description", c_char_p),
                ("file", c_char_p), ("kind", c_uint32), ("media_kinds", c_uint32),
                ("abi_major", c_uint32), ("abi_minor", c_uint32)]


class VocabSegment(Structure):
    _fields_ = [("modality", c_char_p), ("plugin", c_char_p), ("config_json", c_char_p),
                ("start", c_uint32), ("size", c_uint32), ("begin", c_int32), ("end", c_int32)]


class EngineOpts(Structure):
    _fields_ = [("model_dir", c_char_p), ("plugin_path", c_char_p), ("backend", c_char_p),
                ("threads", c_int32), ("tp", c_int32), ("kv_bytes", c_size_t),
                ("max_sessions", c_int32), ("max_batch_tokens", c_int32), ("keep_logits", c_int),
                ("dp", c_int32)]


class SamplingParams(Structure):
    _fields_ = [("temperature", c_float), ("top_k", c_int32), ("top_p", c_float),
                ("min_p", c_float), ("repetition_penalty", c_float)]


ON_TOKEN = CFUNCTYPE(None, c_void_p, c_void_p, c_int32)
ON_ACTION = CFUNCTYPE(c_int, c_void_p, c_void_p, c_char_p, POINTER(Action))
ON_STOP = CFUNCTYPE(None, c_void_p, c_void_p, c_int)
LOG_FN = CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_char_p)


class SessionCallbacks(Structure):
    _fields_ = [("ctx", c_void_p), ("on_token", ON_TOKEN), ("on_action", ON_ACTION),
                ("on_stop", ON_STOP)]


class SessionOpts(Structure):
    _fields_ = [("seed", c_uint64), ("sampling", SamplingParams),
                ("callbacks", SessionCallbacks), ("no_bos", c_int)]


# name: (restype, argtypes). Functions returning sn_status get restype c_int.
_PROTOTYPES = {
    "sn_status_str": (c_char_p, [c_int]),
    "sn_errmsg": (c_char_p, []),
    "sn_version": (c_char_p, []),
    "sn_free": (None, [c_void_p]),
    "sn_set_log_handler": (None, [LOG_FN, c_void_p]),
    "sn_plugins_count": (c_size_t, [c_void_p]),
    "sn_plugins_get": (c_int, [c_void_p, c_size_t, POINTER(PluginInfo)]),
    "sn_plugins_find": (c_long, [c_void_p, c_char_p]),
    "sn_vocab_size": (c_uint32, [c_void_p]),
    "sn_vocab_segment_count": (c_size_t, [c_void_p]),
    "sn_vocab_segment_get": (c_int, [c_void_p, c_size_t, POINTER(VocabSegment)]),
    "sn_vocab_find": (c_long, [c_void_p, c_char_p]),
    "sn_vocab_special": (c_int32, [c_void_p, c_int]),
    "sn_engine_opts_default": (EngineOpts, []),
    "sn_sampling_params_default": (SamplingParams, []),
    "sn_session_opts_default": (SessionOpts, []),
    "sn_engine_open": (c_int, [POINTER(EngineOpts), POINTER(c_void_p)]),
    "sn_engine_close": (None, [c_void_p]),
    "sn_engine_vocab": (c_void_p, [c_void_p]),
    "sn_engine_plugins": (c_void_p, [c_void_p]),
    "sn_engine_describe": (c_char_p, [c_void_p]),
    "sn_engine_step": (c_int, [c_void_p, POINTER(c_int32)]),
    "sn_engine_run": (c_int, [c_void_p]),
    "sn_session_open": (c_int, [c_void_p, POINTER(SessionOpts), POINTER(c_void_p)]),
    "sn_session_close": (None, [c_void_p]),
    "sn_session_set_sampling": (c_int, [c_void_p, c_char_p, POINTER(SamplingParams)]),
    "sn_session_feed": (c_int, [c_void_p, c_char_p, POINTER(Media)]),
    "sn_session_feed_tokens": (c_int, [c_void_p, POINTER(c_int32), c_size_t]),
    "sn_session_generate": (c_int, [c_void_p, POINTER(c_char_p), c_size_t, c_int32, c_int32]),
    "sn_session_busy": (c_int, [c_void_p]),
    "sn_session_stop_reason": (c_int, [c_void_p]),
    "sn_session_error": (c_char_p, [c_void_p]),
    "sn_session_tokens": (POINTER(c_int32), [c_void_p, POINTER(c_size_t)]),
    "sn_session_logits": (POINTER(c_float), [c_void_p, POINTER(c_int32)]),
    "sn_media_read": (c_int, [c_char_p, POINTER(Media)]),
    "sn_media_release": (None, [POINTER(Media)]),
    "sn_chat_open": (c_int, [c_char_p, POINTER(c_void_p)]),
    "sn_chat_close": (None, [c_void_p]),
    "sn_chat_family": (c_char_p, [c_void_p]),
    "sn_chat_feed_turn": (c_int, [c_void_p, c_void_p, c_char_p, c_char_p, c_int]),
}

_lib = None
_lib_path = None


def _candidates():
    """Where the library may be, in the order tried: SENSORIUM_LIB, the repository's build
    folder (this file is REPO/scripts/sensorium/_capi.py), then the system's search."""
    env = os.environ.get("SENSORIUM_LIB")
    if env:
        return [("SENSORIUM_LIB", env)]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = [("the repository's build", os.path.join(repo, "build", "core", "libsensorium.so"))]
    found = ctypes.util.find_library("sensorium")
    if found:
        out.append(("ctypes.util.find_library", found))
    return out


def lib():
    """The loaded library, loaded and declared on first use."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    tried = []
    for where, path in _candidates():
        if where != "ctypes.util.find_library" and not os.path.exists(path):
            tried.append(f"{path} ({where}): no such file")
            continue
        try:
            handle = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({where}): {e}")
            continue
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(handle, name)
            except AttributeError:  # an older library: only what uses it fails, when used
                continue
            fn.restype = restype
            fn.argtypes = argtypes
        _lib, _lib_path = handle, path
        return _lib
    raise OSError("libsensorium.so not found: " + "; ".join(tried or ["find_library found nothing"]) +
                  ". Build it (cmake -S . -B build -G Ninja && ninja -C build) or set SENSORIUM_LIB "
                  "to the library's path")


def library_path():
    """The path the library was loaded from (loading it if need be)."""
    lib()
    return _lib_path


def errmsg():
    return (lib().sn_errmsg() or b"").decode("utf-8", "replace")


def check(status):
    """Raises SensoriumError for a failed status, with the calling thread's sn_errmsg; the
    message is thread-local in the library, and ctypes calls run on the calling thread."""
    if status != 0:
        L = lib()
        raise SensoriumError(status, errmsg(), (L.sn_status_str(status) or b"").decode())
    return status


def cstr(s):
    """str -> bytes for a const char * argument (None stays NULL)."""
    if s is None:
        return None
    return os.fsencode(s) if isinstance(s, os.PathLike) else (s.encode() if isinstance(s, str) else bytes(s))


def pystr(b):
    return b.decode("utf-8", "replace") if b is not None else None

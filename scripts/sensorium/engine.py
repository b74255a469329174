"""engine.py - Engine and Session: a model, its plugins and the sessions it runs.

The Python side of the engine section of sensorium.h. An Engine owns one sn_engine; each
Session owns one sn_session of it and the ctypes callback objects the library calls into,
which must live exactly as long as the C session (a freed callback called from C crashes the
process): a Session therefore closes its C session before its callbacks go, the callbacks
reach the Session only through a weak reference (no cycle, so a dropped Session is closed at
once and its slot is free again), and Engine.close() closes every session still open before
the engine itself. The engine finds its open sessions through a table of handle cells that it
holds strongly, not through weak references alone: the garbage collector clears weak
references before it runs finalizers, and at interpreter exit an engine may be finalized
before its sessions (sn_engine_close frees them; the Session then sees its cell emptied).

Python exceptions cannot cross the C stack: a callback that raises stops its session's
generation (on_action returns nonzero, SN_STOP_CALLER) and the exception is re-raised by the
Engine.step() or Engine.run() that was running.
"""
import ctypes
import gc
import json
import os
import weakref
from ctypes import byref, c_char_p, c_int32, c_size_t, c_void_p
from dataclasses import dataclass

import numpy as np

from . import _capi, actions, media
from ._capi import check, cstr, pystr


@dataclass(frozen=True)
class Modality:
    """One entry of a model's vocabulary layout: global ids start..start+size-1, markers
    begin and end (-1 for an open segment), the plugin and what media it accepts."""
    name: str
    plugin: str
    config: dict
    start: int
    size: int
    begin: int
    end: int
    media: tuple        # media kind names the plugin tokenizes ("audio", ...)
    decoder: bool       # whether the modality can be generated


def version():
    """The library's version string."""
    return pystr(_capi.lib().sn_version())


_log_fn = None  # the ctypes callback installed with sn_set_log_handler, kept alive here


def set_log_handler(fn):
    """Receives what plugins and the engine log: fn(level, source, message) with level one
    of "error", "warn", "info", "debug". The library prints nothing itself; without a
    handler its log lines are dropped. May be called from any thread. None removes it."""
    global _log_fn
    L = _capi.lib()
    if fn is None:
        L.sn_set_log_handler(_capi.LOG_FN(), None)
        _log_fn = None
        return

    def trampoline(ctx, level, source, message):
        try:
            name = _capi.LOG_LEVELS[level] if 0 <= level < len(_capi.LOG_LEVELS) else str(level)
            fn(name, pystr(source) or "", pystr(message) or "")
        except Exception:  # an exception cannot cross the C stack; a log line is not worth a crash
            pass

    new = _capi.LOG_FN(trampoline)
    L.sn_set_log_handler(new, None)
    _log_fn = new


def _sampling(base=None, **kw):
    """An sn_sampling_params from the library's defaults (or base) and the given fields."""
    p = _capi.lib().sn_sampling_params_default() if base is None else base
    for k, v in kw.items():
        if v is not None:
            setattr(p, k, v)
    return p


class _Closing:
    """close() on leaving a with-block and when collected (errors then are swallowed: the
    interpreter may be shutting down)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Engine(_Closing):
    """A model, its plugins and a CPU backend; runs the token streams of many sessions in
    batched steps. Use as a context manager or call close().

    model        a Sensorium model folder, a Hugging Face folder or a .gguf file
    plugin_path  extra plugin folders or .so files, colon-separated (before
                 SENSORIUM_PLUGIN_PATH and the build's plugins folder, which the library
                 always searches: see sn_plugins_open)
    threads      CPU threads, 0 for all cores
    max_sessions sessions open at once
    tp           tensor-parallel shards
    dp           data-parallel replicas (each with its own weights and KV pool of kv_mb;
                 GPUs r*tp... for replica r), sessions spread over them
    kv_mb        KV-cache budget in MiB, 0 for a full context per session
    backend      "auto", "cpu" or "cuda"
    max_batch_tokens  tokens per step, 0 for the library's default (256)
    keep_logits  sessions keep the logits of their latest position (Session.logits)
    """

    def __init__(self, model, plugin_path=None, threads=0, max_sessions=8, tp=1, kv_mb=0, *,
                 backend="auto", max_batch_tokens=0, keep_logits=True, dp=1):
        L = _capi.lib()
        self._h = None
        self._open = {}  # id(cell) -> (_Cell, weakref to its Session): the open sessions
        self.model = os.fspath(model)
        opts = L.sn_engine_opts_default()
        # the bytes must outlive sn_engine_open only; held on self to make that plain
        self._args = (cstr(self.model), cstr(plugin_path), cstr(backend))
        opts.model_dir, opts.plugin_path, opts.backend = self._args
        opts.threads = int(threads)
        opts.tp = int(tp)
        opts.dp = int(dp)
        opts.kv_bytes = int(kv_mb) << 20
        opts.max_sessions = int(max_sessions)
        opts.max_batch_tokens = int(max_batch_tokens)
        opts.keep_logits = 1 if keep_logits else 0
        h = c_void_p()
        check(L.sn_engine_open(byref(opts), byref(h)))
        self._h = h.value
        self.max_sessions = int(max_sessions)
        self.describe = pystr(L.sn_engine_describe(self._h))
        self.modalities = self._read_layout()
        self._vocab_size = None

    # ---- the model ------------------------------------------------------------------------

    def _read_layout(self):
        L = _capi.lib()
        vocab = L.sn_engine_vocab(self._h)
        plugins = L.sn_engine_plugins(self._h)
        out = {}
        if not vocab:
            return out
        for i in range(L.sn_vocab_segment_count(vocab)):
            seg = _capi.VocabSegment()
            check(L.sn_vocab_segment_get(vocab, i, byref(seg)))
            kinds, decoder = 0, False
            j = L.sn_plugins_find(plugins, seg.plugin)
            if j >= 0:
                info = _capi.PluginInfo()
                check(L.sn_plugins_get(plugins, j, byref(info)))
                kinds, decoder = info.media_kinds, bool(info.kind & 2)
            name = pystr(seg.modality)
            out[name] = Modality(name, pystr(seg.plugin), json.loads(pystr(seg.config_json) or "{}"),
                                 seg.start, seg.size, seg.begin, seg.end,
                                 tuple(n for n, k in media.KINDS.items() if kinds & (1 << k)),
                                 decoder)
        return out

    def _special(self, role):
        vocab = _capi.lib().sn_engine_vocab(self._handle())
        i = _capi.lib().sn_vocab_special(vocab, role) if vocab else -1
        return None if i < 0 else int(i)

    @property
    def bos(self):
        """The BOS id, or None (a model without a layout, or a layout without one)."""
        return self._special(_capi.TOKEN_BOS)

    @property
    def eos(self):
        return self._special(_capi.TOKEN_EOS)

    @property
    def pad(self):
        return self._special(_capi.TOKEN_PAD)

    @property
    def vocab_size(self):
        """The model's vocabulary size (rows of its embedding)."""
        if self._vocab_size is None and self.modalities:
            self._vocab_size = int(_capi.lib().sn_vocab_size(_capi.lib().sn_engine_vocab(self._h)))
        if self._vocab_size is None:
            with self.session(no_bos=True) as s:  # the API reports it through a session
                n = c_int32()
                _capi.lib().sn_session_logits(s._handle(), byref(n))
                self._vocab_size = int(n.value)
        return self._vocab_size

    def plugins(self):
        """Every plugin the engine loaded: a list of dicts (name, version, description,
        file, kind, media)."""
        L = _capi.lib()
        ps = L.sn_engine_plugins(self._handle())
        out = []
        for i in range(L.sn_plugins_count(ps)):
            info = _capi.PluginInfo()
            check(L.sn_plugins_get(ps, i, byref(info)))
            out.append({"name": pystr(info.name), "version": pystr(info.version),
                        "description": pystr(info.description), "file": pystr(info.file),
                        "kind": ("tokenizer " if info.kind & 1 else "") + ("decoder" if info.kind & 2 else ""),
                        "media": [n for n, k in media.KINDS.items() if info.media_kinds & (1 << k)]})
        return out

    # ---- sessions and steps ---------------------------------------------------------------

    def session(self, seed=0, no_bos=False, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                repetition_penalty=1.0, on_token=None, on_action=None, on_stop=None,
                collect_actions=True):
        """A new Session (see Session). Sampling: temperature 0 is greedy; top_k 0, top_p 1,
        min_p 0 and repetition_penalty 1 are off. Callbacks:
          on_token(token)   every sampled token (global id)
          on_action(action) every decoded action (a dataclass of sensorium.actions); a true
                            return stops the session's generation (stop_reason "caller")
          on_stop(reason)   the generation ended (reason as Session.stop_reason)
        With collect_actions, actions are also appended to Session.actions."""
        return Session(self, seed=seed, no_bos=no_bos,
                       sampling=_sampling(temperature=temperature, top_k=top_k, top_p=top_p,
                                          min_p=min_p, repetition_penalty=repetition_penalty),
                       on_token=on_token, on_action=on_action, on_stop=on_stop,
                       collect_actions=collect_actions)

    def step(self):
        """One batched step over every session with work; returns the tokens it processed
        (0: idle). Re-raises an exception a callback raised during the step."""
        n = c_int32()
        check(_capi.lib().sn_engine_step(self._handle(), byref(n)))
        for s in self._live():
            if s._exc is not None:
                e, s._exc = s._exc, None
                raise e
        return int(n.value)

    def run(self):
        """Steps until no session has work (as sn_engine_run, but a step at a time, so that
        a callback's exception or Ctrl-C surfaces between steps)."""
        while True:
            self.step()
            if not any(s.busy for s in self._live()):
                return

    # ---- life cycle -----------------------------------------------------------------------

    def _handle(self):
        if self._h is None:
            raise ValueError("the engine is closed")
        return self._h

    def _live(self):
        return [s for s in (ref() for _, ref in list(self._open.values())) if s is not None]

    @property
    def closed(self):
        return self._h is None

    def close(self):
        """Closes every open session, then the engine. Safe to call twice."""
        if self._h is None:
            return
        for cell, ref in list(self._open.values()):
            s = ref()
            if s is not None:
                s.close()  # keeps its results readable
            elif cell.h is not None:  # its Session is being collected: close the C side now
                _capi.lib().sn_session_close(cell.h)
                cell.h = None
        self._open.clear()
        _capi.lib().sn_engine_close(self._h)
        self._h = None

    def __repr__(self):
        return f"Engine({self.model!r}{', closed' if self.closed else ''})"


class _Cell:
    """An open sn_session handle, shared by a Session and its Engine; None once closed."""
    __slots__ = ("h",)

    def __init__(self, h):
        self.h = h


class Session(_Closing):
    """One token stream of an Engine: a context fed with stimuli and token ids, and the
    generations asked of it. Made by Engine.session(); use as a context manager or call
    close(). After close() the results (tokens, logits, stop_reason, error, actions) stay
    readable as they were."""

    def __init__(self, engine, seed, no_bos, sampling, on_token, on_action, on_stop,
                 collect_actions):
        L = _capi.lib()
        self.engine = engine  # a strong reference: the engine outlives its sessions
        self._cell = None
        self._exc = None
        self._gen_start = 0
        self._final = None
        self.actions = []
        self._collect = collect_actions
        self._user = (on_token, on_action, on_stop)
        me = weakref.ref(self)  # callbacks must not keep the session alive (see the top)

        def tok(ctx, sess, token):
            s = me()
            if s is not None and s._exc is None and s._user[0] is not None:
                try:
                    s._user[0](int(token))
                except BaseException as e:
                    s._exc = e

        def act(ctx, sess, modality, a):
            s = me()
            if s is None or s._exc is not None:
                return 1
            try:
                obj = actions.from_c(a.contents, pystr(modality) or "")
                if s._collect:
                    s.actions.append(obj)
                return 1 if s._user[1] is not None and s._user[1](obj) else 0
            except BaseException as e:
                s._exc = e
                return 1

        def stop(ctx, sess, reason):
            s = me()
            if s is not None and s._exc is None and s._user[2] is not None:
                try:
                    s._user[2](_capi.STOP_REASONS[reason] if 0 <= reason < len(_capi.STOP_REASONS) else str(reason))
                except BaseException as e:
                    s._exc = e

        opts = L.sn_session_opts_default()
        opts.seed = int(seed)
        opts.sampling = sampling
        opts.no_bos = 1 if no_bos else 0
        # NULL where nobody listens: no per-token trip into Python for nothing
        self._callbacks = (_capi.ON_TOKEN(tok) if on_token else _capi.ON_TOKEN(),
                           _capi.ON_ACTION(act), _capi.ON_STOP(stop) if on_stop else _capi.ON_STOP())
        opts.callbacks.on_token, opts.callbacks.on_action, opts.callbacks.on_stop = self._callbacks
        h = c_void_p()
        st = L.sn_session_open(engine._handle(), byref(opts), byref(h))
        if st != 0 and "slots" in _capi.errmsg():
            gc.collect()  # sessions dropped inside reference cycles free their slots here
            st = L.sn_session_open(engine._handle(), byref(opts), byref(h))
        check(st)
        self._cell = _Cell(h.value)
        engine._open[id(self._cell)] = (self._cell, weakref.ref(self))

    @property
    def _h(self):
        return self._cell.h if self._cell is not None else None

    def _handle(self):
        if self._h is None:
            raise ValueError("the session is closed")
        return self._h

    # ---- input ----------------------------------------------------------------------------

    def feed(self, modality, value, rate=None, *, kind=None, t=0.0):
        """Appends a stimulus as one segment <begin:M> tokens <end:M>, tokenized at once by
        modality M's plugin: str for text, a float array and its rate for audio, a uint8
        (H, W[, C]) array for an image, a float (ticks[, dims]) array for a sensor series
        (rate optional). kind ("text", "audio", "image", "series") overrides the choice
        made from the value and the plugin. Returns the session."""
        m = self.engine.modalities.get(modality)
        kinds = sum(1 << media.KINDS[k] for k in m.media) if m else ~0
        if kind is None:
            kind = media.choose_kind(value, kinds, rate, modality)
        cm, buf = media.to_media(value, kind, rate, t)
        check(_capi.lib().sn_session_feed(self._handle(), cstr(modality), byref(cm)))
        del buf  # the plugin has tokenized it: the buffer may go
        return self

    def feed_file(self, modality, path):
        """Feeds a stimulus file as the CLI's --feed does (WAV/FLAC/..., PNG/PPM, NPY, text,
        chosen by content). Returns the session."""
        L = _capi.lib()
        m = _capi.Media()
        check(L.sn_media_read(cstr(path), byref(m)))
        try:
            check(L.sn_session_feed(self._handle(), cstr(modality), byref(m)))
        finally:
            L.sn_media_release(byref(m))
        return self

    def feed_tokens(self, ids):
        """Appends raw global token ids (a list or an integer array). Returns the session."""
        a = np.asarray(ids)
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, not {a.dtype}")
        a = a.reshape(-1)
        if a.size and (a.min() < -2**31 or a.max() >= 2**31):
            raise ValueError("token ids must fit in int32")
        buf = np.ascontiguousarray(a, np.int32)
        check(_capi.lib().sn_session_feed_tokens(
            self._handle(), buf.ctypes.data_as(ctypes.POINTER(c_int32)), buf.size))
        return self

    def set_sampling(self, modality=None, temperature=None, top_k=None, top_p=None,
                     min_p=None, repetition_penalty=None):
        """Sampling inside segments of one output modality (None: the session's default
        for every modality). Fields not given take the library's defaults (greedy, all
        filters off). Returns the session."""
        p = _sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                      repetition_penalty=repetition_penalty)
        check(_capi.lib().sn_session_set_sampling(self._handle(), cstr(modality), byref(p)))
        return self

    # ---- generation -----------------------------------------------------------------------

    def generate(self, modalities=None, max_tokens=64, max_segments=0):
        """Asks for up to max_tokens tokens, constrained to the output modalities listed (a
        name or a list of names; None: raw ids, no automaton); max_segments > 0 stops after
        that many segments. Nothing runs until Engine.run() or Engine.step(). Returns the
        session."""
        if isinstance(modalities, str):
            modalities = [modalities]
        mods = [cstr(m) for m in modalities or []]
        arr = (c_char_p * len(mods))(*mods) if mods else None
        n = c_size_t()
        _capi.lib().sn_session_tokens(self._handle(), byref(n))
        check(_capi.lib().sn_session_generate(self._handle(), arr, len(mods), int(max_tokens),
                                              int(max_segments)))
        self._gen_start = int(n.value)
        return self

    # ---- results --------------------------------------------------------------------------

    @property
    def busy(self):
        """Whether the session still has tokens to process or generate."""
        return self._h is not None and bool(_capi.lib().sn_session_busy(self._h))

    @property
    def tokens(self):
        """The context so far (BOS, fed and generated ids), a copy as int32."""
        if self._h is None:
            return self._final["tokens"].copy()
        n = c_size_t()
        p = _capi.lib().sn_session_tokens(self._h, byref(n))
        if not n.value:
            return np.zeros(0, np.int32)
        return np.ctypeslib.as_array(p, (n.value,)).copy()

    @property
    def generated(self):
        """The ids appended since the latest generate() call."""
        return self.tokens[self._gen_start:]

    @property
    def logits(self):
        """A float32 copy of the logits at the context's latest computed position: after
        Engine.run(), those of its last token, fed or generated (what a next token would be
        drawn from). None when the engine was opened with keep_logits=False."""
        if self._h is None:
            lg = self._final["logits"]
            return None if lg is None else lg.copy()
        n = c_int32()
        p = _capi.lib().sn_session_logits(self._h, byref(n))
        if not p:
            return None
        return np.ctypeslib.as_array(p, (n.value,)).copy()

    @property
    def stop_reason(self):
        """Why the latest generation ended: "none" (still generating, or never asked),
        "eos", "max_tokens", "segments", "error" (see error) or "caller"."""
        if self._h is None:
            return self._final["stop"]
        r = _capi.lib().sn_session_stop_reason(self._h)
        return _capi.STOP_REASONS[r] if 0 <= r < len(_capi.STOP_REASONS) else str(r)

    @property
    def error(self):
        """The session's last error message ("" if none)."""
        if self._h is None:
            return self._final["error"]
        return pystr(_capi.lib().sn_session_error(self._h)) or ""

    @property
    def text(self):
        """The text of every TextAction collected so far, joined."""
        return "".join(a.text for a in self.actions if isinstance(a, actions.TextAction))

    # ---- life cycle -----------------------------------------------------------------------

    def close(self):
        """Ends the session and frees its KV blocks and slot. Safe to call twice."""
        if self._h is None:
            if self._final is None:  # closed by its engine without a snapshot, or never opened
                self._final = {"tokens": np.zeros(0, np.int32), "logits": None, "stop": "none",
                               "error": ""}
            return
        self._final = {"tokens": self.tokens, "logits": self.logits, "stop": self.stop_reason,
                       "error": self.error}
        _capi.lib().sn_session_close(self._h)
        self.engine._open.pop(id(self._cell), None)
        self._cell.h = None
        # only now, with the C session gone, may the callback objects be freed
        self._callbacks = None

    def __repr__(self):
        state = "closed" if self._h is None else ("busy" if self.busy else "idle")
        return f"<Session {state}, {len(self.tokens)} tokens, stop {self.stop_reason}>"


class Chat(_Closing):
    """A GGUF model's chat template (chatml or llama3), rendered by the library: feed_turn
    feeds one user turn to a session; then generate "text"."""

    def __init__(self, gguf_path):
        h = c_void_p()
        check(_capi.lib().sn_chat_open(cstr(gguf_path), byref(h)))
        self._h = h.value
        self.family = pystr(_capi.lib().sn_chat_family(self._h))

    def feed_turn(self, session, user, system=None, first=True):
        """Feeds the system prompt (when first: system, else the template's default), the
        user's text and the assistant header. Returns the session."""
        if self._h is None:
            raise ValueError("the chat is closed")
        check(_capi.lib().sn_chat_feed_turn(self._h, session._handle(), cstr(system), cstr(user),
                                            1 if first else 0))
        return session

    def close(self):
        if self._h is not None:
            _capi.lib().sn_chat_close(self._h)
            self._h = None

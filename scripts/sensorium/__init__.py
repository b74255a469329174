"""sensorium - the Python binding of the Sensorium engine (ctypes over libsensorium.so).

Feed a session stimuli as numpy arrays and text, let the model generate under the segment
automaton, and read the actions its decoder plugins emit as plain Python objects:

    import sys; sys.path.insert(0, "scripts")   # or PYTHONPATH=scripts
    import numpy as np
    import sensorium as sn

    with sn.Engine("models/reflex", threads=4) as engine:       # plugins: the build's folder
        print(engine.describe)
        print({m.name: (m.plugin, m.media) for m in engine.modalities.values()})
        s = engine.session(seed=1, temperature=0.7,
                           on_action=lambda a: print("action:", a))   # a true return stops
        s.feed("audio", np.zeros(16000, np.float32), rate=16000)   # 1 s of silence, mono
        s.feed("imu", np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32), rate=50)
        s.feed("text", "raise your left hand")                     # str -> text
        # s.feed("camera", pixels)                                 # uint8 (H, W, C) -> image
        s.generate("action", max_tokens=8, max_segments=1)         # None: raw ids
        engine.run()                                               # all sessions, batched
        print(s.stop_reason, s.actions)  # "segments" [NamedAction(t=.., name='raise_left_hand', ..)]
        print(s.tokens, s.generated)     # int32 arrays: the whole context; this generation
        print(s.logits.argmax())         # float32 copy of the latest position's logits

    # Raw token ids, e.g. against another implementation (a Hugging Face folder works too):
    with sn.Engine("/tmp/tiny") as engine, engine.session() as s:
        s.feed_tokens([5, 17, 42]).generate(None, max_tokens=8)
        engine.run()
        print(s.generated)

    try:
        sn.Engine("/no/such/model")
    except sn.SensoriumError as e:    # e.status_name "SN_ERR_NOT_FOUND", e.message: one line
        print(e)

Actions (sensorium.actions): NamedAction(t, name, index), VectorAction(t, values),
TextAction(t, text), AudioAction(t, samples, rate), ImageAction(t, pixels), each with the
modality it came from. Results stay readable after a session is closed. set_log_handler(fn)
receives plugin log lines (the library prints nothing).

The library: $SENSORIUM_LIB, else build/core/libsensorium.so of this repository, else
ctypes.util.find_library("sensorium"). Plugins: Engine(plugin_path=...), then
$SENSORIUM_PLUGIN_PATH, then the plugins folder of the build the library came from.
Python 3.11 and numpy; nothing to compile.
"""
from ._capi import STATUS_NAMES, STOP_REASONS, SensoriumError, library_path
from .actions import (Action, AudioAction, ImageAction, NamedAction, TextAction,
                      VectorAction)
from .engine import Chat, Engine, Modality, Session, set_log_handler, version

__all__ = ["Engine", "Session", "Chat", "Modality", "SensoriumError", "Action", "NamedAction",
           "VectorAction", "TextAction", "AudioAction", "ImageAction", "set_log_handler",
           "version", "library_path", "STATUS_NAMES", "STOP_REASONS"]

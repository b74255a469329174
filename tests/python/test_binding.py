#!/usr/bin/env python3
"""test_binding.py - the Python binding (scripts/sensorium) against the CLI and the numpy
reference, on small random models from tests/reference/make_model.py.

What a user of the binding would notice if it broke: greedy and sampled generation give the
CLI's tokens for the same prompt and seed; logits equal llama_ref.py's forward pass; numpy
audio, images and sensor series tokenize exactly as the same stimuli read from files by the
CLI; actions reach Python callbacks as objects whose payloads round-trip through the
tokenizers; errors raise SensoriumError with the library's message; sessions and their
callbacks live and die safely.

Plain unittest, no pytest. Environment (set by ctest, see tests/CMakeLists.txt):
  SENSORIUM_LIB   the libsensorium.so under test (else the binding's own search)
  SENSORIUM_CLI   the sensorium binary of the same build (else build/bin/sensorium)
Run by hand:  SENSORIUM_LIB=build/core/libsensorium.so python3 tests/python/test_binding.py
"""
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import wave

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import sensorium as sn  # noqa: E402

CLI = os.environ.get("SENSORIUM_CLI") or os.path.join(REPO, "build", "bin", "sensorium")
MAKE_MODEL = os.path.join(REPO, "tests", "reference", "make_model.py")
LLAMA_REF = os.path.join(REPO, "tests", "reference", "llama_ref.py")

ACTIONS = ["raise_left_hand", "raise_right_hand", "stop"]
# The multimodal layout the action and media tests use: every plugin kind the binding
# converts, one small segment each (ids 7 and past 1074 unused).
SEGMENTS = [
    {"modality": "text", "plugin": "text.bytes", "start": 8, "size": 256, "begin": 3, "end": 4},
    {"modality": "action", "plugin": "action.discrete", "start": 264, "size": 3, "begin": 5,
     "end": 6, "config": {"actions": ACTIONS}},
    {"modality": "joints", "plugin": "action.continuous", "start": 269, "size": 16, "begin": 267,
     "end": 268, "config": {"bins": 16, "low": [-1.0, -2.0], "high": [1.0, 2.0]}},
    {"modality": "audio", "plugin": "audio.mulaw", "start": 287, "size": 256, "begin": 285,
     "end": 286, "config": {"sample_rate": 8000}},
    {"modality": "image", "plugin": "image.palette", "start": 545, "size": 512, "begin": 543,
     "end": 544, "config": {"width": 3, "height": 2}},
    {"modality": "imu", "plugin": "sensor.bins", "start": 1059, "size": 16, "begin": 1057,
     "end": 1058, "config": {"bins": 16, "low": [-1.0, -1.0, -1.0], "high": [1.0, 1.0, 1.0]}},
]
MULTI_VOCAB = 1075

tmp = None
models = {}


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def make_model(name, *args):
    path = os.path.join(tmp, name)
    run([sys.executable, MAKE_MODEL, path, *args])
    return path


def cli_run(*args):
    """(generated ids, the JSON action lines) of `sensorium run ... --print-tokens`."""
    out = run([CLI, "run", *args, "--print-tokens", "-o", tmp])
    # split on newlines only: generated text may hold U+2028 and the like, which JSON keeps
    lines = [json.loads(l) for l in out.split("\n") if l.startswith("{")]
    gen = [l for l in lines if "generated" in l]
    assert len(gen) == 1, out
    return gen[0]["generated"], [l for l in lines if "generated" not in l]


def cli_tokenize(plugin, config, path):
    out = run([CLI, "tokenize", "--plugin", plugin, "--config", json.dumps(config), path])
    return [int(x) for x in out.split()]


def setUpModule():
    global tmp
    tmp = tempfile.mkdtemp(prefix="sn_pytest_")
    models["hf"] = make_model("hf", "--seed", "3")
    models["text"] = make_model("text", "--layout", "sensorium", "--seed", "4")
    multi = make_model("multi", "--layout", "sensorium", "--vocab", str(MULTI_VOCAB), "--seed", "5")
    with open(os.path.join(multi, "sensorium.json")) as f:
        manifest = json.load(f)
    manifest["vocab"]["segments"] = SEGMENTS
    with open(os.path.join(multi, "sensorium.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    models["multi"] = multi


def tearDownModule():
    shutil.rmtree(tmp, ignore_errors=True)


def seg(name):
    return next(s for s in SEGMENTS if s["modality"] == name)


class RawTokens(unittest.TestCase):
    prompt = [5, 17, 42, 99, 7, 250]

    def test_greedy_matches_cli(self):
        want, _ = cli_run("-m", models["hf"], "--feed-tokens", ",".join(map(str, self.prompt)),
                          "--generate", "raw", "--max-tokens", "16")
        with sn.Engine(models["hf"]) as e, e.session() as s:
            s.feed_tokens(self.prompt).generate(None, max_tokens=16)
            e.run()
            self.assertEqual(s.generated.tolist(), want)
            self.assertEqual(s.tokens.tolist(), self.prompt + want)  # no layout: no BOS
            self.assertEqual(s.tokens.dtype, np.int32)
            self.assertEqual(s.stop_reason, "max_tokens")

    def test_sampled_matches_cli(self):
        """Seed and every sampling field reach the library (the struct layout)."""
        want, _ = cli_run("-m", models["hf"], "--feed-tokens", ",".join(map(str, self.prompt)),
                          "--generate", "raw", "--max-tokens", "24", "--seed", "11",
                          "--temperature", "1.3", "--top-k", "40", "--top-p", "0.95",
                          "--min-p", "0.01", "--repetition-penalty", "1.2")
        with sn.Engine(models["hf"]) as e:
            s = e.session(seed=11, temperature=1.3, top_k=40, top_p=0.95, min_p=0.01,
                          repetition_penalty=1.2)
            s.feed_tokens(np.array(self.prompt, np.int64)).generate(max_tokens=24)
            e.run()
            self.assertEqual(s.generated.tolist(), want)
            other = e.session(seed=12, temperature=1.3)
            other.feed_tokens(self.prompt).generate(max_tokens=24)
            e.run()
            self.assertNotEqual(other.generated.tolist(), want, "the seed changed nothing")

    def test_data_parallel_replicas_match_cli(self):
        """dp reaches the library (the struct's last field): sessions on 2 replicas."""
        want, _ = cli_run("-m", models["hf"], "--feed-tokens", ",".join(map(str, self.prompt)),
                          "--generate", "raw", "--max-tokens", "16")
        with sn.Engine(models["hf"], backend="cpu", dp=2) as e:
            self.assertIn("dp 2 x tp 1", e.describe)
            s = [e.session() for _ in range(3)]
            for x in s:
                x.feed_tokens(self.prompt).generate(None, max_tokens=16)
            e.run()
            for x in s:
                self.assertEqual(x.generated.tolist(), want)

    def reference(self, ids):
        """llama_ref.py's logits of the last position of ids, float64."""
        path = os.path.join(tmp, "ref.npy")
        run([sys.executable, LLAMA_REF, models["hf"], path, *map(str, ids)])
        return np.load(path)[-1].astype(np.float64)

    def assert_close(self, got, ref):
        self.assertEqual(got.dtype, np.float32)
        self.assertEqual(got.shape, ref.shape)
        worst = int(np.argmax(np.abs(got - ref)))
        rel = np.abs(got[worst] - ref[worst]) / np.max(np.abs(ref))
        self.assertLessEqual(rel, 1e-4, f"worst id {worst}: got {got[worst]}, ref {ref[worst]}")

    def test_logits_match_reference(self):
        """The first step's logits (the prompt's last position) are llama_ref.py's, and its
        greedy token their argmax; after generating, the logits are those of the context's
        new last position (the generated token)."""
        ref = self.reference(self.prompt)
        with sn.Engine(models["hf"]) as e, e.session() as s:
            self.assertEqual(e.vocab_size, ref.shape[0])
            s.feed_tokens(self.prompt)
            self.assertEqual(e.step(), len(self.prompt))  # one step: the whole prompt
            self.assertFalse(s.busy)
            got = s.logits
            self.assert_close(got, ref)
            got[:] = 0  # a copy: the session's own logits are untouched
            self.assertTrue(np.any(s.logits != 0))
            s.generate(None, max_tokens=1)
            e.run()
            self.assertEqual(s.generated.tolist(), [int(np.argmax(ref))])
            self.assert_close(s.logits, self.reference(s.tokens.tolist()))
        with sn.Engine(models["hf"], keep_logits=False) as e, e.session() as s:
            s.feed_tokens(self.prompt)
            e.run()
            self.assertIsNone(s.logits)


class Text(unittest.TestCase):
    text = "héllo, wörld 🖐 "

    def test_text_feed_and_generation_match_cli(self):
        path = os.path.join(tmp, "prompt.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.text)
        want, lines = cli_run("-m", models["text"], "--feed", f"text:{path}", "--generate", "text",
                              "--max-tokens", "20", "--temperature", "0.9", "--seed", "2")
        with sn.Engine(models["text"]) as e:
            m = e.modalities["text"]
            self.assertEqual((m.plugin, m.start, m.size, m.begin, m.end), ("text.bytes", 8, 256, 3, 4))
            self.assertIn("text", m.media)
            with e.session(seed=2, temperature=0.9) as s:
                s.feed("text", self.text).generate("text", max_tokens=20)
                e.run()
                body = [b + 8 for b in self.text.encode("utf-8")]
                self.assertEqual(s.tokens[:len(body) + 3].tolist(), [e.bos, 3, *body, 4])
                self.assertEqual(s.generated.tolist(), want)
                self.assertTrue(all(isinstance(a, sn.TextAction) for a in s.actions))
                self.assertEqual(s.text, "".join(l["text"] for l in lines if l["kind"] == "text"))
                self.assertTrue(all(a.modality == "text" for a in s.actions))
            # a text file fed by the library's reader gives the same ids
            with e.session() as s1, e.session() as s2:
                s1.feed("text", self.text)
                s2.feed_file("text", path)
                self.assertEqual(s1.tokens.tolist(), s2.tokens.tolist())
            with e.session(no_bos=True) as s:
                self.assertEqual(s.feed("text", b"ab").tokens.tolist(), [3, ord("a") + 8, ord("b") + 8, 4])


SMOLLM2 = os.path.join(REPO, ".testdata", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@unittest.skipUnless(os.path.exists(SMOLLM2), "no .testdata/smollm2 (scripts/test.sh fetches it)")
class ChatTemplate(unittest.TestCase):
    def test_chat_turn_matches_cli(self):
        question = "What is the capital of France?"
        want, lines = cli_run("-m", SMOLLM2, "--chat", question, "--max-tokens", "4")
        with sn.Engine(SMOLLM2) as e, sn.Chat(SMOLLM2) as chat, e.session() as s:
            self.assertEqual(chat.family, "chatml")
            self.assertEqual(e.modalities["text"].begin, -1)  # an open segment: no markers
            chat.feed_turn(s, question)
            s.generate("text", max_tokens=4)
            e.run()
            self.assertEqual(s.generated.tolist(), want)
            self.assertEqual(s.text, "".join(l["text"] for l in lines if l["kind"] == "text"))


class Errors(unittest.TestCase):
    def test_bad_model_path(self):
        bad = os.path.join(tmp, "no_such_model")
        with self.assertRaises(sn.SensoriumError) as cm:
            sn.Engine(bad)
        self.assertIn(bad, str(cm.exception))
        self.assertIn(bad, cm.exception.message)
        self.assertTrue(cm.exception.status_name.startswith("SN_ERR_"), cm.exception.status_name)

    def test_truncated_weights_name_the_file(self):
        broken = os.path.join(tmp, "truncated")
        shutil.copytree(models["hf"], broken)
        w = os.path.join(broken, "model.safetensors")
        with open(w, "r+b") as f:
            f.truncate(os.path.getsize(w) // 2)
        with self.assertRaises(sn.SensoriumError) as cm:
            sn.Engine(broken)
        self.assertEqual(cm.exception.status_name, "SN_ERR_FORMAT")
        self.assertIn("model.safetensors", cm.exception.message)

    def test_session_errors(self):
        with sn.Engine(models["text"]) as e, e.session() as s:
            with self.assertRaises(sn.SensoriumError) as cm:
                s.feed("smell", "roses")
            self.assertEqual(cm.exception.status_name, "SN_ERR_NOT_FOUND")
            self.assertIn("smell", str(cm.exception))
            with self.assertRaises(sn.SensoriumError) as cm:
                s.feed_tokens([1, 300])
            self.assertEqual(cm.exception.status_name, "SN_ERR_INVALID_ARG")
            self.assertIn("300", cm.exception.message)
            with self.assertRaises(sn.SensoriumError):
                s.generate("text", max_tokens=0)
            with self.assertRaises(TypeError):
                s.feed_tokens([1.5])
            with self.assertRaises(sn.SensoriumError):
                s.feed_file("text", os.path.join(tmp, "missing.txt"))
        with sn.Engine(models["hf"]) as e, e.session() as s:
            with self.assertRaises(sn.SensoriumError) as cm:
                s.feed("text", "hi")
            self.assertIn("raw tokens", cm.exception.message)

    def test_missing_library(self):
        env = dict(os.environ, SENSORIUM_LIB=os.path.join(tmp, "nope.so"))
        p = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import sensorium; sensorium.version()", os.path.join(REPO, "scripts")],
                           env=env, capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.so", p.stderr)


def write_wav(path, pcm, rate):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def write_ppm(path, pixels):
    h, w, _ = pixels.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h) + pixels.tobytes())


class Media(unittest.TestCase):
    """numpy stimuli tokenize as the same stimuli read from files by the CLI."""

    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(7)
        cls.pcm = (np.sin(np.arange(300) * 0.07) * 20000 + rng.normal(0, 500, 300)).astype(np.int16)
        cls.pixels = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
        cls.imu = rng.uniform(-1.2, 1.2, (25, 3)).astype(np.float32)
        cls.files = {"audio": os.path.join(tmp, "a.wav"), "image": os.path.join(tmp, "i.ppm"),
                     "imu": os.path.join(tmp, "imu.npy")}
        write_wav(cls.files["audio"], cls.pcm, 8000)
        write_ppm(cls.files["image"], cls.pixels)
        np.save(cls.files["imu"], cls.imu)
        cls.engine = sn.Engine(models["multi"])

    @classmethod
    def tearDownClass(cls):
        cls.engine.close()

    def check(self, modality, value, **kw):
        sg = seg(modality)
        local = cli_tokenize(sg["plugin"], sg.get("config", {}), self.files[modality])
        self.assertGreater(len(local), 0)
        want = [sg["begin"], *(sg["start"] + i for i in local), sg["end"]]
        with self.engine.session(no_bos=True) as s:
            self.assertEqual(s.feed(modality, value, **kw).tokens.tolist(), want)
        with self.engine.session(no_bos=True) as s:
            self.assertEqual(s.feed_file(modality, self.files[modality]).tokens.tolist(), want)

    def test_audio(self):
        self.check("audio", self.pcm.astype(np.float32) / 32768, rate=8000)
        self.check("audio", self.pcm, rate=8000)  # int16 scaled as libsndfile scales it
        stereo = np.stack([self.pcm, self.pcm], axis=1).astype(np.float32) / 32768
        self.check("audio", stereo, rate=8000)  # mixed down to mono
        with self.assertRaises(ValueError):
            self.engine.session().feed("audio", self.pcm.astype(np.float32))  # no rate

    def test_image(self):
        self.check("image", self.pixels)
        self.check("image", np.asfortranarray(self.pixels))  # any memory layout
        self.check("image", self.pixels[:, ::-1][:, ::-1])  # a strided view

    def test_series(self):
        self.check("imu", self.imu)
        self.check("imu", self.imu.astype(np.float64), rate=100)

    def test_wrong_media_for_modality(self):
        with self.engine.session() as s:
            with self.assertRaises(sn.SensoriumError) as cm:
                s.feed("imu", "text for a sensor")
            self.assertIn("sensor.bins", cm.exception.message)
            with self.assertRaises(sn.SensoriumError) as cm:
                s.feed("image", np.zeros((4, 3), np.float32), kind="series")
            self.assertIn("image.palette", cm.exception.message)
            with self.assertRaises(TypeError):
                s.feed("imu", {"not": "media"})


class Actions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.engine = sn.Engine(models["multi"], max_sessions=4)

    @classmethod
    def tearDownClass(cls):
        cls.engine.close()

    def one_segment(self, modality, max_tokens=400, **kw):
        """A session that generated one whole segment of modality (random weights: try seeds
        until the model opens one rather than ending at EOS), with its callback's actions."""
        for seed in range(200):
            got = []
            s = self.engine.session(seed=seed, temperature=1.0, on_action=got.append, **kw)
            s.feed("text", "go").generate(modality, max_tokens=max_tokens, max_segments=1)
            self.engine.run()
            if s.stop_reason == "segments":
                return s, got
            s.close()
        self.fail(f"no seed produced a '{modality}' segment")

    def local_ids(self, s, modality):
        sg = seg(modality)
        gen = s.generated.tolist()
        self.assertEqual((gen[0], gen[-1]), (sg["begin"], sg["end"]))
        return [t - sg["start"] for t in gen[1:-1]]

    def test_named_actions_through_callback(self):
        s, got = self.one_segment("action")
        self.assertEqual(len(got), 1)
        a = got[0]
        self.assertIsInstance(a, sn.NamedAction)
        self.assertEqual(a.modality, "action")
        self.assertEqual(a.name, ACTIONS[a.index])
        self.assertEqual(self.local_ids(s, "action"), [a.index])
        self.assertEqual(s.actions, got)
        self.assertGreaterEqual(a.t, 0.0)

    def test_vector_round_trip(self):
        s, got = self.one_segment("joints")
        self.assertEqual(len(got), 1)
        self.assertIsInstance(got[0], sn.VectorAction)
        self.assertEqual(got[0].values.dtype, np.float32)
        self.assertEqual(got[0].values.shape, (2,))
        # the decoded values are bin centres: tokenized again they give the same ids
        with self.engine.session(no_bos=True) as back:
            back.feed("joints", got[0].values[None, :], kind="series")
            self.assertEqual(back.tokens.tolist(), s.generated.tolist())

    def test_image_round_trip(self):
        s, got = self.one_segment("image")
        self.assertEqual(len(got), 1)
        img = got[0]
        self.assertIsInstance(img, sn.ImageAction)
        self.assertEqual(img.pixels.shape, (2, 3, 3))
        self.assertEqual(img.pixels.dtype, np.uint8)
        ids = self.local_ids(s, "image")
        want = np.array([[(i >> 6) * 32 + 16, (i >> 3 & 7) * 32 + 16, (i & 7) * 32 + 16] for i in ids])
        np.testing.assert_array_equal(img.pixels.reshape(-1, 3), want)
        with self.engine.session(no_bos=True) as back:
            self.assertEqual(back.feed("image", img.pixels).tokens.tolist(), s.generated.tolist())

    def test_audio_round_trip(self):
        s, got = self.one_segment("audio", max_tokens=2000)
        self.assertTrue(got and all(isinstance(a, sn.AudioAction) and a.rate == 8000 for a in got))
        samples = np.concatenate([a.samples for a in got])
        self.assertEqual(samples.dtype, np.float32)
        self.assertEqual(len(samples), len(self.local_ids(s, "audio")))
        with self.engine.session(no_bos=True) as back:
            self.assertEqual(back.feed("audio", samples, rate=8000).tokens.tolist(), s.generated.tolist())

    def test_matches_cli(self):
        """Mixed stimuli in, every output modality allowed: the CLI's tokens and actions."""
        rng = np.random.default_rng(3)
        pcm = (rng.normal(0, 3000, 400)).astype(np.int16)
        pixels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        imu = rng.uniform(-1, 1, (10, 3)).astype(np.float32)
        write_wav(os.path.join(tmp, "m.wav"), pcm, 8000)
        write_ppm(os.path.join(tmp, "m.ppm"), pixels)
        np.save(os.path.join(tmp, "m.npy"), imu)
        outs = "action,joints,image,text"
        for seed in (1, 2, 3):
            want, lines = cli_run("-m", models["multi"], "--feed", f"audio:{tmp}/m.wav",
                                  "--feed", f"image:{tmp}/m.ppm", "--feed", f"imu:{tmp}/m.npy",
                                  "--generate", outs, "--max-tokens", "60", "--seed", str(seed),
                                  "--temperature", "1.0")
            with self.engine.session(seed=seed, temperature=1.0) as s:
                s.feed("audio", pcm, rate=8000).feed("image", pixels).feed("imu", imu)
                s.generate(outs.split(","), max_tokens=60)
                self.engine.run()
                self.assertEqual(s.generated.tolist(), want)
                cli_named = [l["name"] for l in lines if l["kind"] == "action"]
                self.assertEqual([a.name for a in s.actions if isinstance(a, sn.NamedAction)], cli_named)
                cli_vec = [l["values"] for l in lines if l["kind"] == "vector"]
                py_vec = [a.values.tolist() for a in s.actions if isinstance(a, sn.VectorAction)]
                self.assertEqual(len(py_vec), len(cli_vec))
                for p, c in zip(py_vec, cli_vec):
                    np.testing.assert_allclose(p, c, rtol=1e-6)

    def test_callback_stops_and_raises(self):
        got = []
        with self.engine.session(seed=0, temperature=1.0, on_action=lambda a: got.append(a) or True) as s:
            s.feed("text", "go").generate("audio", max_tokens=500)
            self.engine.run()
            if got:  # the first sample stopped the generation
                self.assertEqual(s.stop_reason, "caller")
                self.assertEqual(len(got), 1)

        def boom(a):
            raise KeyError("from the callback")
        for seed in range(50):
            s = self.engine.session(seed=seed, temperature=1.0, on_action=boom)
            s.feed("text", "go").generate("audio", max_tokens=500)
            try:
                self.engine.run()
            except KeyError as e:
                self.assertIn("from the callback", str(e))
                self.assertEqual(s.stop_reason, "caller")
                self.engine.run()  # raised once; the session finishes caching quietly
                self.assertFalse(s.busy)
                return
            finally:
                s.close()
        self.fail("no seed generated any audio")

    def test_token_and_stop_callbacks(self):
        toks, stops = [], []
        with self.engine.session(seed=4, temperature=1.0, on_token=toks.append, on_stop=stops.append) as s:
            s.feed("text", "go").generate(["action", "joints"], max_tokens=30)
            self.engine.run()
            self.assertEqual(toks, s.generated.tolist())
            self.assertEqual(stops, [s.stop_reason])
            self.assertIn(s.stop_reason, ("eos", "max_tokens"))

    def test_sessions_batched_route_to_their_own_callbacks(self):
        alone = {}
        for seed in (1, 2, 3):
            with self.engine.session(seed=seed, temperature=1.0) as s:
                s.feed("text", f"prompt {seed}").generate(["action", "joints"], max_tokens=24)
                self.engine.run()
                alone[seed] = (s.generated.tolist(), s.actions)
        together = {seed: self.engine.session(seed=seed, temperature=1.0) for seed in (1, 2, 3)}
        for seed, s in together.items():
            s.feed("text", f"prompt {seed}").generate(["action", "joints"], max_tokens=24)
        self.engine.run()
        for seed, s in together.items():
            self.assertEqual(s.generated.tolist(), alone[seed][0])
            self.assertEqual(len(s.actions), len(alone[seed][1]))
            for a, b in zip(s.actions, alone[seed][1]):
                self.assertEqual(type(a), type(b))
                if isinstance(a, sn.NamedAction):
                    self.assertEqual(a.name, b.name)
                else:
                    np.testing.assert_array_equal(a.values, b.values)
            s.close()


class Lifecycle(unittest.TestCase):
    def test_results_outlive_the_session_and_engine(self):
        e = sn.Engine(models["hf"], max_sessions=2)
        s = e.session()
        s.feed_tokens([1, 2, 3]).generate(None, max_tokens=4)
        e.run()
        tokens, logits = s.tokens, s.logits
        e.close()  # closes the session too
        self.assertEqual(s.tokens.tolist(), tokens.tolist())
        np.testing.assert_array_equal(s.logits, logits)
        self.assertEqual(s.stop_reason, "max_tokens")
        self.assertFalse(s.busy)
        with self.assertRaises(ValueError):
            s.feed_tokens([1])
        with self.assertRaises(ValueError):
            e.session()
        e.close()
        s.close()

    def test_dropped_sessions_free_their_slots(self):
        with sn.Engine(models["multi"], max_sessions=2) as e:
            for i in range(10):  # more than max_sessions, none closed explicitly
                s = e.session(on_action=lambda a: None, on_token=lambda t: None)
                s.feed("text", "x").generate("action", max_tokens=3)
                e.run()
            del s
            gc.collect()
            self.assertEqual(len(e._open), 0)
            a, b = e.session(), e.session()
            with self.assertRaises(sn.SensoriumError) as cm:
                e.session()
            self.assertIn("max_sessions", str(cm.exception))

    def test_collector_finalizes_engine_before_session(self):
        """An engine and its session in one reference cycle: the collector clears weak
        references first and may finalize the engine before the session, which must then
        not touch its freed C session. A vocabulary of 70000 makes the freed logits buffer
        an unmapped one, so that such a touch crashes rather than reads stale memory."""
        big = os.path.join(tmp, "bigvocab")
        if not os.path.exists(big):
            make_model("bigvocab", "--vocab", "70000", "--hidden", "16", "--intermediate", "16",
                       "--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "8",
                       "--context", "64")
        script = (
            "import gc, sys; sys.path.insert(0, sys.argv[1]); import sensorium as sn\n"
            "for i in range(5):\n"
            "    e = sn.Engine(sys.argv[2], max_sessions=2)\n"
            "    s = e.session()\n"
            "    s.feed_tokens([1, 2, 3])\n"
            "    e.run()\n"
            "    junk = [e, s]\n"
            "    junk.append(junk)\n"
            "    del e, s, junk\n"
            "    gc.collect()\n"
            "print('done')\n")
        for _ in range(3):
            p = subprocess.run([sys.executable, "-c", script, os.path.join(REPO, "scripts"), big],
                               capture_output=True, text=True)
            self.assertEqual((p.returncode, p.stdout.strip()), (0, "done"), p.stderr)

    def test_log_handler(self):
        sn.set_log_handler(lambda level, source, message: None)
        with sn.Engine(models["hf"]) as e, e.session() as s:
            s.feed_tokens([1]).generate(None, max_tokens=2)
            e.run()
        sn.set_log_handler(None)


def preload_sanitizers():
    """An ASan build's library loads into python3 only after the ASan runtime: re-runs this
    script with the library's sanitizer runtimes preloaded, and with leak detection off (the
    interpreter keeps its own allocations to the end; those are not the library's leaks)."""
    lib = os.environ.get("SENSORIUM_LIB")
    if not lib or os.environ.get("SN_TEST_PRELOADED"):
        return
    try:
        with open(lib, "rb") as f:
            if b"libasan.so" not in f.read():
                return
    except OSError:
        return
    ldd = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
    runtimes = [l.split("=>")[1].split("(")[0].strip() for l in ldd.splitlines()
                if "=>" in l and ("libasan" in l or "libubsan" in l)]
    env = dict(os.environ, SN_TEST_PRELOADED="1",
               LD_PRELOAD=" ".join(runtimes + [os.environ.get("LD_PRELOAD", "")]).strip(),
               ASAN_OPTIONS=":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "detect_leaks=0"])))
    print(f"sanitized library: re-running with LD_PRELOAD={env['LD_PRELOAD']}", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == "__main__":
    preload_sanitizers()
    print(f"library {sn.library_path()} (version {sn.version()}), CLI {CLI}", flush=True)
    unittest.main(verbosity=2)

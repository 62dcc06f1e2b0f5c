"""Calibration for int8 variants (imported as `xopt.calibration`).

Modules: this one (calibration *sets*), `calibrators` (min-max, percentile, entropy, MSE),
`profile` (the calibration profile every int8 backend consumes, SmoothQuant, fake-quant;
its docstring is the API), `sensitivity` (per-layer sensitivity and the mixed-precision
fallback) and `run` (checkpoint -> profile, what `xopt calibrate` and the int8 variants call).

A calibration set is a list of texts drawn from
- the demo suite's *training* messages (never its test messages) in the requested languages
  (`calib_data` unset or a demo suite JSON),
- a user's text files: one text per line; a file `<lang>.txt` is that language, a directory
  holds one `<lang>.txt` per language, any other file is the language "text",
- a registered source, `calib_data="NAME:ARG"` (`register_source`; `xtreme:TASK:DATA_DIR` draws from
  XTREME data through `xopt.tasks.xtreme.calibration_pools`),
balanced across languages, stratified by length within each language (evenly spaced over the
length-sorted texts), with a fixed seed. A disjoint held-out sample of the same pools
(`dev_texts`, also balanced per language) scores sensitivity and SmoothQuant's alpha. The
set's identity (source, languages, count, sha256 of the texts) goes into the variant
manifest, so two int8 variants can be compared knowing whether they saw the same data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np

from xopt.errors import XoptError


@dataclass
class CalibrationSet:
    texts: list[str]
    langs: list[str]
    source: str
    source_sha256: str
    seed: int
    tokenizer_dir: Path | None = None
    input_prefix: str = ""
    dev_texts: list[str] = field(default_factory=list)   # held out: sensitivity, SmoothQuant alpha
    lang_of: dict[str, str] = field(default_factory=dict)  # text -> language

    def identity(self) -> dict:
        return {"data": self.source, "data_sha256": self.source_sha256, "languages": self.langs,
                "samples": len(self.texts), "seed": self.seed,
                "ids_sha256": hashlib.sha256("\n".join(self.texts).encode()).hexdigest(),
                "dev_samples": len(self.dev_texts)}

    @functools.cached_property
    def tokenizer(self):
        """Loaded once per set (the XLM-R tokenizer takes seconds to load)."""
        from xopt.hf import load_tokenizer

        return load_tokenizer(self.tokenizer_dir)

    def batches(self, max_length: int = 512, texts: list[str] | None = None):
        """(input_ids, attention_mask) per text: batch 1, no padding, so padded positions
        never enter the activation statistics."""
        tok = self.tokenizer
        for t in self.texts if texts is None else texts:
            ids = tok(self.input_prefix + t, truncation=True, max_length=max_length)["input_ids"]
            arr = np.asarray([ids], dtype=np.int64)
            yield arr, np.ones_like(arr)

    @classmethod
    def from_options(cls, options: dict, tokenizer_dir=None, input_prefix: str = "") -> "CalibrationSet":
        """From compile options as a dict: calib_data (suite JSON, text file or directory,
        NAME:ARG; default: the demo suite), calib_langs ("all", "en" or a comma list),
        calib_samples, calib_seed, calib_dev_samples (held-out sample, default 96)."""
        return cls.draw(options.get("calib_data"), options.get("calib_langs", "all"),
                        int(options.get("calib_samples", 256)), int(options.get("calib_seed", 0)),
                        int(options.get("calib_dev_samples", 96)), tokenizer_dir, input_prefix)

    @classmethod
    def from_config(cls, config, tokenizer_dir=None, input_prefix: str = "",
                    dev_samples: int | None = None) -> "CalibrationSet":
        """From a calibrated recipe's config (its `calib_*` fields, as
        `xopt.variants.base.CalibratedConfig` holds them); `dev_samples` overrides its held-out
        sample size (0: a recipe that scores nothing on held-out texts)."""
        return cls.draw(config.calib_data, config.calib_langs, int(config.calib_samples), int(config.calib_seed),
                        int(config.calib_dev_samples if dev_samples is None else dev_samples), tokenizer_dir,
                        input_prefix)

    @classmethod
    def draw(cls, data, spec, n: int, seed: int, n_dev: int, tokenizer_dir=None,
             input_prefix: str = "") -> "CalibrationSet":
        """`n` texts of source `data` in the languages `spec` names, balanced and stratified,
        and a disjoint held-out sample of `n_dev`."""
        if n <= 0:
            raise XoptError("--calib-samples must be positive")
        source, digest, pools = load_pools(data)
        langs = sorted(pools) if spec in ("all", None, "") else [s.strip() for s in str(spec).split(",") if s.strip()]
        if not langs:
            raise XoptError("--calib-langs is empty; give all, en, or a comma-separated list of language codes")
        unknown = [lang for lang in langs if lang not in pools]
        if unknown:
            raise XoptError(f"unknown calibration language code(s) {', '.join(unknown)}: not in {source}; "
                            f"it has: {', '.join(sorted(pools))}")
        chosen = {lang: sample_balanced({lang: pools[lang]}, share, seed)
                  for lang, share in _shares(langs, n).items()}
        texts = [t for lang in langs for t in chosen[lang]]
        if not texts:
            raise XoptError(f"empty calibration set from {source} for languages {', '.join(langs)}; "
                            "give a source with text in those languages")
        rest = {lang: sorted(set(pools[lang]) - set(chosen[lang])) for lang in langs}
        dev = sample_balanced(rest, n_dev, seed + 1) if n_dev > 0 else []
        lang_of = {t: lang for lang in langs for t in pools[lang]}
        return cls(texts, langs, source, digest, seed, Path(tokenizer_dir) if tokenizer_dir else None,
                   input_prefix, dev, lang_of)


def _shares(langs: list[str], n: int) -> dict[str, int]:
    return {lang: n // len(langs) + (1 if i < n % len(langs) else 0) for i, lang in enumerate(sorted(langs))}


# name -> fn(arg) -> {lang: [texts]}: extra calibration sources (`calib_data="NAME:ARG"`).
SOURCES: dict[str, Callable[[str], dict[str, list[str]]]] = {}


def register_source(name: str, fn: Callable[[str], dict[str, list[str]]]) -> None:
    SOURCES[name] = fn


def _xtreme_pools(spec: str) -> dict[str, list[str]]:
    """`xtreme:TASK:DATA_DIR`: text per language from an XTREME task's data (xopt.tasks.xtreme
    owns the loaders; see its `calibration_pools`)."""
    from xopt.tasks import xtreme

    return xtreme.calibration_pools(spec)


register_source("xtreme", _xtreme_pools)

def _text_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise XoptError(f"calibration text file {path} is not UTF-8 ({e})") from None


def load_pools(data) -> tuple[str, str, dict[str, list[str]]]:
    """(source description, sha256, {lang: texts}) of a calibration source (see module doc)."""
    from xopt.manifest import sha256
    from xopt.tasks import demo

    if data and ":" in str(data) and str(data).split(":", 1)[0] in SOURCES and not Path(str(data)).exists():
        name, arg = str(data).split(":", 1)
        pools = SOURCES[name](arg)
        blob = json.dumps(pools, sort_keys=True, ensure_ascii=False).encode()
        return str(data), hashlib.sha256(blob).hexdigest(), pools
    path = Path(data) if data else demo.ensure_suite()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise XoptError(f"calibration directory {path} holds no <lang>.txt files")
        pools = {p.stem: _text_lines(p) for p in files}
        digest = hashlib.sha256("".join(sha256(p) for p in files).encode()).hexdigest()
        return str(path), digest, pools
    if not path.is_file():
        raise XoptError(f"calibration data {path} not found")
    if path.suffix == ".json":
        suite = demo.load_suite(path)
        pools = dict(suite["calibration"])
        # English: the suite's English calibration text plus the tasks' English *training*
        # messages (the target task's training data), so en-only sets can be as large as others
        pools["en"] = sorted(set(pools.get("en", [])) | {e["text"] for t in suite["tasks"].values()
                                                          for e in t.get("train", [])})
    else:
        lang = path.stem if path.stem in demo.XTREME_LANGS else "text"
        pools = {lang: _text_lines(path)}
    return str(path), sha256(path), pools


def sample_balanced(pools: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """n texts, as equal as possible per language, each language's share spread evenly
    over its texts sorted by length (short to long)."""
    rng = random.Random(seed)
    langs = sorted(pools)
    share = {lang: n // len(langs) + (1 if i < n % len(langs) else 0) for i, lang in enumerate(langs)}
    out = []
    for lang in langs:
        texts = sorted(set(pools[lang]))
        rng.shuffle(texts)
        texts.sort(key=len)   # stable: ties keep the seeded order
        k = min(share[lang], len(texts))
        if k:
            out += [texts[int(i)] for i in np.linspace(0, len(texts) - 1, k).round().astype(int)]
    return out


"""Calibration sets for int8 variants (imported as `xopt.calibration`).

A calibration set is a list of texts drawn from the demo suite's *training* messages
(never its test messages) in the requested languages, or from a user's text file (one
text per line): balanced across languages, stratified by length within each language
(evenly spaced over the length-sorted texts), with a fixed seed. Its identity (source,
languages, count, sha256 of the texts) goes into the variant manifest, so two int8
variants can be compared knowing whether they saw the same calibration data.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
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

    def identity(self) -> dict:
        return {"data": self.source, "data_sha256": self.source_sha256, "languages": self.langs,
                "samples": len(self.texts), "seed": self.seed,
                "ids_sha256": hashlib.sha256("\n".join(self.texts).encode()).hexdigest()}

    def batches(self, max_length: int = 512):
        """(input_ids, attention_mask) per text: batch 1, no padding, so padded positions
        never enter the activation statistics."""
        from xopt.models import load_tokenizer

        tok = load_tokenizer(self.tokenizer_dir)
        for t in self.texts:
            ids = tok(self.input_prefix + t, truncation=True, max_length=max_length)["input_ids"]
            arr = np.asarray([ids], dtype=np.int64)
            yield arr, np.ones_like(arr)

    @classmethod
    def from_options(cls, options: dict, tokenizer_dir=None, input_prefix: str = "") -> "CalibrationSet":
        """From compile options: calib_data (suite JSON or text file; default: the demo suite),
        calib_langs ("all", "en" or a comma list), calib_samples, calib_seed."""
        from xopt.manifest import sha256
        from xopt.tasks import demo

        n = int(options.get("calib_samples", 256))
        seed = int(options.get("calib_seed", 0))
        if n <= 0:
            raise XoptError("--calib-samples must be positive")
        data = options.get("calib_data")
        path = Path(data) if data else demo.ensure_suite()
        if not path.is_file():
            raise XoptError(f"calibration data {path} not found")
        if path.suffix == ".json":
            pools = demo.load_suite(path)["calibration"]
        else:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            pools = {"text": lines}
        spec = options.get("calib_langs", "all")
        langs = sorted(pools) if spec in ("all", None) else [s.strip() for s in str(spec).split(",") if s.strip()]
        unknown = [lang for lang in langs if lang not in pools]
        if unknown:
            raise XoptError(f"calibration language(s) {', '.join(unknown)} not in {path}; "
                            f"it has: {', '.join(sorted(pools))}")
        texts = sample_balanced({lang: pools[lang] for lang in langs}, n, seed)
        if not texts:
            raise XoptError(f"empty calibration set from {path} for languages {', '.join(langs)}")
        return cls(texts, langs, str(path), sha256(path), seed, Path(tokenizer_dir) if tokenizer_dir else None,
                   input_prefix)


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


class OrtReader:
    """onnxruntime.quantization CalibrationDataReader over a CalibrationSet."""

    def __init__(self, calib: CalibrationSet):
        self._it = iter(calib.batches())

    def get_next(self):
        nxt = next(self._it, None)
        return None if nxt is None else {"input_ids": nxt[0], "attention_mask": nxt[1]}

"""Runner, Variant and file helpers shared by the variant families (see `xopt.variants`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


def output_names(man: dict) -> tuple[str, ...]:
    """The outputs of the model a variant manifest describes."""
    from xopt.modeling import output_names as names

    return names(man["model"])


class Runner:
    """Runs one compiled variant. `prepare` moves inputs to the backend's own form (kept out
    of timed loops), `run` is the timed call, `synchronize` waits for the device."""

    device = "cpu"

    def __init__(self, name: str, output_names: tuple[str, ...]):
        self.name = name
        self.output_names = output_names
        self.info: dict = {}   # facts worth recording: compile time, fallback op counts, ...

    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        raise NotImplementedError

    def run(self, inputs: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, outputs: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        return self.to_numpy(self.run(self.prepare(input_ids, attention_mask)))


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    precision: str
    device: str
    description: str
    build: Callable[..., dict]          # (variant, checkpoint, out_dir, options) -> manifest extras
    load: Callable[..., Runner]         # (variant, directory, manifest) -> Runner
    requires: tuple[str, ...] = ()      # importable modules
    min_capability: tuple[int, int] | None = None   # CUDA compute capability
    calibrated: bool = False
    options: dict = field(default_factory=dict)     # recipe parameters, recorded in the manifest

    def unavailable_reason(self) -> str | None:
        """None when this host can build and run the variant, else why not."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"needs the `{mod}` package (pip install 'xopt[gpu]')"
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "needs an NVIDIA GPU (torch sees no CUDA device)"
            if self.min_capability and torch.cuda.get_device_capability() < self.min_capability:
                cap = "sm_%d%d" % self.min_capability
                return f"needs compute capability {cap} or newer (this GPU: sm_%d%d)" % torch.cuda.get_device_capability()
        return None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a (large, immutable) file into a variant dir; copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


WEIGHT_FILES = ("model.safetensors", "head.safetensors", "config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "sentencepiece.bpe.model")

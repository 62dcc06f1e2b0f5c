"""The variant registry: every way xopt can compile a checkpoint, in one list.

A variant is a `Variant` entry (name, backend, precision, device, what it needs, its config
with the variant's defaults) whose `build` writes its artefacts into a directory and whose
`load` returns a `Runner`. Each family module (`eager.py`, `onnx.py`, ...) holds the whole
recipe of its variants — config dataclass, build, load — and exports them in `VARIANTS`;
`REGISTRY` below is the union. Family modules import their heavy libraries inside functions
so that listing the registry stays instant.

`compile_variant` and `load_variant` are the only entry points the rest of xopt uses:
they validate the options into the variant's config (`xopt.variants.base.VariantConfig`),
write/check the manifest (the config goes in as `{"type", "version", "data"}`), hash the
files, refuse foreign or tampered directories and variants the host cannot run, and refuse a
low-precision build whose counted `quantized_ops` (from its family's build) is zero.

Adding a variant: a config dataclass (or an existing one with other defaults), a build and a
load function in its family file, and one `Variant(...)` line in that file's `VARIANTS`. What
the rest of xopt asks of a recipe goes through its entry, never through its name: the config's
command-line syntax (`Variant.parse_flag`), the shapes its artefact accepts (`Variant.limits`),
how Triton serves it (`Variant.serving`), whether it is a library's stock recipe (`peer`).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from xopt import manifest as mf
from xopt.errors import XoptError
from xopt.variants.base import (TOKENIZER_FILES, KeepPolicy, Runner, Variant, VariantConfig, check_quantized,
                                link_or_copy)
from xopt.variants.onnx_export import ExportCache

__all__ = ["REGISTRY", "ExportCache", "KeepPolicy", "Loaded", "Runner", "Variant", "VariantConfig", "compile_variant",
           "get", "load_variant"]

FAMILIES = ("eager", "onnx", "openvino", "unpadded", "cuda", "tensorrt")


def _registry() -> dict[str, Variant]:
    reg: dict[str, Variant] = {}
    for fam in FAMILIES:
        for v in importlib.import_module(f"xopt.variants.{fam}").VARIANTS:
            if v.name in reg:
                raise RuntimeError(f"variant {v.name} registered twice")
            reg[v.name] = v
    return reg


REGISTRY = _registry()


def get(name: str) -> Variant:
    if name not in REGISTRY:
        raise XoptError(f"unknown variant {name!r}; known: {', '.join(REGISTRY)} (see `xopt variants`)")
    return REGISTRY[name]


def compile_variant(checkpoint: str | Path, name: str, out: str | Path, force: bool = False,
                    options: dict | None = None, exports: ExportCache | None = None) -> dict:
    """Build variant `name` of `checkpoint` into `out` (atomically); return its manifest.

    `options` are validated into the variant's config (unknown or inapplicable ones are refused
    before anything is built). `exports`: an `ExportCache` the caller owns, to share ONNX exports
    between the variants of one checkpoint; without one, exports last for this call only."""
    from xopt.hf import num_layers, param_counts, read_config
    from xopt.modeling import open_checkpoint
    from xopt.hf import check_tokenizer

    variant = get(name)
    if reason := variant.unavailable_reason():
        raise XoptError(f"variant {name} is not available on this host: {reason}")
    config = variant.configure(options)
    ckpt = open_checkpoint(checkpoint)
    check_tokenizer(ckpt.path, read_config(ckpt.path))    # a tokenizer that fails later fails here
    out = Path(out)
    # every variant holds (or passes through an export of) all the checkpoint's weights
    need = sum(p.stat().st_size for p in ckpt.path.glob("*.safetensors"))
    # an own cache is made inside the atomic dir, so its exports are temp files of this write
    with mf.atomic_dir(out, force=force, kind="variant", need_bytes=need) as tmp, \
            (ExportCache() if exports is None else contextlib.nullcontext(exports)) as exports:
        for f in TOKENIZER_FILES:
            if (ckpt.path / f).is_file():
                link_or_copy(ckpt.path / f, tmp / f)   # large and never modified: shared
        t0 = time.perf_counter()
        extra = variant.build(variant, ckpt, tmp, config, exports) or {}
        build_s = time.perf_counter() - t0
        check_quantized(name, variant.precision, extra.get("quantized_ops"))
        weights = ckpt.path / "model.safetensors"
        source = {"checkpoint": str(ckpt.path.resolve()),
                  "name": ckpt.manifest.get("name", ckpt.path.name),
                  "weights_sha256": ckpt.manifest.get("files", {}).get("model.safetensors")
                  or (mf.sha256(weights) if weights.is_file() else None)}
        man = mf.write(tmp, kind="variant", source=source, extra={
            "variant": name, "backend": variant.backend, "precision": variant.precision,
            "device": variant.device, "config": config.to_json(),
            "calibration": extra.pop("calibration", None),
            "build_s": round(build_s, 3),
            "model": {**ckpt.card.to_json(), "name": source["name"],
                      "role": ckpt.manifest.get("role"), "base_model": ckpt.manifest.get("base_model"),
                      "num_layers": num_layers(ckpt.path), **param_counts(ckpt.path)},
            **extra})
    return man


@dataclass
class Loaded:
    """A loaded variant directory. `load_s`/`mem_load_mb` are filled by whoever times the load
    (`xopt bench`); nothing else is set on it from outside."""

    runner: Runner
    manifest: dict
    directory: Path
    config: VariantConfig
    load_s: float | None = None
    mem_load_mb: float | None = None

    @property
    def card(self):
        from xopt.modeling import ModelCard

        return ModelCard.from_json(self.manifest["model"])

    @property
    def model_name(self) -> str:
        return self.manifest["model"].get("name") or self.manifest["source"].get("name", "?")

    @property
    def model_fields(self) -> dict:
        """What every eval and bench record says about the model: family, role, size."""
        m = self.manifest["model"]
        return {k: m[k] for k in ("base_model", "role", "params", "non_embedding_params") if m.get(k) is not None}

    def tokenizer(self):
        from xopt.hf import load_tokenizer

        return load_tokenizer(self.directory)

    def artefact_mb(self) -> float:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file()) / 2**20


def load_variant(directory: str | Path) -> Loaded:
    """Open a variant directory: check manifest, hashes and host, then load its runner."""
    directory = Path(directory)
    man = mf.read(directory, kind="variant")
    name = man.get("variant")
    if name not in REGISTRY:
        raise XoptError(f"{directory}: manifest names variant {name!r}, which this xopt "
                        f"({man.get('xopt_version')} -> current) does not know")
    variant = REGISTRY[name]
    if reason := variant.unavailable_reason():
        raise XoptError(f"{directory}: variant {name} cannot run on this host: {reason}")
    config = variant.read_config(man, str(directory))
    runner = variant.load(variant, directory, man, config)
    return Loaded(runner, man, directory, config)

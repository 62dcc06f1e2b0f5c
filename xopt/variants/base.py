"""What the variant families share: `Runner`, `Variant`, the config base classes, `KeepPolicy`.

A variant's recipe parameters are a frozen dataclass (a `VariantConfig` subclass, defined in
its family file, one instance per variant holding that variant's defaults). Options reach it
through `from_options`, which refuses unknown or inapplicable options and values of the wrong
type in one line; the manifest stores it as `{"type", "version", "data"}` (`to_json`) and
loading reads it back with `from_json`, refusing another type or version.

What a build really quantised is counted from the built artefact, not from the recipe's intent
(`quantized_ops`: ONNX node types after ONNX Runtime's optimiser in `xopt.variants.onnx_graph`, module
types of a converted torch module here in `torch_quantized_ops`): the manifest stores
`quantized_ops` ({"count", "ops": {op type: n}}) and `kept` (the Linears left in float, by
module name), and `compile_variant` refuses a low-precision variant whose artefact has none.

`KeepPolicy` says which `nn.Linear` layers of the XoptModel a quantising recipe leaves in higher
precision, and which precision that is. It matches *module names*
(`encoder.encoder.layer.3.output.dense`, `classifier.out_proj`, `head`); ONNX-based recipes map node names to module
names with `xopt.calibration.profile.onnx_node_to_module`, the one translation between the two.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from xopt.errors import XoptError

PROFILE_FILE = "calibration_profile.json"   # the calibration profile a calibrated variant saves
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "head.safetensors", "config.json")


def weight_files(path: Path) -> list[str]:
    """The files of a checkpoint directory that hold its weights and config (shards included)."""
    return [f for f in WEIGHT_FILES if (path / f).is_file()] + sorted(p.name for p in path.glob("model-*.safetensors"))


MODEL_INPUTS = ("input_ids", "attention_mask")   # what every runner's `prepare` takes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "sentencepiece.bpe.model")

# The int8 recipes' default: FFN output projections (their input is GELU's output, whose outliers
# per-tensor activation scales cannot represent) and the head (negligible compute, and its logits
# are what the task scores) stay in higher precision. The head's modules carry Hugging Face's
# names (xopt.hf: `classifier`, `classifier.dense`/`out_proj`, `pooler.dense`, BERT's
# `encoder.pooler.dense`, `qa_outputs`) or xopt's `head` (linear layout).
FFN_OUT = r"encoder\.layer\.\d+\.output\.dense$"
HEAD = r"^(head|classifier|qa_outputs|pooler|encoder\.pooler)(\.|$)"
FFN_OUT_AND_HEAD = FFN_OUT + "|" + HEAD


def output_names(man: dict) -> tuple[str, ...]:
    """The outputs of the model a variant manifest describes."""
    from xopt.modeling import output_names as names

    return names(man["model"])


# ---------------------------------------------------------------------------------------
# Which layers stay in higher precision

@dataclass(frozen=True)
class KeepPolicy:
    """Linear layers left unquantised: `pattern` is a regex searched in each Linear's module
    name ('' keeps none); `precision` is what the kept layers run in ("fp32", "fp16", "bf16",
    or "float": the variant's float dtype, fp16 on CUDA and fp32 on CPU)."""

    pattern: str = ""
    precision: str = "fp32"

    def __post_init__(self):
        if "/" in self.pattern:
            raise XoptError(f"keep pattern {self.pattern!r} names ONNX nodes; give a regex over Linear module "
                            rf"names, e.g. '{FFN_OUT_AND_HEAD}'")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise XoptError(f"keep pattern {self.pattern!r} is not a regular expression ({e})") from None

    def keeps(self, module_name: str) -> bool:
        return bool(self.pattern) and re.search(self.pattern, module_name) is not None

    def quantizes(self, module_name: str) -> bool:
        return not self.keeps(module_name)

    def keeps_node(self, onnx_node_name: str) -> bool:
        """For an ONNX MatMul/Gemm node of the TorchScript export (its name is its module's scope)."""
        from xopt.calibration.profile import onnx_node_to_module

        return self.keeps(onnx_node_to_module(onnx_node_name))

    def split(self, names) -> tuple[list[str], list[str]]:
        """(quantised, kept) of the given Linear names, in their order: what a build records."""
        names = list(names)
        return [n for n in names if self.quantizes(n)], [n for n in names if self.keeps(n)]

    def linears(self, module) -> list[str]:
        """The names of the Linears of `module` this policy quantises, in module order."""
        import torch

        return [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and self.quantizes(n)]


# ---------------------------------------------------------------------------------------
# What really runs in low precision

FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")


def quantized_ops_record(histogram: dict[str, int]) -> dict:
    """The manifest's `quantized_ops`: how many ops run in low precision, by type."""
    ops = {k: int(v) for k, v in sorted(histogram.items()) if v}
    return {"count": sum(ops.values()), "ops": ops}


def torch_quantized_ops(module) -> tuple[dict, list[str]]:
    """(`quantized_ops`, kept Linear names) of a converted torch module, from what it holds:
    torch.ao's quantised Linear modules, bitsandbytes' 8/4-bit Linears, and nn.Linear whose
    weight torchao replaced by a quantised tensor subclass (counted by that subclass's name).
    An nn.Linear with a plain float weight is kept."""
    import torch

    hist: dict[str, int] = {}
    kept = []
    for name, m in module.named_modules():
        kind = type(m).__name__
        mod = type(m).__module__
        if mod.startswith(("torch.ao.nn.quantized", "bitsandbytes")):
            if re.search(r"Linear(8bitLt|4bit|FP4|NF4)?$", kind):   # not their packed-params holders
                key = f"{mod.split('.modules')[0]}.{kind}"
                hist[key] = hist.get(key, 0) + 1
        elif isinstance(m, torch.nn.Linear):
            w = m.weight
            if type(w) in (torch.Tensor, torch.nn.Parameter) and w.dtype in (torch.float32, torch.float16,
                                                                               torch.bfloat16):
                kept.append(name)
            else:
                key = f"Linear[{type(getattr(w, 'original_weight_tensor', w)).__name__}]"
                hist[key] = hist.get(key, 0) + 1
    return quantized_ops_record(hist), kept


def check_quantized(variant_name: str, precision: str, record: dict | None) -> None:
    """Refuse a low-precision build whose artefact runs nothing in low precision (one line)."""
    if precision in FLOAT_PRECISIONS or record is None:
        return
    if not record.get("count"):
        raise XoptError(f"variant {variant_name}: the built artefact runs no op in {precision} (every layer was "
                        "left in float: check the keep option and the calibration profile's layer names); "
                        "nothing written")


# ---------------------------------------------------------------------------------------
# Configs

def option(default, kind: str, help: str):
    """A config field: `kind` is how an option value is read (int, float, bool, auto_bool: "auto"
    or a bool, str, keep, alpha: a number or a comma list of numbers), `help` says what it does."""
    return field(default=default, metadata={"kind": kind, "help": help})


def _read(kind: str, value, default):
    if kind == "keep":
        if isinstance(value, KeepPolicy):
            return value
        if isinstance(value, dict):
            return KeepPolicy(**value)
        if isinstance(value, str):
            return KeepPolicy(value, default.precision)
        raise ValueError("expected a regex over Linear module names")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError("expected true or false")
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if kind == "alpha":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return value
        raise ValueError("expected a number or a comma list of numbers")
    if kind == "auto_bool":
        if isinstance(value, bool) or value == "auto":
            return value
        if str(value).lower() in ("auto", "true", "false", "1", "0", "yes", "no"):
            return "auto" if str(value).lower() == "auto" else _read("bool", value, default)
        raise ValueError("expected auto, true or false")
    if kind == "str":
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise ValueError("expected a string")
    raise AssertionError(kind)


@dataclass(frozen=True)
class VariantConfig:
    """Base of every variant config. Subclasses add `option` fields and may override `check`."""

    VERSION: ClassVar[int] = 1

    @classmethod
    def options(cls) -> dict[str, dict]:
        """Option name -> {"kind", "help"}."""
        return {f.name: dict(f.metadata) for f in dataclasses.fields(cls)}

    @classmethod
    def from_options(cls, options: dict | None, variant: str = "") -> "VariantConfig":
        """The config of `options` over this class's defaults, validated (`variant` names the
        variant in error messages)."""
        return cls().with_options(options, variant)

    def with_options(self, options: dict | None, variant: str = "") -> "VariantConfig":
        """This config with `options` applied and validated."""
        known = self.options()
        who = f"variant {variant}" if variant else type(self).__name__
        changes = {}
        for key, value in (options or {}).items():
            if value is None:
                continue
            if key not in known:
                takes = ", ".join(known) or "no options"
                raise XoptError(f"{who} does not take option {key} (--{key.replace('_', '-')}); it takes: {takes}")
            try:
                changes[key] = _read(known[key]["kind"], value, getattr(self, key))
            except (TypeError, ValueError) as e:
                raise XoptError(f"{who}: option {key} = {value!r}: {e}") from None
        cfg = dataclasses.replace(self, **changes)
        cfg.check(who)
        return cfg

    def check(self, who: str) -> None:
        """Refuse combinations of values that cannot work (XoptError, one line)."""

    @classmethod
    def parse_flag(cls, key: str, value, flag: str):
        """The value of option `key` given as command-line `flag`: a config whose options have
        a syntax of their own on the command line (e.g. trtexec's shapes) reads it here."""
        return value

    def to_json(self) -> dict:
        data = {f.name: dataclasses.asdict(v) if isinstance(v := getattr(self, f.name), KeepPolicy) else v
                for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, "version": self.VERSION, "data": data}

    @classmethod
    def from_json(cls, d, where: str = "config") -> "VariantConfig":
        if not isinstance(d, dict) or d.get("type") != cls.__name__ or d.get("version") != cls.VERSION:
            got = f"{d.get('type')} version {d.get('version')}" if isinstance(d, dict) else "none"
            raise XoptError(f"{where}: variant config is {got}, this xopt reads {cls.__name__} version "
                            f"{cls.VERSION}; rebuild it with `xopt compile ... --force`")
        data = d.get("data")
        known = cls.options()
        if not isinstance(data, dict) or set(data) - set(known):
            raise XoptError(f"{where}: malformed {cls.__name__} data; rebuild it with `xopt compile ... --force`")
        defaults = cls()
        try:
            values = {k: None if v is None else _read(known[k]["kind"], v, getattr(defaults, k))
                      for k, v in data.items()}
        except (TypeError, ValueError) as e:
            raise XoptError(f"{where}: malformed {cls.__name__} data ({e}); rebuild it with "
                            "`xopt compile ... --force`") from None
        return cls(**values)


CALIB_METHOD_HELP = ("minmax | percentile[:P] | entropy | mse, optionally +smoothquant "
                     "('smoothquant' = minmax+smoothquant)")


@dataclass(frozen=True)
class CalibratedConfig(VariantConfig):
    """Options of the recipes that calibrate activation ranges (`xopt.calibration.run`, which
    takes the config whole). `SMOOTHQUANT_ALPHAS` and `SMOOTHQUANT_LAYERS` are what SmoothQuant
    uses where `smoothquant_alpha` / `smoothquant_layers` are unset; they are class constants, not
    field defaults, so a manifest records only what the user chose."""

    SMOOTHQUANT_ALPHAS: ClassVar[tuple[float, ...]] = (0.3, 0.5, 0.7, 0.85)
    # The Linears that read a LayerNorm output, as in the SmoothQuant paper (QKV and FC1): their
    # outlier channels are LayerNorm's, consistent across tokens, which smoothing moves into the
    # weights. The attention-output and FFN-output inputs (attention context, GELU output) have no
    # such fixed outlier channels, and smoothing them costs accuracy on the demo model.
    SMOOTHQUANT_LAYERS: ClassVar[str] = r"attention\.self\.(query|key|value)$|intermediate\.dense$"

    calib_data: str | None = option(None, "str", "calibration texts: demo suite JSON, a text file, a directory "
                                                 "of <lang>.txt, or NAME:ARG (default: the demo suite)")
    calib_langs: str = option("all", "str", "all, en, or a comma-separated list of language codes")
    calib_samples: int = option(256, "int", "calibration texts, balanced over the languages")
    calib_seed: int = option(0, "int", "seed of the calibration sample")
    calib_dev_samples: int = option(96, "int", "held-out texts that score SmoothQuant's alpha and sensitivity")
    calib_method: str = option("minmax", "str", CALIB_METHOD_HELP)
    smoothquant_alpha: float | str | None = option(None, "alpha", "SmoothQuant alpha, or a comma list to choose "
                                                                  "from on the held-out sample")
    smoothquant_layers: str | None = option(None, "str", "regex of the Linears SmoothQuant smooths (default: those "
                                                         "reading a LayerNorm output: query, key, value, FFN input)")
    calib_profile: str | None = option(None, "str", "a saved profile (`xopt calibrate`) instead of calibrating")

    def check(self, who: str) -> None:
        from xopt.calibration.run import parse_method

        super().check(who)
        parse_method(self.calib_method)
        if self.smoothquant_layers is not None:
            try:
                re.compile(self.smoothquant_layers)
            except re.error as e:
                raise XoptError(f"smoothquant_layers {self.smoothquant_layers!r} is not a regular expression ({e})") \
                    from None
        if self.calib_samples <= 0:
            raise XoptError("--calib-samples must be positive")
        if self.calib_dev_samples < 0:
            raise XoptError("--calib-dev-samples must be >= 0")

    def smoothquant_alphas(self) -> list[float]:
        """The SmoothQuant alphas to try: the given one, a comma list, or `SMOOTHQUANT_ALPHAS`."""
        given = self.smoothquant_alpha
        try:
            alphas = list(self.SMOOTHQUANT_ALPHAS) if given is None else \
                [float(a) for a in (given.split(",") if isinstance(given, str) else [given])]
        except ValueError:
            raise XoptError(f"smoothquant_alpha {given!r}: give a number or a comma list in [0, 1]") from None
        if not alphas or not all(0 <= a <= 1 for a in alphas):
            raise XoptError(f"smoothquant_alpha {given!r}: values must lie in [0, 1]")
        return alphas

    @property
    def smoothquant_pattern(self) -> str:
        """Regex of the Linears SmoothQuant smooths."""
        return self.smoothquant_layers or self.SMOOTHQUANT_LAYERS


@dataclass(frozen=True)
class FallbackConfig(CalibratedConfig):
    """A calibrated recipe that can also leave the most sensitive layers unquantised."""

    keep_fp16: int | None = option(None, "int", "keep the k most sensitive layers unquantised")
    max_drop: float | None = option(None, "float", "keep the most sensitive layers unquantised until the fidelity "
                                                   "drop on the held-out sample is at most this")
    sensitivity_unit: str = option("layer", "str", "layer (each Linear) or kind (query, key, ... across layers)")

    def check(self, who: str) -> None:
        super().check(who)
        if (self.keep_fp16 is not None and self.keep_fp16 < 0) or (self.max_drop is not None and self.max_drop < 0):
            raise XoptError("--keep-fp16 and --max-drop must be >= 0")
        if self.sensitivity_unit not in ("layer", "kind"):
            raise XoptError(f"unknown sensitivity unit {self.sensitivity_unit!r}; use layer or kind")


# ---------------------------------------------------------------------------------------
# Runners and the registry entry

@dataclass(frozen=True)
class ServingSpec:
    """What a Triton model repository entry serves for a variant directory (`xopt export`):
    `head` is the config's backend or platform ({"backend": "onnxruntime"}), `model_file` the
    artefact put under the version directory as `file_name`, `io_graph` the ONNX graph whose
    inputs and outputs are the artefact's, `max_batch` the largest batch the artefact accepts."""

    head: dict
    model_file: Path
    file_name: str
    io_graph: Path
    max_batch: int | None = None


def require_file(directory: Path, path: Path, variant: str) -> Path:
    """`path` when it is a file, else the one-line error that says how to rebuild `directory`."""
    if not path.is_file():
        raise XoptError(f"{directory}: {path.name} is missing; rebuild with `xopt compile --variant {variant} --force`")
    return path


def max_shapes_flag(batch: int, seq_len: int) -> str:
    """The `xopt compile` flag that asks for an optimisation profile up to batch x seq_len."""
    return f"--max-shapes {','.join(f'{n}:{batch}x{seq_len}' for n in MODEL_INPUTS)}"


class Runner:
    """Runs one compiled variant. `prepare` moves inputs to the backend's own form (kept out
    of timed loops), `run` is the timed call, `synchronize` waits for the device."""

    device = "cpu"
    limits: dict | None = None   # {"max_batch", "max_seq_len"} the backend accepts, when bounded

    def __init__(self, name: str, output_names: tuple[str, ...], info: dict | None = None):
        self.name = name
        self.output_names = output_names
        self.info: dict = dict(info or {})   # facts worth recording: compile time, fallback op counts, ...

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
    build: Callable[..., dict]          # (variant, checkpoint, out_dir, config, exports) -> manifest extras
    load: Callable[..., Runner]         # (variant, directory, manifest, config) -> Runner
    config: VariantConfig = VariantConfig()   # this variant's defaults: its config class's own
    requires: tuple[str, ...] = ()      # importable modules
    min_capability: tuple[int, int] | None = None   # CUDA compute capability
    cpu_flags: tuple[str, ...] = ()     # /proc/cpuinfo flags, any one of which the host needs
    peer: bool = False                  # a library's stock recipe that xopt's own are compared against
    # how low-precision activations are scaled: "dynamic per tensor" (at run time over the whole
    # batch: a text's answer depends on its batch neighbours), "dynamic per token" (per row) or
    # "static" (calibrated); None for float variants. Reported beside xopt.invariance's measurement.
    activation_scales: str | None = None
    # manifest -> {"max_batch", "max_seq_len"} the built artefact accepts, when bounded
    limits_of: Callable[[dict], dict] | None = None
    # (directory, manifest) -> ServingSpec, for a variant whose artefact Triton loads
    serving: Callable[[Path, dict], ServingSpec] | None = None

    @property
    def calibrated(self) -> bool:
        return isinstance(self.config, CalibratedConfig)

    def limits(self, man: dict) -> dict:
        """{"max_batch", "max_seq_len"} a directory of this variant accepts ({} when unbounded)."""
        return dict(self.limits_of(man)) if self.limits_of else {}

    def parse_flag(self, key: str, value, flag: str):
        """Option `key` of this variant's config as given by command-line `flag`."""
        return type(self.config).parse_flag(key, value, flag)

    def configure(self, options: dict | None) -> VariantConfig:
        return type(self.config).from_options(options, self.name)

    def read_config(self, man: dict, where: str) -> VariantConfig:
        if "config" not in man:
            raise XoptError(f"{where}: manifest written by xopt {man.get('xopt_version')} holds no variant config; "
                            f"rebuild it with `xopt compile ... --variant {self.name} --force`")
        return type(self.config).from_json(man["config"], where)

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
        if self.cpu_flags:
            from xopt.host import cpu_flags

            if not cpu_flags() & set(self.cpu_flags):
                return f"needs a CPU with {' or '.join(self.cpu_flags)} (this one has neither)"
        return None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a (large, immutable) file into a variant dir; copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

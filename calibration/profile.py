"""Calibration profiles: what every int8 backend of xopt consumes (stable API; add, don't rename).

A `Profile` is keyed by the *torch module name of each nn.Linear* of the XoptModel
(`encoder.layer.0.attention.self.query`, ..., `head`), the one naming every backend can map
to: ONNX node `/encoder/layer.0/attention/self/query/MatMul` (see `onnx_node_to_module`),
TensorRT Q/DQ on that MatMul's input, a torch int8 kernel replacing that Linear.

    from xopt.calibration.profile import (Profile, collect_activation_stats, calibrate_model,
        forward_loop_from_batches, smoothing_factors, apply_smoothing, fake_quantize)

    loop = forward_loop_from_batches(calib_set.batches())        # forward_loop(model), as Model-Optimizer
    prof = calibrate_model(model, loop, method="percentile", params={"percentile": 99.99},
                           calibration=calib_set.identity(), model_info={"name": ..., "weights_sha256": ...})
    prof.save("profile.json");  prof = Profile.load("profile.json")
    prof.check(model)          # XoptError naming the tensors when the profile is from another model
    prof.apply_smoothing(model)   # no-op unless the profile carries SmoothQuant factors
    prof.activations[name]     # input of Linear `name`: {"amax", "rmin", "rmax", "scale", "zero_point"}
                               #   amax: symmetric int8 clip (scale = amax / 127, TensorRT/fp8 style);
                               #   rmin/rmax, scale/zero_point: ONNX Runtime's asymmetric uint8 grid
    prof.weights[name]         # {"axis": 0, "amax": [per output channel]} (symmetric, scale = amax / 127)
    prof.smoothing             # None or {"alpha", "scales": {name: [per input channel s_j]}}
    prof.keep                  # Linear names to leave in higher precision (sensitivity fallback)

Lower level:
- `collect_activation_stats(model, forward_loop, names=None)` -> {name: ActStats}: forward
  pre-hooks on the named Linears record a |x| histogram (per tensor), min/max, and the
  per-input-channel max |x| (SmoothQuant's statistic). Non-finite inputs stop calibration with
  an XoptError naming the layer.
- `smoothing_factors(act_channel_amax, weight, alpha)` -> s (SmoothQuant, Xiao et al. 2023):
  s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha); the Linear computes (x / s) @ (W * s)^T.
- `group_smoothing_factors(...)`: the same, one vector per group of Linears that read one input
  (a layer's query, key and value: `input_groups`), as the fused attention needs.
- `apply_smoothing(model, scales)`: W[:, j] *= s_j and a forward pre-hook x -> x / s on each
  named Linear. In a post-LayerNorm encoder (BERT, XLM-R) the LayerNorm output is also the
  residual stream, so 1/s cannot be folded into the LayerNorm as in pre-LN decoders; it stays
  an explicit per-channel multiply (one elementwise op before the Linear; a backend may fold
  it where the producer allows).
- `fake_quantize(model, profile, skip=())`: context manager simulating the int8 Q/DQ graph in
  torch (uint8 asymmetric activations per tensor, int8 symmetric weights per output channel,
  torch's own fake-quantize ops), used for sensitivity and for choosing SmoothQuant's alpha.

Calibration statistics are only correct when padded positions never enter them: the forward
loops of xopt run calibration texts at batch 1, unpadded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from xopt.calibration.calibrators import (DEFAULTS, METHODS, Histogram, compute_amax, int8_scale,
                                          tensor_range, uint8_qparams)
from xopt.errors import XoptError, read_json

FORMAT = "xopt-calibration-profile/1"
SMOOTH_METHOD_SUFFIX = "+smoothquant"


def linear_names(model) -> list[str]:
    """Every nn.Linear of the model, by module name, in module order."""
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def onnx_node_to_module(node_name: str) -> str:
    """`/encoder/layer.0/attention/self/query/MatMul` -> `encoder.layer.0.attention.self.query`
    (the TorchScript exporter's scope naming; `/classifier/out_proj/Gemm` -> `classifier.out_proj`).
    The scope ends at its first op-named part: ONNX Runtime's quantiser and optimiser and
    OpenVINO's NNCF append to the exporter's name (`/head/Gemm_MatMul/...`,
    `.../query/MatMul/fq_weights_1` -> the module). An encoder-only graph is exported through
    `xopt.modeling.WithHidden`, whose `model` scope is dropped: no XoptModel module is named `model`.
    This is the one translation from ONNX node names to module names."""
    parts = node_name.strip("/").split("/")
    if parts[0] == "model":
        parts = parts[1:]
    for i, part in enumerate(parts[:-1]):
        if _OP_PART.match(part):
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


_OP_PART = re.compile(r"(MatMul|Gemm|FusedMatMul|Add)")


def module_to_onnx_node(name: str, op: str = "MatMul") -> str:
    """The inverse: `encoder.layer.0.attention.self.query` -> `/encoder/layer.0/attention/self/query/MatMul`."""
    return "/" + name.replace(".", "/").replace("/layer/", "/layer.") + f"/{op}"


def fingerprint(model, names: Iterable[str] | None = None) -> dict[str, str]:
    """Linear name -> "OUTxIN:<sha256 prefix of its fp32 weight>": identifies the model a
    profile belongs to, tensor by tensor."""
    import torch

    mods = dict(model.named_modules())
    out = {}
    for n in names or linear_names(model):
        w = mods[n].weight.detach().to(torch.float32).contiguous().cpu().numpy()
        out[n] = f"{w.shape[0]}x{w.shape[1]}:{hashlib.sha256(w.tobytes()).hexdigest()[:16]}"
    return out


@dataclass
class ActStats:
    hist: Histogram
    channel_amax: np.ndarray | None = None   # max |x| per input channel


def forward_loop_from_batches(batches, description: str = "calibration") -> Callable:
    """forward_loop(model): run every (input_ids, attention_mask) numpy batch through `model`
    under inference mode, with a progress bar. `batches` may be a callable returning a fresh
    iterable (so the loop can be run more than once) or a list."""
    def loop(model):
        import torch

        from xopt.progress import track

        items = list(batches() if callable(batches) else batches)
        # One intra-op thread: batch-1 ops are too small to split, and on a loaded machine each
        # op of a multi-thread pool waits for its slowest thread, which multiplies the time per op.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for ids, mask in track(items, description):
                    model(torch.from_numpy(np.asarray(ids, dtype=np.int64)),
                          torch.from_numpy(np.asarray(mask, dtype=np.int64)))
        finally:
            torch.set_num_threads(threads)
    return loop


def collect_activation_stats(model, forward_loop: Callable, names: Iterable[str] | None = None,
                             bins: int = 2048, channel_amax: bool = False) -> dict[str, ActStats]:
    """Statistics of the inputs of the named Linears (default: all) over `forward_loop(model)`."""
    import torch

    mods = dict(model.named_modules())
    names = list(names or linear_names(model))
    missing = [n for n in names if n not in mods]
    if missing:
        raise XoptError(f"no such layer(s) in the model: {', '.join(missing[:5])}")
    stats = {n: ActStats(Histogram(bins)) for n in names}
    handles = []

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach()
            if not bool(torch.isfinite(x).all()):
                bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
                raise XoptError(f"{bad} in the input of layer {name} during calibration; the model or a "
                                "calibration text produces non-finite activations (check the checkpoint, "
                                "or the dtype it runs in)")
            x = x.float().reshape(-1, x.shape[-1])
            st = stats[name]
            st.hist.update(x.cpu().numpy())
            if channel_amax:
                cm = x.abs().amax(0).cpu().numpy()
                st.channel_amax = cm if st.channel_amax is None else np.maximum(st.channel_amax, cm)
        return hook

    try:
        for n in names:
            handles.append(mods[n].register_forward_pre_hook(hook_for(n)))
        forward_loop(model)
    finally:
        for h in handles:
            h.remove()
    never = [n for n, s in stats.items() if s.hist.counts is None]
    if never:
        raise XoptError(f"calibration never reached layer(s) {', '.join(never[:5])}: empty calibration set?")
    return stats


def weight_amax(model, names: Iterable[str]) -> dict[str, dict]:
    mods = dict(model.named_modules())
    return {n: {"axis": 0, "amax": [float(v) for v in mods[n].weight.detach().abs().amax(1).float().cpu()]}
            for n in names}


def activation_entry(st: ActStats, method: str, params: dict) -> dict:
    amax = compute_amax(st.hist, method, **params)
    rmin, rmax = tensor_range(st.hist, amax)
    scale, zp = uint8_qparams(rmin, rmax)
    return {"amax": amax, "rmin": rmin, "rmax": rmax, "scale": scale, "zero_point": zp,
            "observed_min": st.hist.min, "observed_max": st.hist.max}


def smoothing_factors(act_channel_amax, weight, alpha: float, eps: float = 1e-5) -> np.ndarray:
    """SmoothQuant's per-input-channel factors s (x / s, W * s) for one Linear."""
    import torch

    a = torch.as_tensor(np.asarray(act_channel_amax), dtype=torch.float64).clamp(min=eps)
    w = torch.as_tensor(weight).detach().abs().amax(0).to(torch.float64).clamp(min=eps)
    if a.shape != w.shape:
        raise ValueError(f"activation channels {tuple(a.shape)} != weight input channels {tuple(w.shape)}")
    s = (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=eps)
    return s.numpy()


def input_groups(names: Iterable[str]) -> list[list[str]]:
    """The Linears that read one input tensor, grouped: a self-attention's query, key and value
    (`...attention.self.{query,key,value}`), every other Linear alone. A group shares one
    SmoothQuant vector, so that a backend fusing the group into one matmul (ONNX Runtime's
    Attention, TensorRT's QKV GEMM) applies one 1/s to their common input."""
    groups: dict[str, list[str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        key = parent if parent.endswith("attention.self") and leaf in ("query", "key", "value") else n
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def group_smoothing_factors(act_channel_amax: dict, weights: dict, alpha: float,
                            names: Iterable[str]) -> dict[str, np.ndarray]:
    """SmoothQuant factors for every Linear in `names`, one vector per input group
    (`input_groups`): the group's weights are stacked, so s_j divides the largest weight of
    input channel j across the group."""
    import torch

    out = {}
    for group in input_groups(names):
        w = torch.cat([torch.as_tensor(weights[n]).detach().float() for n in group], 0)
        s = smoothing_factors(act_channel_amax[group[0]], w, alpha)
        out.update({n: s for n in group})
    return out


def apply_smoothing(model, scales: dict[str, Iterable[float]]) -> list:
    """Fold SmoothQuant factors into the named Linears (W[:, j] *= s_j) and divide their inputs
    by s with a forward pre-hook. Returns the hook handles. Applied once per model."""
    import torch

    mods = dict(model.named_modules())
    handles = []
    for name, s in scales.items():
        lin = mods.get(name)
        if lin is None:
            raise XoptError(f"smoothing factors name layer {name}, which this model does not have")
        if getattr(lin, "_xopt_smoothed", False):
            raise RuntimeError(f"{name} is already smoothed")
        s_t = torch.as_tensor(np.asarray(s), dtype=lin.weight.dtype, device=lin.weight.device)
        with torch.no_grad():
            lin.weight.mul_(s_t[None, :])
        lin.register_buffer("smooth_inv", (1.0 / s_t).contiguous(), persistent=False)
        lin._xopt_smoothed = True
        handles.append(lin.register_forward_pre_hook(lambda m, args: (args[0] * m.smooth_inv, *args[1:])))
    return handles


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Profile:
    method: str                                    # minmax | percentile | entropy | mse
    params: dict                                   # the method's parameters
    activations: dict[str, dict]                   # Linear name -> its input's range (see module doc)
    weights: dict[str, dict]                       # Linear name -> per-output-channel amax
    model: dict                                    # {"name", "weights_sha256", "fingerprint": {...}}
    calibration: dict                              # the calibration set's identity
    smoothing: dict | None = None                  # {"alpha", "scales": {Linear name: [s_j]}, ...}
    keep: list[str] = field(default_factory=list)  # Linear names kept in higher precision
    sensitivity: list[dict] = field(default_factory=list)   # ranked, most sensitive first
    created: str = ""
    xopt_version: str = ""

    @property
    def full_method(self) -> str:
        return self.method + (SMOOTH_METHOD_SUFFIX if self.smoothing else "")

    def identity(self) -> dict:
        """What goes into a variant manifest's `calibration` field."""
        return {**self.calibration, "method": self.full_method, "params": self.params,
                **({"smoothquant_alpha": self.smoothing["alpha"]} if self.smoothing else {}),
                "keep": list(self.keep)}

    def to_json(self) -> dict:
        return {"format": FORMAT, "method": self.method, "params": self.params, "model": self.model,
                "calibration": self.calibration, "smoothing": self.smoothing, "keep": self.keep,
                "sensitivity": self.sensitivity, "activations": self.activations, "weights": self.weights,
                "created": self.created, "xopt_version": self.xopt_version}

    @classmethod
    def from_json(cls, d: dict, where: str = "profile") -> "Profile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise XoptError(f"{where}: not an xopt calibration profile (format "
                            f"{d.get('format') if isinstance(d, dict) else '?'!r}, expected {FORMAT!r}); "
                            "make one with `xopt calibrate CHECKPOINT --out FILE`")
        try:
            prof = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as e:
            raise XoptError(f"{where}: malformed calibration profile ({e})") from None
        prof._check_ranges(where)
        return prof

    def _check_ranges(self, where: str) -> None:
        """Refuse ranges no int8 scale can come from: an activation amax that is missing, not
        finite or not positive (scale = amax / 127 would be 0 or NaN), or a weight amax that is
        not finite or negative (a zero weight channel is clamped, as an all-zero row is real)."""
        fix = "recalibrate with `xopt calibrate CHECKPOINT --out FILE`"
        if not isinstance(self.activations, dict) or not isinstance(self.weights, dict):
            raise XoptError(f"{where}: malformed calibration profile (activations and weights must be "
                            f"objects); {fix}")
        for name, act in self.activations.items():
            amax = act.get("amax") if isinstance(act, dict) else None
            if not _number(amax) or not math.isfinite(amax) or amax <= 0:
                raise XoptError(f"{where}: activation amax of {name} is {amax!r}, expected a finite number > 0; "
                                f"{fix}")
        for name, w in self.weights.items():
            amax = w.get("amax") if isinstance(w, dict) else None
            if not isinstance(amax, list) or not all(_number(v) and math.isfinite(v) and v >= 0 for v in amax):
                raise XoptError(f"{where}: weight amax of {name} is not a list of finite numbers >= 0; {fix}")

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + fsync + rename)."""
        from xopt.manifest import atomic_write

        return atomic_write(Path(path), json.dumps(self.to_json(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        d = read_json(path, "calibration profile", "make one with `xopt calibrate`")
        return cls.from_json(d, str(path))

    def check(self, model, where: str = "calibration profile") -> None:
        """Refuse a profile made for another model, naming the tensors that do not match."""
        mine = self.model.get("fingerprint") or {}
        theirs = fingerprint(model, [n for n in linear_names(model)])
        only_profile = [n for n in mine if n not in theirs]     # module order, for readable messages
        only_model = [n for n in theirs if n not in mine]
        shape = [n for n in mine if n in theirs and mine[n].split(":")[0] != theirs[n].split(":")[0]]
        values = [n for n in mine if n in theirs and n not in shape and mine[n] != theirs[n]]
        problems = []

        def few(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")

        if only_profile:
            problems.append(f"tensors not in this model: {few(only_profile)}")
        if only_model:
            problems.append(f"tensors of this model missing from the profile: {few(only_model)}")
        if shape:
            problems.append(f"different shapes: {few(shape)}")
        if values:
            problems.append(f"different weights: {few(values)}")
        if problems:
            raise XoptError(f"{where} was made for another model ({self.model.get('name', '?')}): "
                            + "; ".join(problems) + ". Recalibrate this checkpoint with `xopt calibrate`")

    def apply_smoothing(self, model) -> list:
        return apply_smoothing(model, self.smoothing["scales"]) if self.smoothing else []


def calibrate_model(model, forward_loop: Callable, method: str = "minmax", params: dict | None = None,
                    names: Iterable[str] | None = None, calibration: dict | None = None,
                    model_info: dict | None = None, smoothing: dict | None = None) -> Profile:
    """Collect statistics over `forward_loop(model)` and turn them into a Profile. When
    `smoothing` is given, `model` must already be smoothed with its scales (the ranges are
    those of the smoothed inputs); the fingerprint is taken before, from `model_info`."""
    from xopt import __version__
    from xopt.manifest import now

    if method not in METHODS:
        raise XoptError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)} "
                        "(and smoothquant, on top of one of them)")
    params = {**DEFAULTS[method], **(params or {})}
    names = list(names or linear_names(model))
    stats = collect_activation_stats(model, forward_loop, names)
    acts = {n: activation_entry(st, method, params) for n, st in stats.items()}
    info = dict(model_info or {})
    if "fingerprint" not in info:
        if smoothing:
            raise ValueError("a smoothed model's fingerprint must be taken before smoothing: pass "
                             "model_info={'fingerprint': fingerprint(model)} computed beforehand")
        info["fingerprint"] = fingerprint(model)
    return Profile(method=method, params=params, activations=acts, weights=weight_amax(model, names),
                   model=info, calibration=dict(calibration or {}), smoothing=smoothing,
                   created=now(), xopt_version=__version__)


@contextlib.contextmanager
def fake_quantize(model, profile: Profile, skip: Iterable[str] = (), only: Iterable[str] | None = None):
    """Simulate the profile's int8 graph in torch: each quantised Linear's input through a
    uint8 per-tensor fake-quantiser with the profile's scale/zero-point, its weight through an
    int8 per-output-channel one (scale = amax / 127). `skip`/`only` select the Linears."""
    import torch

    mods = dict(model.named_modules())
    skip = set(skip) | set(profile.keep)
    names = [n for n in (only if only is not None else profile.activations) if n not in skip]
    saved, handles = {}, []

    def hook_for(e):
        scale, zp = float(e["scale"]), int(e["zero_point"])

        def hook(module, args):
            return (torch.fake_quantize_per_tensor_affine(args[0], scale, zp, 0, 255), *args[1:])
        return hook

    try:
        with torch.no_grad():
            for n in names:
                lin = mods[n]
                w = lin.weight
                amax = torch.as_tensor(profile.weights[n]["amax"], dtype=torch.float32).clamp(min=1e-12)
                scale = int8_scale(amax).to(w.device)
                saved[n] = w.detach().clone()
                w.copy_(torch.fake_quantize_per_channel_affine(
                    w.float(), scale, torch.zeros_like(scale, dtype=torch.int32), 0, -127, 127).to(w.dtype))
                handles.append(lin.register_forward_pre_hook(hook_for(profile.activations[n])))
        yield names
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, w in saved.items():
                mods[n].weight.copy_(w)


def output_fidelity(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """100 x mean cosine between reference and quantised outputs (every output, every row):
    a label-free score; its drop (100 - fidelity) ranks sensitivity. 1 - cos is computed as
    ||a/|a| - b/|b|||^2 / 2 in float64, which keeps the tiny drops of one layer resolvable."""
    drops = []
    for k, r in ref.items():
        r2 = r.reshape(len(r), -1).astype(np.float64)
        g2 = got[k].reshape(len(r), -1).astype(np.float64)
        rn = r2 / np.maximum(np.linalg.norm(r2, axis=1, keepdims=True), 1e-30)
        gn = g2 / np.maximum(np.linalg.norm(g2, axis=1, keepdims=True), 1e-30)
        drops.append(float(np.mean(0.5 * ((rn - gn) ** 2).sum(1))))
    return 100.0 * (1.0 - float(np.mean(drops))) if drops else math.nan

"""Checkpoint -> calibration profile: what `xopt calibrate` and the int8 variants call.

The recipe's config is passed whole (`xopt.variants.base.CalibratedConfig` or a subclass; its
fields are read by name, so this layer imports no variant):
- `calib_method`: minmax | percentile | entropy | mse, optionally `+smoothquant`
  ("smoothquant" alone = "minmax+smoothquant", as in the SmoothQuant paper);
  "percentile:99.9" for another percentile than 99.99; `smoothquant_alphas()` (the alphas to
  try: the given one, a comma list to choose from, or the config's defaults, chosen on the
  held-out sample);
- `calib_data`, `calib_langs`, `calib_samples`, `calib_seed`, `calib_dev_samples`
  (see `xopt.calibration.CalibrationSet.from_config`);
- `smoothquant_pattern`: regex of the Linears SmoothQuant smooths (the config's default unless
  `smoothquant_layers` is given);
- `keep_fp16` (k) / `max_drop` (fidelity points): sensitivity-ranked fallback;
  `sensitivity_unit`: layer | kind (configs without these fields have no fallback);
- `calib_profile`: a saved profile to use instead of calibrating (checked against the model).

`quantized` (a predicate on Linear names) says which Linears the calling recipe quantises; the
others are calibrated (a profile serves every backend) but not smoothed, not fake-quantised
when scoring, and not candidates for the fallback.
"""

from __future__ import annotations

import math
import re
from typing import Callable

from xopt.calibration.calibrators import METHODS
from xopt.errors import XoptError


def parse_method(spec: str | None) -> tuple[str, bool, dict]:
    """"percentile:99.9+smoothquant" -> ("percentile", True, {"percentile": 99.9});
    "smoothquant" -> ("minmax", True, {})."""
    raw = (spec or "minmax").strip().lower()
    parts = [p for p in raw.replace("-", "").split("+") if p]
    smooth = "smoothquant" in parts
    base = [p for p in parts if p != "smoothquant"]
    params = {}
    if len(base) == 1 and ":" in base[0]:
        base[0], arg = base[0].split(":", 1)
        try:
            params = {"percentile": float(arg)}
        except ValueError:
            base = ["?"]
        if base[0] != "percentile" or not 0 < params.get("percentile", -1) <= 100:
            raise XoptError(f"calibration method {spec!r}: only percentile takes a value, in (0, 100], "
                            "e.g. percentile:99.9")
    if len(base) > 1 or (base and base[0] not in METHODS) or not parts:
        raise XoptError(f"unknown calibration method {spec!r}; use one of {', '.join(METHODS)} "
                        "(percentile:P for another percentile), smoothquant, or METHOD+smoothquant")
    return (base[0] if base else "minmax"), smooth, params


def model_info(ckpt, module) -> dict:
    from xopt.calibration.profile import fingerprint

    files = ckpt.manifest.get("files", {})
    return {"name": ckpt.manifest.get("name", ckpt.path.name), "checkpoint": str(ckpt.path.resolve()),
            "weights_sha256": files.get("model.safetensors"), "head_sha256": files.get("head.safetensors"),
            "fingerprint": fingerprint(module)}


def calibrate_checkpoint(ckpt, config, quantized: Callable[[str], bool] | None = None, module=None):
    """(Profile, module) for a checkpoint under the recipe's `config`: the module is the fp32
    XoptModel with the profile's smoothing applied (what the recipe then exports or converts)."""
    from xopt.calibration import CalibrationSet
    from xopt.calibration.profile import calibrate_model, forward_loop_from_batches, linear_names
    from xopt.modeling import load_module

    keep_k, max_drop = getattr(config, "keep_fp16", None), getattr(config, "max_drop", None)
    if config.calib_profile:
        return _saved_profile(ckpt, config, keep_k, max_drop, module)
    # user errors first, before any model is loaded
    method, smooth, params = parse_method(config.calib_method)
    if keep_k is not None and int(keep_k) < 0 or max_drop is not None and float(max_drop) < 0:
        raise XoptError("--keep-fp16 and --max-drop must be >= 0")
    calib = CalibrationSet.from_config(config, tokenizer_dir=ckpt.path, input_prefix=ckpt.card.input_prefix)
    module = module if module is not None else load_module(ckpt)
    info = model_info(ckpt, module)
    names = linear_names(module)
    qnames = [n for n in names if quantized is None or quantized(n)]
    loop = forward_loop_from_batches(list(calib.batches(ckpt.card.max_length)))   # tokenised once
    alphas = config.smoothquant_alphas()
    # the held-out sample scores alpha trials and the fallback; one given alpha needs no trial
    dev = _held_out(ckpt, calib, module) if (smooth and len(alphas) > 1) or keep_k is not None \
        or max_drop is not None else None
    smoothing = None
    pattern = config.smoothquant_pattern
    snames = [n for n in qnames if re.search(pattern, n)]
    if smooth and qnames and not snames:
        raise XoptError(f"smoothquant_layers {pattern!r} matches no quantised Linear of this model "
                        f"(e.g. {qnames[0]}); give --option smoothquant_layers=REGEX over Linear names")
    if smooth and snames:
        smoothing = _smooth(module, loop, method, params, qnames, snames, alphas, info, dev)
    prof = calibrate_model(module, loop, method, params, names, calibration=calib.identity(), model_info=info,
                           smoothing=smoothing)
    if keep_k is not None or max_drop is not None:
        _fallback(module, prof, qnames, getattr(config, "sensitivity_unit", "layer"), keep_k, max_drop, dev)
    return prof, module


def _saved_profile(ckpt, config, keep_k, max_drop, module):
    """(Profile, module) of `config.calib_profile`, checked against the checkpoint's weights."""
    from xopt.calibration.profile import Profile
    from xopt.modeling import load_module

    if keep_k is not None or max_drop is not None:
        raise XoptError("--keep-fp16/--max-drop choose layers while calibrating; a saved profile already "
                        "carries its choice: recalibrate with them instead of passing --calib-profile")
    prof = Profile.load(config.calib_profile)
    module = module if module is not None else load_module(ckpt)
    prof.check(module, f"calibration profile {config.calib_profile}")
    prof.apply_smoothing(module)
    return prof, module


def _held_out(ckpt, calib, module) -> tuple:
    """(batches, output names, the fp32 module's outputs) of the held-out sample."""
    from xopt.calibration import sensitivity as sens

    outs = ckpt.output_names
    batches = sens.dev_batches(calib.tokenizer, calib.dev_texts, ckpt.card.input_prefix, ckpt.card.max_length)
    return batches, outs, sens.run_outputs(module, batches, outs)


def _smooth(module, loop, method, params, qnames, snames, alphas, info, dev) -> dict:
    """SmoothQuant on the Linears `snames`: one trial per alpha (scored by the fidelity drop of the
    fake-quantised model on the held-out sample `dev`, unless one alpha is given), the best one
    applied to `module`; returns the profile's `smoothing` entry."""
    from xopt.calibration import sensitivity as sens
    from xopt.calibration.profile import (apply_smoothing, calibrate_model, collect_activation_stats,
                                          fake_quantize, group_smoothing_factors, output_fidelity)

    stats = collect_activation_stats(module, loop, snames, channel_amax=True)
    mods = dict(module.named_modules())
    trials = []
    orig = {n: mods[n].weight.detach().clone() for n in snames}
    for alpha in alphas:
        scales = group_smoothing_factors({n: stats[n].channel_amax for n in snames},
                                         {n: mods[n].weight for n in snames}, alpha, snames)
        if len(alphas) == 1:
            trials.append((alpha, math.nan, scales))
            break
        batches, outs, ref = dev
        handles = apply_smoothing(module, scales)
        try:
            trial = calibrate_model(module, loop, method, params, qnames, model_info=info,
                                    smoothing={"alpha": alpha, "scales": {}})
            with fake_quantize(module, trial, only=qnames):
                fid = output_fidelity(ref, sens.run_outputs(module, batches, outs))
        finally:
            _unsmooth(module, orig, handles)
        trials.append((alpha, 100.0 - fid, scales))
    alpha, _, scales = best_trial(trials)
    apply_smoothing(module, scales)
    return {"alpha": alpha, "chosen_on": "held-out sample" if len(alphas) > 1 else "given",
            "trials": [{"alpha": a, "drop": d} for a, d, _ in trials if d == d],
            "scales": {n: [float(v) for v in s] for n, s in scales.items()}}


def _fallback(module, prof, qnames, unit: str, keep_k, max_drop, dev) -> None:
    """Rank the quantised Linears by sensitivity on the held-out sample and keep the most
    sensitive ones unquantised (`keep_k` of them, or until the drop is at most `max_drop`)."""
    from xopt.calibration import sensitivity as sens

    batches, outs, ref = dev
    ranking = sens.rank(module, prof, batches, outs, qnames, unit, ref)
    keep, drop = sens.choose_keep(module, prof, batches, outs, qnames, ranking, keep_k, max_drop, ref)
    prof.keep, prof.sensitivity = keep, ranking
    prof.params = {**prof.params, "fallback": {"keep_fp16": keep_k, "max_drop": max_drop, "unit": unit,
                                               "drop_after_fallback": drop}}


def best_trial(trials: list[tuple]) -> tuple:
    """The (alpha, drop, scales) trial with the smallest fidelity drop. One trial (a given alpha,
    drop not measured) is taken as is. A NaN drop (the smoothed, fake-quantised model's outputs
    are not finite) is never chosen; when every trial is NaN there is nothing to choose from."""
    if len(trials) == 1:
        return trials[0]
    finite = [t for t in trials if math.isfinite(t[1])]
    if not finite:
        raise XoptError(f"SmoothQuant: every trial alpha ({', '.join(str(t[0]) for t in trials)}) gave a NaN "
                        "fidelity drop (outputs not finite after smoothing); give smoothquant_alpha=A, use "
                        "--calib-method without smoothquant, or check the checkpoint for non-finite weights")
    return min(finite, key=lambda t: t[1])


def _unsmooth(module, orig: dict, handles) -> None:
    """Undo a trial smoothing exactly: the original weights back, the hooks and buffers gone."""
    import torch

    mods = dict(module.named_modules())
    for h in handles:
        h.remove()
    with torch.no_grad():
        for n, w in orig.items():
            mods[n].weight.copy_(w)
            del mods[n]._buffers["smooth_inv"]
            mods[n]._xopt_smoothed = False


def sensitivity_records(prof, model_name: str, variant: str) -> list[dict]:
    """The profile's sensitivity ranking as result records (kind "sensitivity", see xopt.records)."""
    from xopt import records

    cal = {"method": prof.full_method, "langs": prof.calibration.get("languages"),
           "samples": prof.calibration.get("samples")}
    return [records.record("sensitivity", model=model_name, variant=variant, unit=r["unit"], layers=r["layers"],
                           rank=r["rank"], metric="fidelity_drop", drop=r["drop"],
                           n_examples=prof.calibration.get("dev_samples"), kept=all(n in prof.keep for n in r["layers"]),
                           calibration=cal, unit_kind=prof.params.get("fallback", {}).get("unit", "layer"))
            for r in prof.sensitivity]


def calibrate_to_file(checkpoint, out, config, *, variant: str, force: bool = False, results_out=None,
                      quantized: Callable[[str], bool] | None = None):
    """`xopt calibrate`: profile of a checkpoint under `config` (a calibrated config, see
    `calibrate_checkpoint`) written atomically to `out`. `variant`: the recipe the profile is
    for (its sensitivity records name it); `quantized`: which Linears it quantises (its
    `KeepPolicy.quantizes`; default: all)."""
    from pathlib import Path

    from xopt import records
    from xopt.modeling import open_checkpoint

    out = Path(out)
    if out.exists() and not force:
        raise XoptError(f"{out} already exists; pass --force to replace it")
    ckpt = open_checkpoint(checkpoint)
    prof, _ = calibrate_checkpoint(ckpt, config, quantized)
    prof.save(out)
    if results_out and prof.sensitivity:
        records.append(results_out, sensitivity_records(prof, prof.model.get("name", "?"), variant))
    return prof

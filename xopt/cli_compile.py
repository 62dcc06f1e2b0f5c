"""`xopt variants`, `xopt compile` and `xopt calibrate`: what a checkpoint can become, and
building it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.cli_options import Device, Force, Json, MaxShapes, MinShapes, OptShapes, print_json
from xopt.errors import XoptError


def variants_cmd(json_out: Json = False):
    """List every variant with whether this host can build and run it (and why not)."""
    from rich.markup import escape
    from rich.table import Table

    from xopt.progress import out_console
    from xopt.variants import REGISTRY

    rows = [{"name": v.name, "backend": v.backend, "precision": v.precision, "device": v.device,
             "available": v.unavailable_reason() is None, "reason": v.unavailable_reason(),
             "calibrated": v.calibrated, "peer": v.peer, "description": v.description,
             "config": v.config.to_json()} for v in REGISTRY.values()]
    if json_out:
        return print_json(rows)
    t = Table("variant", "backend", "precision", "device", "available", "description")
    for r in rows:
        t.add_row(r["name"], r["backend"], r["precision"], r["device"],   # escape: "[gpu]" is not rich markup
                  "yes" if r["available"] else escape(f"no: {r['reason']}"), r["description"])
    out_console().print(t)


# Calibration options (int8 variants and `xopt calibrate`; see xopt.calibration.run).
CalibMethod = Annotated[Optional[str], typer.Option(
    "--calib-method", help="minmax | percentile (99.99; percentile:99.9 for another) | entropy | mse, "
                           "or smoothquant / METHOD+smoothquant (alpha chosen on a held-out sample).")]
CalibProfile = Annotated[Optional[Path], typer.Option(
    "--calib-profile", help="Use this profile (from `xopt calibrate`) instead of calibrating.")]
KeepFp16 = Annotated[Optional[int], typer.Option(
    "--keep-fp16", help="Keep the k most sensitive layers unquantised (higher precision).")]
MaxDrop = Annotated[Optional[float], typer.Option(
    "--max-drop", help="Keep the most sensitive layers unquantised until the fidelity drop on the held-out "
                       "sample is at most this (points of 100 x cosine to full precision).")]


def compile_cmd(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
                variant: Annotated[str, typer.Option("--variant", help="Variant name (see `xopt variants`).")],
                out: Annotated[Path, typer.Option("--out", help="Variant directory to write.")],
                force: Force = False,
                calib_data: Annotated[Optional[Path], typer.Option(
                    "--calib-data", help="Calibration texts: demo suite JSON or a text file, one text per line.")] = None,
                calib_langs: Annotated[Optional[str], typer.Option(
                    "--calib-langs", help="all, en, or a comma-separated list of language codes.")] = None,
                calib_samples: Annotated[Optional[int], typer.Option("--calib-samples")] = None,
                calib_method: CalibMethod = None,
                keep: Annotated[Optional[str], typer.Option(
                    "--keep", help="Regex of Linear module names left unquantised, in the variant's higher "
                                   "precision (e.g. 'encoder\\.layer\\.\\d+\\.output\\.dense$|^(classifier|qa_outputs|head)'; "
                                   "'' quantises all).")] = None,
                keep_fp32: Annotated[Optional[str], typer.Option(
                    "--keep-fp32", hidden=True, help="Deprecated spelling of --keep.")] = None,
                calib_profile: CalibProfile = None,
                keep_fp16: KeepFp16 = None,
                max_drop: MaxDrop = None,
                option: Annotated[Optional[list[str]], typer.Option(
                    "--option", "-o", help="KEY=VALUE of any option of the variant's config, e.g. -o mode=max-autotune "
                                           "(repeatable; `xopt variants --json` lists each variant's options).")] = None,
                device: Device = None,
                min_shapes: MinShapes = None,
                opt_shapes: OptShapes = None,
                max_shapes: MaxShapes = None,
                json_out: Json = False):
    """Build a variant directory (artefacts + manifest) from a checkpoint."""
    from xopt.variants import compile_variant

    keep = _keep_flag(keep, keep_fp32)
    opts = {k: v for k, v in {"calib_data": str(calib_data) if calib_data else None, "calib_langs": calib_langs,
                              "calib_samples": calib_samples, "calib_method": calib_method,
                              "keep": keep, "calib_profile": str(calib_profile) if calib_profile else None,
                              "keep_fp16": keep_fp16, "max_drop": max_drop}.items() if v is not None}
    flag_of = {}    # config option -> the flag that set it, for the "given twice" message
    shapes = {"min": ("--min-shapes", min_shapes), "opt": ("--opt-shapes", opt_shapes),
              "max": ("--max-shapes", max_shapes)}
    if any(v is not None for _, v in shapes.values()):
        _add_profile(variant, shapes, opts, flag_of)
    if device is not None:
        _add_device(variant, device, opts, flag_of)
    _add_options(option or [], opts, flag_of)
    man = compile_variant(checkpoint, variant, out, force=force, options=opts)
    if json_out:
        return print_json(man)
    typer.echo(f"wrote {out} ({variant}, built in {man['build_s']:.1f} s)")


def _keep_flag(keep: str | None, keep_fp32: str | None) -> str | None:
    """The --keep regex, given as --keep or as its deprecated spelling --keep-fp32 (warned about)."""
    for flag, value in (("--keep", keep), ("--keep-fp32", keep_fp32)):
        _check_regex(value, flag)      # before the deprecation line, so that a bad one is the only line
    if keep_fp32 is not None:
        typer.echo("xopt: warning: --keep-fp32 is deprecated; use --keep (the layers it keeps run in the "
                   "variant's higher precision, fp16 on GPUs)", err=True)
        if keep is not None:
            raise XoptError("give --keep or its deprecated spelling --keep-fp32, not both")
        keep = keep_fp32
    return keep


def _add_profile(variant: str, shapes: dict, opts: dict, flag_of: dict) -> None:
    """Put the --min/opt/max-shapes given ({key: (flag, value or None)}) into `opts`, refused for a
    variant whose config has no optimisation profile."""
    from xopt.variants import get

    v = get(variant)
    takes = v.config.options()
    for key, (flag, value) in shapes.items():
        if value is None:
            continue
        if key not in takes:
            raise XoptError(f"{flag} sets a TensorRT optimisation profile; variant {variant} has none "
                            f"(variants with one: {', '.join(_profiled_variants())})")
        opts[key], flag_of[key] = v.parse_flag(key, value, flag), flag


def _add_device(variant: str, device: str, opts: dict, flag_of: dict) -> None:
    """Put --device into `opts` where the variant runs on either device; else check it is the
    variant's own."""
    from xopt.variants import get

    if device not in ("cpu", "cuda"):
        raise XoptError(f"--device {device}: use cpu or cuda")
    v = get(variant)
    if "device" in v.config.options():        # the variant runs on either: its config records the choice
        opts["device"], flag_of["device"] = device, "--device"
    elif v.device != device:
        raise XoptError(f"--device {device}: variant {variant} runs on {v.device} only; pick a variant that "
                        f"runs on {device} (see `xopt variants`)")


def _add_options(items: list[str], opts: dict, flag_of: dict) -> None:
    """Put each --option KEY=VALUE into `opts`, refusing a key another flag already set."""
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise XoptError(f"--option {item!r}: give KEY=VALUE, e.g. --option mode=max-autotune")
        key = key.strip().replace("-", "_")
        if key in opts:
            raise XoptError(f"option {key} given twice (as {flag_of.get(key, '--' + key.replace('_', '-'))} "
                            f"and --option)")
        opts[key] = value


def _check_regex(value: str | None, flag: str) -> None:
    import re

    if value is None:
        return
    try:
        re.compile(value)
    except re.error as e:
        raise XoptError(f"{flag} {value!r} is not a regular expression ({e}); escape literal characters, "
                        r"e.g. --keep 'encoder\.layer\.\d+\.output\.dense$'") from None


def _profiled_variants() -> list[str]:
    """Variants whose config holds an optimisation profile (min/opt/max shapes)."""
    from xopt.variants import REGISTRY

    return [n for n, v in REGISTRY.items() if {"min", "opt", "max"} <= set(v.config.options())]


def calibrate_cmd(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
                  out: Annotated[Path, typer.Option("--out", help="Profile JSON to write.")],
                  variant: Annotated[str, typer.Option(
                      "--variant", help="Whose recipe decides which layers are quantised (for SmoothQuant "
                                        "and sensitivity).")] = "onnx-int8",
                  calib_data: Annotated[Optional[Path], typer.Option(
                      "--calib-data", help="Demo suite JSON, a text file or a directory of <lang>.txt.")] = None,
                  calib_langs: Annotated[Optional[str], typer.Option(
                      "--calib-langs", help="all, en, or a comma-separated list of language codes.")] = None,
                  calib_samples: Annotated[Optional[int], typer.Option(
                      "--calib-samples", help="Calibration texts, balanced over the languages (default 256).")] = None,
                  calib_method: CalibMethod = None,
                  keep_fp16: KeepFp16 = None,
                  max_drop: MaxDrop = None,
                  sensitivity_unit: Annotated[str, typer.Option(
                      "--sensitivity-unit", help="layer (each Linear) or kind (query, key, ... across layers).")
                  ] = "layer",
                  results_out: Annotated[Optional[Path], typer.Option(
                      "--results", help="Append the sensitivity ranking as records to this JSONL file.")] = None,
                  force: Force = False, json_out: Json = False):
    """Calibrate a checkpoint on its own: write the calibration profile every int8 variant consumes."""
    from xopt.calibration.run import calibrate_to_file
    from xopt.variants import get
    from xopt.variants.base import FallbackConfig

    policy = getattr(get(variant).config, "keep", None)     # the recipe's layers; none kept without one
    opts = {k: val for k, val in {"calib_data": str(calib_data) if calib_data else None,
                                  "calib_langs": calib_langs, "calib_samples": calib_samples,
                                  "calib_method": calib_method, "keep_fp16": keep_fp16, "max_drop": max_drop,
                                  "sensitivity_unit": sensitivity_unit}.items() if val is not None}
    config = FallbackConfig.from_options(opts)       # the calibration options over their own defaults
    prof = calibrate_to_file(checkpoint, out, config, force=force, results_out=results_out, variant=variant,
                             quantized=policy.quantizes if policy is not None else None)
    if json_out:
        return print_json({k: v for k, v in prof.to_json().items() if k not in ("activations", "weights")})
    typer.echo(f"wrote {out} ({prof.full_method}, {len(prof.activations)} layers, "
               f"{prof.calibration.get('samples')} samples in {', '.join(prof.calibration.get('languages', []))}"
               + (f"; kept unquantised: {', '.join(prof.keep)}" if prof.keep else "") + ")")

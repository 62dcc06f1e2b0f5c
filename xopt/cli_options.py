"""What the `xopt` commands share: option aliases, one kebab-case spelling per meaning, and the
checks and printing of option values. Only typer and the standard library are imported here, so
that `xopt --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.errors import XoptError

# Options shared by several commands, one kebab-case spelling per meaning: --batch-size, --model
# (an input path), --device (where a variant runs), --filter-model / --filter-device (which
# records a report reads), --min/opt/max-shapes. --model and --device are spelled as optimum-cli
# spells them; the shapes take trtexec's value syntax (trtexec's own flag is --minShapes).
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Sequences per call.")]
BatchSizes = Annotated[str, typer.Option("--batch-size", help="Comma-separated batch sizes (server: the largest "
                                                              "dynamic batch).")]
ModelPath = Annotated[Optional[Path], typer.Option("--model", help="Checkpoint directory to start from.")]
Device = Annotated[Optional[str], typer.Option(
    "--device", help="cpu or cuda: where the variant runs (set in its config where the variant can run on "
                     "either; otherwise checked against the variant's device).")]
FilterModel = Annotated[Optional[str], typer.Option(
    "--filter-model", help="Only records of this model (records' base_model); default: every model, compared.")]
FilterDevice = Annotated[Optional[str], typer.Option(
    "--filter-device", help="Only bench records of this device (cpu, cuda, or part of a GPU name).")]
Split = Annotated[Optional[str], typer.Option(
    "--split", help="Only eval records of this split (test, validation, ...); needed when a task has several.")]
Suite = Annotated[Optional[str], typer.Option(
    "--suite", help="Only eval records of this suite (xtreme, demo, ...); needed when a task has several.")]
FilterHost = Annotated[Optional[str], typer.Option(
    "--filter-host", help="Only bench records of this host: its digest or part of its name (GPU, CPU), as "
                          "the error or the report names it; needed when the records come from several.")]
# What `report` and `pick` compare (xopt.comparison; its defaults are the options')
Reference = Annotated[str, typer.Option("--reference", help="Variant whose X-STILTs gain the others keep.")]
Baseline = Annotated[str, typer.Option("--baseline", help="Model name of the baseline.")]
XStilts = Annotated[str, typer.Option("--xstilts", help="Model name of X-STILTs.")]
_SHAPES_HELP = ("of the TensorRT optimisation profile, in trtexec's syntax: NAME:BATCHxSEQUENCE per input, "
                "comma-separated, e.g. input_ids:1x16,attention_mask:1x16 (one shape for every input)")
MinShapes = Annotated[Optional[str], typer.Option("--min-shapes", help="Smallest shapes " + _SHAPES_HELP + ".")]
OptShapes = Annotated[Optional[str], typer.Option("--opt-shapes", help="Shapes the engine is tuned for, "
                                                                        + _SHAPES_HELP.removeprefix("of the ") + ".")]
MaxShapes = Annotated[Optional[str], typer.Option("--max-shapes", help="Largest shapes " + _SHAPES_HELP + ".")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutResults = Annotated[Optional[Path], typer.Option("--out", help="Append records to this JSONL file.")]


def csv_list(value: str | None, cast=str) -> list | None:
    """The items of a comma-separated option value, each through `cast`; None for no value."""
    if value is None or value == "":
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise XoptError(f"cannot parse {value!r} as a comma-separated list of {cast.__name__}") from None


def check_positive(value, flag: str, example: str) -> None:
    """Refuse a count option below 1, before any file is read or written."""
    if value is not None and value < 1:
        raise XoptError(f"{flag} {value}: must be positive, e.g. {flag} {example}")


def check_bounded(value: float, flag: str, low: float, high: float, example: str) -> None:
    """Refuse a number that is not finite, not above `low` or above `high`, before any work."""
    import math

    if not math.isfinite(value) or value <= low or value > high:
        raise XoptError(f"{flag} {value:g}: expected a number above {low:g} and at most {high:g}, e.g. {flag} {example}")


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))

"""Property tests (hypothesis) of the two readers of user-written files: the result-record
reader (`xopt.records.read`) and the plan parser (`xopt.train.load_plan`). On any input they
either return or raise XoptError (one line at the CLI); any other exception is a traceback for
the user and fails the test. Example counts stay small so the file runs in seconds."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from xopt.errors import XoptError  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- records

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

_EVAL = {"kind": "eval", "schema": 1, "model": "m", "variant": "fp32", "host": {}, "xopt_version": "0",
         "created": "2026-01-01T00:00:00Z", "suite": "demo", "task": "demo-topic", "lang": "de", "split": "test",
         "metric": "accuracy", "value": 71.0, "n_examples": 40}
_BENCH = {"kind": "bench", "model": "m", "variant": "fp32", "host": {}, "xopt_version": "0", "created": "x",
          "batch": 1, "seq_len": 128, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0,
          "throughput_seq_s": 1.0, "throughput_tok_s": 1.0, "peak_mem_mb": None, "warmup": 1, "iters": 1,
          "scenario": "fixed-batch"}


@st.composite
def _record_line(draw) -> bytes:
    """A line that is nearly a record: a real one with fields dropped or retyped, random JSON, or
    random bytes (not UTF-8, cut short, deeply nested)."""
    choice = draw(st.integers(0, 4))
    if choice <= 1:
        rec = dict(draw(st.sampled_from([_EVAL, _BENCH])))
        for key in draw(st.lists(st.sampled_from(sorted(rec)), max_size=3)):
            if draw(st.booleans()):
                rec.pop(key, None)
            else:
                rec[key] = draw(_json)
        text = json.dumps(rec, allow_nan=True)
        return text[: draw(st.integers(0, len(text)))].encode() if choice == 1 else text.encode()
    if choice == 2:
        return json.dumps(draw(_json), allow_nan=True).encode()
    if choice == 3:
        depth = draw(st.integers(1, 100_000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    return draw(st.binary(max_size=80)).replace(b"\n", b" ")


@SETTINGS
@given(lines=st.lists(_record_line(), max_size=6), strict=st.booleans())
def test_record_reader_never_tracebacks(lines, strict):
    from xopt.records import read

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "results.jsonl"
        p.write_bytes(b"\n".join(lines) + b"\n")
        try:
            recs, skipped = read([p], strict=strict)
        except XoptError as e:
            assert strict and "\n" not in str(e)
            return
        assert len(recs) + len(skipped) <= len(lines)
        assert all("\n" not in s.why for s in skipped)


# ---------------------------------------------------------------- plans

_STAGE_KEYS = ["task", "tasks", "train", "epochs", "steps", "lr", "batch_size", "grad_accum", "warmup", "max_length",
               "max_examples", "top_layers", "weight_decay", "dropout", "precision", "length_grouped", "mixing",
               "cap", "temperature", "checkpoint_every", "doc_stride", "head", "mlm", "translated", "bogus"]
_RUN_KEYS = ["variants", "suite", "eval_data", "tasks", "langs", "split", "max_examples", "calib", "bench"]
_TOP_KEYS = ["model", "out", "seed", "models", "data"]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


_scalar = (st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["demo-topic", "xnli", "encoder", "head", "fp16", "", "x/y"]) | st.text(max_size=8))
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["batch", "seq_len", "min_time", "x"]), inner, max_size=3),
                      max_leaves=6)


@st.composite
def _plan_text(draw) -> str:
    lines = []
    for key in draw(st.lists(st.sampled_from(_TOP_KEYS), max_size=5, unique=True)):
        lines.append(f"{key} = {_toml_value(draw(_value))}")
    if draw(st.booleans()):     # usually a valid skeleton, so that the sections are reached
        lines[:0] = ['model = "ckpt"', 'out = "run"'] if not any(x.startswith(("model", "out")) for x in lines) else []
    for section, keys in (("target", _STAGE_KEYS), ("intermediate", _STAGE_KEYS), ("run", _RUN_KEYS)):
        if draw(st.booleans()):
            lines.append(f"[{section}]")
            if section != "run" and draw(st.booleans()):
                lines.append('task = "demo-topic"')
            for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
                if key != "task":
                    lines.append(f"{key} = {_toml_value(draw(_value))}")
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 4)) == 0:        # damaged: a slice cut out or random text spliced in
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(max_size=10)) + text[i + draw(st.integers(0, 10)):]
    return text


@SETTINGS
@given(text=_plan_text(), raw=st.none() | st.binary(max_size=40))
def test_plan_parser_never_tracebacks(text, raw):
    from xopt.pipeline import _check_run
    from xopt.train import load_plan

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "plan.toml"
        if raw is not None:
            p.write_bytes(raw)
        else:
            p.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            plan = load_plan(p)
            _check_run(plan.run, "[run]")
        except XoptError as e:
            assert "\n" not in str(e), str(e)

"""xopt.records: typed schemas, one-line validation errors, append-only JSONL round trip."""

import json

import pytest

from xopt import records
from xopt.errors import XoptError


def _bench_fields(**kw):
    return dict(model="m", variant="v", batch=1, seq_len=8, p50_ms=1.0, p90_ms=1.0, p99_ms=1.0, mean_ms=1.0,
                throughput_seq_s=1.0, throughput_tok_s=8.0, peak_mem_mb=1.0, warmup=1, iters=1,
                scenario="fixed-batch", **kw)


def test_records_validate_and_append_round_trip(tmp_path):
    p = tmp_path / "r.jsonl"
    rec = records.record("bench", **_bench_fields())
    with pytest.raises(ValueError, match="lacks"):
        records.record("eval", model="m", variant="v")
    records.append(p, [rec, rec])
    with open(p, "a") as f:
        f.write("{broken\n")
    got, skipped = records.read([p])
    assert len(got) == 2 and skipped[0].where.endswith("r.jsonl:3")
    with pytest.raises(XoptError, match="r.jsonl:3"):
        records.read([p], strict=True)


def test_an_append_after_a_cut_line_starts_on_a_fresh_line(tmp_path, capsys):
    """A crash or a full disk leaves a last line without its newline: the next append warns and
    starts on the next line, so its first record stays readable and the cut line is skipped."""
    p = tmp_path / "r.jsonl"
    rec = records.record("bench", **_bench_fields())
    records.append(p, [rec])
    with open(p, "a") as f:
        f.write(json.dumps(rec)[:40])                       # half a record, no newline
    records.append(p, [rec, rec])
    assert "last line is cut off" in capsys.readouterr().err
    got, skipped = records.read([p])
    assert len(got) == 3 and [s.where.rsplit(":", 1)[1] for s in skipped] == ["2"]
    records.append(p, [rec])                                # a complete file: no warning, no blank line
    assert capsys.readouterr().err == "" and p.read_text().count("\n") == 5


def test_a_full_disk_is_one_line_and_the_next_append_does_not_glue_onto_its_remains(tmp_path, monkeypatch):
    import errno
    import os

    p = tmp_path / "r.jsonl"
    rec = records.record("bench", **_bench_fields())
    records.append(p, [rec])
    real, calls = os.write, []

    def full(fd, data):                                     # writes 30 bytes, then the disk is full
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[:30])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(XoptError, match="no space left on .* writing .*r.jsonl; .* MB free; 2 records not appended") as e:
        records.append(p, [rec, rec])
    assert "\n" not in str(e.value) and "r.jsonl" in str(e.value)
    monkeypatch.setattr(os, "write", real)
    records.append(p, [rec])
    got, skipped = records.read([p])
    assert len(got) == 2 and len(skipped) == 1


@pytest.mark.parametrize("field, value, expected", [
    ("p50_ms", "1.0", "float"),
    ("batch", 1.5, "int"),
    ("batch", True, "int"),
    ("warmup", None, "int"),
    ("scenario", 3, "str"),
    ("peak_mem_mb", "big", "float or null"),
    ("seq_len", "8", "int or null"),
    ("host", "h", "dict"),
    ("env", [1], "dict or null"),
])
def test_wrong_type_is_one_line_error_naming_the_field(field, value, expected):
    with pytest.raises(XoptError) as e:
        records.record("bench", **{**_bench_fields(), field: value})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"bench record: field '{field}' is ") and msg.endswith(f"expected {expected}")


def test_wrong_keys_and_kinds_are_one_line_errors():
    with pytest.raises(XoptError, match=r"^bench record lacks seq_len\|length_dist$"):
        records.record("bench", **{k: v for k, v in _bench_fields().items() if k != "seq_len"})
    with pytest.raises(XoptError, match=r"^eval record lacks suite, task, lang, split, metric, value, n_examples$"):
        records.record("eval", model="m", variant="v")
    with pytest.raises(XoptError, match=r"^record kind 'train' is not one of \['bench', 'eval', 'sensitivity'\]$"):
        records.validate({"kind": "train"})
    with pytest.raises(XoptError, match="newer xopt"):
        records.validate({**records.record("bench", **_bench_fields()), "schema": records.SCHEMA_VERSION + 1})


def test_typed_constructors_take_every_field_at_once():
    ev = records.eval_record(model="m", variant="v", suite="demo", task="t", lang="de", split="test",
                             metric="accuracy", value=90, n_examples=10, eval_s=1.5, outcomes=[1, 0])
    assert ev["kind"] == "eval" and ev["schema"] == records.SCHEMA_VERSION and ev["eval_s"] == 1.5
    b = records.bench_record(**_bench_fields(cold_ms=2.0))
    assert b["kind"] == "bench" and b["cold_ms"] == 2.0 and b["host"] and b["created"]
    with pytest.raises(TypeError):                  # a required field is a required argument
        records.eval_record(model="m", variant="v")
    s = records.sensitivity_record(model="m", variant="onnx-int8", unit="u", layers=["u"], rank=1,
                                   metric="fidelity_drop", drop=0.5, n_examples=None, calibration=None)
    assert s["kind"] == "sensitivity"
    with pytest.raises(XoptError, match="field 'drop'"):
        records.sensitivity_record(model="m", variant="v", unit="u", layers=["u"], rank=1, metric="x",
                                   drop="high", n_examples=1, calibration=None)
    # fields a schema does not list are kept as they are
    assert records.record("bench", **_bench_fields(batch_p50_ms=1.0))["batch_p50_ms"] == 1.0


def test_reader_skips_wrongly_typed_records_with_the_field_named(tmp_path):
    p = tmp_path / "r.jsonl"
    good = records.record("bench", **_bench_fields())
    records.append(p, [good])
    with open(p, "a") as f:
        f.write(json.dumps({**good, "p99_ms": "slow"}) + "\n")
        f.write(json.dumps({k: v for k, v in good.items() if k != "schema"}) + "\n")   # written before schemas
    got, skipped = records.read([p])
    assert len(got) == 2 and len(skipped) == 1 and skipped[0].where.endswith("r.jsonl:2")
    assert "field 'p99_ms' is str" in skipped[0].why
    with pytest.raises(XoptError, match=r"r.jsonl:2: invalid record \(bench record: field 'p99_ms'"):
        records.read([p], strict=True)


def test_shape_key_joins_shapes_and_scenarios():
    assert records.shape_key({"seq_len": 128}) == "s128"
    assert records.shape_key({"length_dist": "demo:de", "scenario": "fixed-batch"}) == "len:demo:de"
    assert records.shape_key({"length_dist": {"source": "demo"}}) == "len:demo"
    assert records.shape_key({"seq_len": 8, "scenario": "offline"}) == "offline/s8"

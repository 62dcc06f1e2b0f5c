"""The report's calibration section (xopt.report.calibration) and the calibration study that prints it."""

import importlib.util
from pathlib import Path

import numpy as np

from xopt import records, report
from xopt.report.render import to_markdown


def test_report_renders_calibration_tables(tmp_path):
    def ev(variant, lang, outcomes, langs=None, method="minmax"):
        extra = {"calibration": {"method": method, "langs": langs, "samples": 64}} if langs else {}
        return records.record("eval", model="m", variant=variant, suite="demo", task="demo-topic", lang=lang,
                              split="test", metric="accuracy", value=100 * np.mean(outcomes), role="xstilts",
                              base_model="m", n_examples=len(outcomes), outcomes=outcomes, example_ids="x" + lang,
                              **extra)

    ok = [1] * 10
    recs = [ev("fp32", "de", ok), ev("fp32", "ja", ok),
            ev("onnx-int8", "de", [1] * 9 + [0], ["en"]), ev("onnx-int8", "ja", [1] * 5 + [0] * 5, ["en"]),
            ev("onnx-int8", "de", [1] * 9 + [0], ["de", "en", "ja"]), ev("onnx-int8", "ja", ok, ["de", "en", "ja"]),
            records.record("sensitivity", model="m", variant="onnx-int8", unit="encoder.layer.0.output.dense",
                           layers=["encoder.layer.0.output.dense"], rank=1, metric="fidelity_drop", drop=0.5,
                           n_examples=8, calibration={"method": "minmax", "langs": ["en"], "samples": 64}, kept=True)]
    def section(recs):
        doc = report.Doc()
        report.calibration_section(doc, recs)
        return to_markdown(doc)

    md = section(recs)
    assert "| m | onnx-int8 | minmax / en / 64 | demo-topic | 2 | -30.00 | ja (-50.0) |" in md
    assert "| ja | 100.0 | 50.0 | 100.0 | +50.0 [" in md and "| de | 100.0 | 90.0 | 90.0 | +0.0 [+0.0, +0.0] |" in md
    assert "| 1 | encoder.layer.0.output.dense | 0.5 | yes |" in md
    assert section([r for r in recs if r["variant"] == "fp32"]) == ""
    p = tmp_path / "r.jsonl"
    records.append(p, recs)
    text = report.write_report([p], tmp_path / "rep").read_text()
    assert "## Calibration" in text and (tmp_path / "rep" / "sensitivity_m_onnx-int8.png").is_file()


def _study():
    path = Path(__file__).resolve().parent.parent / "bench" / "calibration_study.py"
    spec = importlib.util.spec_from_file_location("calibration_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibration_study_prints_the_section(tmp_path):
    """bench/calibration_study.py ends by printing the section of the records it produced."""
    def ev(variant, lang, outcomes, langs=None):
        extra = {"calibration": {"method": "minmax", "langs": langs, "samples": 64}} if langs else {}
        return records.record("eval", model="m", variant=variant, suite="demo", task="demo-topic", lang=lang,
                              split="test", metric="accuracy", value=100 * np.mean(outcomes), role="xstilts",
                              base_model="m", n_examples=len(outcomes), outcomes=outcomes, example_ids="x" + lang,
                              **extra)

    recs = [ev("fp32", "de", [1] * 4), ev("onnx-int8", "de", [1, 0, 0, 1], ["en"]),
            ev("onnx-int8", "de", [1, 1, 0, 1], ["de", "en"])]
    md = _study().study_markdown(recs, tmp_path)
    assert "## Calibration" in md and "| de | 100.0 | 50.0 | 75.0 | +25.0 [" in md

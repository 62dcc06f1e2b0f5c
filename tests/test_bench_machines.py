"""Benchmarks across machines: saved baselines name registered variants and the CPU they were
measured on; a comparison with another CPU's baseline and a loaded host say so."""

import json
from pathlib import Path

import pytest

from test_report_pick import OUT, _write, bn, ev

from xopt import report
from xopt.analysis import load_warnings
from xopt.host import host_info
from xopt.measure import baseline_kind, baseline_mismatch, environment, machine_kind
from xopt.report.terminal import print_bench
from xopt.variants import REGISTRY

BASELINES = sorted((Path(__file__).resolve().parents[1] / "bench" / "baselines").glob("*.json"))


def test_there_are_baselines():
    assert BASELINES


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.name)
def test_every_baseline_names_registered_variants_and_its_cpu(path):
    data = json.loads(path.read_text())
    names = {b["params"]["name"] for b in data["benchmarks"] if "name" in (b.get("params") or {})}
    names |= {b["extra_info"]["variant"] for b in data["benchmarks"] if "variant" in (b.get("extra_info") or {})}
    assert names and names <= set(REGISTRY), f"{path.name}: not in the registry: {sorted(names - set(REGISTRY))}"
    # the file is named by the kind of CPU (model, ISA flags, threads) its machine_info describes
    assert path.stem == baseline_kind(data["machine_info"])


def test_machine_kind_names_cpu_model_and_isa_flags():
    a = machine_kind("AMD EPYC", ["avx2", "fma", "sse4_2"], 2)
    assert a == "cpu-amd-epyc-avx2-2t"
    assert machine_kind("AMD EPYC", ["avx2", "avx512f", "avx512_vnni"], 2) == "cpu-amd-epyc-avx2-avx512f-avx512-vnni-2t"
    assert machine_kind("Intel Xeon", ["avx2"], 2) != a


def test_a_baseline_of_another_cpu_says_so():
    h = host_info()
    same = {"cpu": {"brand_raw": h["cpu"], "flags": list(h["cpu_flags"]) + ["sse2"], "count": 2}}
    assert baseline_mismatch(same) is None
    other = {"cpu": {"brand_raw": "Other CPU 9000", "flags": ["avx2"], "count": 2}}
    line = baseline_mismatch(other, "b.json")
    assert line.startswith("b.json was measured on CPU 'Other CPU 9000' [avx2], this host is ")
    assert f"bench/baselines/{machine_kind()}.json" in line
    fewer_flags = {"cpu": {"brand_raw": h["cpu"], "flags": [], "count": 2}}
    assert (baseline_mismatch(fewer_flags) is None) == (not h["cpu_flags"])


def test_bench_output_and_report_warn_when_the_load_exceeds_the_threads(tmp_path, capsys):
    assert environment("cpu")["threads"] >= 1
    env = {"loadavg": [3.5, 2.0, 1.0], "threads": 2, "harness_overhead_us": None, "gpu": None}
    busy = [bn("fp32", 10.0, env=env), bn("int8", 4.0, env={**env, "loadavg": [1.5, 1.0, 1.0]})]
    assert load_warnings(busy) == [
        "xstilts/fp32: measured at a 1-minute load average of 3.50 on 2 threads: other processes shared the cores, "
        "so its times are slow by an unknown factor; measure on an idle machine"]
    print_bench(busy)
    out = capsys.readouterr().out
    assert "warning: xstilts/fp32: measured at a 1-minute load average of 3.50 on 2 threads" in out
    assert "xstilts/int8" not in out.split("warning:", 1)[1]
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()] + busy
    text = report.write_report([_write(tmp_path, recs, bench=False)], tmp_path / "rep").read_text()
    assert "Measured on a loaded machine" in text and "xstilts/fp32: measured at a 1-minute load average" in text
    quiet = [bn("fp32", 10.0, env={**env, "loadavg": [0.5, 0.5, 0.5]})]
    assert load_warnings(quiet) == []

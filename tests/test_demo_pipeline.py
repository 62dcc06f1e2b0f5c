"""The demo's plan: its variants, the shapes it benchmarks, one ONNX export and fusion per checkpoint."""

import pytest

from xopt import pipeline
from xopt.variants import REGISTRY


def test_demo_variants_are_registered_cpu_variants_with_the_stock_recipes():
    assert pipeline.DEMO_VARIANTS == ("fp32", "onnx-fp32", "onnx-int8", "ort-stock-int8", "openvino-fp32",
                                      "openvino-bf16", "openvino-int8")
    assert all(REGISTRY[n].device == "cpu" for n in pipeline.DEMO_VARIANTS)
    # the peers a CPU user would otherwise pick: ONNX Runtime's and OpenVINO's stock recipes
    assert {n for n in pipeline.DEMO_VARIANTS if REGISTRY[n].peer} == {"ort-stock-int8", "openvino-fp32",
                                                                       "openvino-bf16", "openvino-int8"}
    for n in ("compile", "int8-dynamic", "onnx-int8-static"):      # left out of the demo, still registered
        assert n in REGISTRY and n not in pipeline.DEMO_VARIANTS


def test_demo_benchmarks_only_its_shapes(monkeypatch, tmp_path):
    import xopt.bench

    calls = []
    monkeypatch.setattr(xopt.bench, "bench", lambda dirs, cfg, **kw: calls.append(cfg))
    pipeline._bench_shapes(["d"], pipeline.DEMO_SHAPES, True, tmp_path / "r.jsonl", None)
    assert [(c.batches, c.seq_lens, c.lengths) for c in calls] == [((1,), (128,), None), ((8,), (), "demo")]
    calls.clear()
    pipeline._bench_shapes(["d"], pipeline.DEMO_SHAPES + pipeline.FULL_BENCH_SHAPES, False, tmp_path / "r.jsonl",
                           None)
    assert [(c.batches, c.seq_lens, c.lengths) for c in calls] == [((1, 8), (128,), None),
                                                                          ((8, 1), (), "demo")]


def test_onnx_variants_of_one_checkpoint_share_one_export_and_fusion(monkeypatch, tmp_path, tiny_ckpt, tiny_suite):
    from xopt.variants import ExportCache, compile_variant
    from xopt.variants import onnx_export as onnx

    counts = {"export": 0, "fuse": 0}
    real_export, real_fuse = onnx.export_onnx, onnx.fuse_bert

    def export(*a, **kw):
        counts["export"] += 1
        return real_export(*a, **kw)

    def fuse(*a, **kw):
        counts["fuse"] += 1
        return real_fuse(*a, **kw)

    monkeypatch.setattr(onnx, "export_onnx", export)
    monkeypatch.setattr(onnx, "fuse_bert", fuse)
    with ExportCache() as exports:
        for name in ("onnx-fp32", "onnx-int8", "ort-stock-int8"):
            opts = {"calib_data": str(tiny_suite), "calib_samples": 8} if REGISTRY[name].calibrated else None
            compile_variant(tiny_ckpt, name, tmp_path / name, options=opts, exports=exports)
    assert counts == {"export": 1, "fuse": 1}


def test_checkpoints_compile_in_parallel_processes_and_errors_come_back(tmp_path, tiny_ckpt, monkeypatch):
    """The demo compiles its two checkpoints in two worker processes: both sets of variant
    directories are built, and a worker's XoptError reaches the caller as itself."""
    import os
    import shutil

    from xopt import manifest as mf
    from xopt.errors import XoptError

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    dirs = pipeline.compile_checkpoints({"baseline": tiny_ckpt, "xstilts": other}, ["fp32", "onnx-fp32"],
                                        tmp_path / "variants", {})
    assert list(dirs) == [("baseline", "fp32"), ("baseline", "onnx-fp32"), ("xstilts", "fp32"),
                          ("xstilts", "onnx-fp32")]
    for (model, name), d in dirs.items():
        assert d == tmp_path / "variants" / model / name
        assert mf.read(d, kind="variant")["variant"] == name
    with pytest.raises(XoptError, match="not a directory"):
        pipeline.compile_checkpoints({"baseline": tiny_ckpt, "xstilts": tmp_path / "missing"}, ["fp32"],
                                     tmp_path / "v2", {})


def test_a_pipeline_s_export_cache_lives_in_its_output_and_clears_dead_runs(tmp_path):
    """`xopt demo` / `xopt run` keep their shared ONNX exports inside their output: what a killed
    run left there (its pid gone) goes when the next cache is made; a live process's stays."""
    import os
    import subprocess
    import sys

    from xopt.variants import ExportCache

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead = tmp_path / f".xopt-onnx-{gone}-abc"
    live = tmp_path / f".xopt-onnx-{os.getpid()}-def"
    for d in (dead, live):
        d.mkdir()
        (d / "raw.onnx").write_bytes(b"x")
    with ExportCache(under=tmp_path) as exports:
        assert exports.root.parent == tmp_path and exports.root.is_dir()
        assert not dead.exists() and live.is_dir()
    assert not exports.root.exists()

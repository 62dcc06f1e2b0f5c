"""Artefacts that do not match their contract are refused in one line, at compile and at load:
an ONNX graph whose inputs or outputs are not its model card's, external data outside the
variant directory, tokenizer files that do not load or do not fit the model's vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import one_line_error, write_manifest
from xopt import manifest as mf
from xopt.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def onnx_variant(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "onnx-fp32"
    assert run("compile", tiny_ckpt, "--variant", "onnx-fp32", "--out", out).exit_code == 0
    return out


def _resign(d: Path) -> Path:
    """Re-hash and re-sign the manifest of `d` after an edit: a foreign build that is consistent
    in itself, so that only the contract check can tell."""
    man = json.loads((d / "manifest.json").read_text())
    man["files"] = {p.name: mf.sha256(p) for p in sorted(d.iterdir()) if p.name != mf.MANIFEST}
    write_manifest(d, man)
    return d


def _resigned(src: Path, dst: Path, edit) -> Path:
    """A copy of variant `src` whose model.onnx `edit(model, dst)` changed, re-signed."""
    import onnx

    shutil.copytree(src, dst)
    edit(onnx.load(str(dst / "model.onnx")), dst)
    return _resign(dst)


def _extra_input(model, d):
    import onnx
    from onnx import TensorProto, helper

    model.graph.input.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["b", "s"]))
    onnx.save(model, str(d / "model.onnx"))


def _dropped_output(model, d):
    import onnx

    keep = [o for o in model.graph.output if o.name != "logits"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(d / "model.onnx"))


def _data_outside(model, d):
    """The weights moved beside the directory and the graph pointed at them (onnx itself will not
    write a location with `..`, so it is set after saving)."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(model, str(d / "model.onnx"))
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../weights.bin"
    onnx.save(model, str(d / "model.onnx"))
    (d / "weights.bin").rename(d.parent / "weights.bin")


@pytest.mark.parametrize("edit, words", [
    (_extra_input, ["takes input_ids, attention_mask, token_type_ids", "not this variant's graph"]),
    (_dropped_output, ["outputs", "logits", "not this variant's graph"]),
    (_data_outside, ["ONNX Runtime cannot load this graph", "escapes model directory", "rebuild"]),
])
def test_onnx_graph_that_is_not_the_card_s_is_refused_at_load(onnx_variant, tiny_suite, tmp_path, edit, words):
    d = _resigned(onnx_variant, tmp_path / "v", edit)
    msg = one_line_error(run("eval", d, "--suite", "demo", "--data", tiny_suite, "--out", tmp_path / "r.jsonl"))
    for w in words:
        assert w in msg, (w, msg)
    assert "model.onnx" in msg and not (tmp_path / "r.jsonl").exists()


def _broken_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 3}}')


def _config(**edit):
    def damage(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **edit}))
    return damage


def _modules_without_type(d: Path) -> None:
    (d / "modules.json").write_text('[{"path": "1_Pooling"}]')


def _another_model_s_tokenizer(d: Path) -> None:
    from xopt.importers.e5 import e5_tokenizer

    e5_tokenizer().save_pretrained(str(d))


@pytest.mark.parametrize("damage, words", [
    (_broken_tokenizer, ["tokenizer files do not load", "save_pretrained"]),
    (_another_model_s_tokenizer, ["its tokenizer has 250002 tokens", "hold 300", "not this model's tokenizer"]),
    (_config(num_attention_heads=3), ["does not build AutoModelFor", "attention heads (3)"]),
    (_config(hidden_act="nope"), ["does not build AutoModelFor", "KeyError: 'nope'"]),
    (_config(layer_norm_eps=-1), ["config.json: transformers does not accept it", "layer_norm_eps"]),
    (lambda d: (d / "config.json").write_text("[" * 100_000 + "]" * 100_000), ["config.json", "RecursionError"]),
    (lambda d: (d / "xopt_card.json").write_text('{"max_length": '), ["xopt_card.json", "malformed JSON"]),
    (_modules_without_type, ["modules.json", "a type and a path"]),
], ids=["tokenizer", "vocabulary", "heads", "activation", "field", "nested", "card", "modules"])
def test_checkpoint_that_does_not_match_its_contract_is_refused_at_compile(tmp_path, damage, words):
    """A user's Hugging Face directory whose tokenizer or config.json cannot serve its weights:
    one line at compile, nothing written (not a traceback at eval)."""
    import hfmodels as H

    ckpt = tmp_path / "ckpt"
    H.save_model("bert", "none" if damage is _modules_without_type else "sequence", ckpt)   # modules: encoders
    damage(ckpt)
    msg = one_line_error(run("compile", ckpt, "--variant", "fp32", "--out", tmp_path / "v"))
    for w in words:
        assert w in msg, (w, msg)
    assert not (tmp_path / "v").exists()


def test_variant_whose_tokenizer_does_not_load_is_refused_at_eval(onnx_variant, tiny_suite, tmp_path):
    d = tmp_path / "v"
    shutil.copytree(onnx_variant, d)
    _broken_tokenizer(d)
    _resign(d)
    msg = one_line_error(run("eval", d, "--suite", "demo", "--data", tiny_suite, "--out", tmp_path / "r.jsonl"))
    assert "tokenizer files do not load" in msg and not (tmp_path / "r.jsonl").exists()


def test_openvino_ir_that_is_not_the_card_s_is_refused_at_load(tiny_ckpt, tiny_suite, tmp_path):
    built = tmp_path / "built"
    assert run("compile", tiny_ckpt, "--variant", "openvino-fp32", "--out", built).exit_code == 0
    for name, edit, words in (
            ("renamed", lambda xml: xml.replace('names="logits"', 'names="scores"'), ["gives", "scores",
                                                                                      "not this variant's graph"]),
            ("cut", lambda xml: xml[: len(xml) // 2], ["OpenVINO cannot load it"])):
        d = tmp_path / name
        shutil.copytree(built, d)
        (d / "model.xml").write_text(edit((d / "model.xml").read_text()))
        _resign(d)
        msg = one_line_error(run("eval", d, "--suite", "demo", "--data", tiny_suite, "--out", tmp_path / "r.jsonl"))
        assert "model.xml" in msg and all(w in msg for w in words), (name, msg)


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta", "deberta-v2"])
def test_parameter_estimate_from_the_config_is_the_model_s_size(arch):
    import transformers

    import hfmodels as H
    from xopt.hf import param_estimate

    cfg = H.config(arch)
    real = sum(p.numel() for p in transformers.AutoModel.from_config(cfg).parameters())
    assert abs(param_estimate(cfg.to_dict()) - real) <= 0.05 * real, (param_estimate(cfg.to_dict()), real)


def test_config_larger_than_the_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    """A config.json whose sizes ask for more memory than the machine has available: one line
    with both figures, before transformers allocates anything (here 384 MB against 100 MB)."""
    import hfmodels as H
    from xopt import host

    monkeypatch.setattr(host, "available_memory", lambda: 100 * 2**20, raising=False)
    ckpt = tmp_path / "ckpt"
    H.save_model("bert", "sequence", ckpt)
    _config(vocab_size=3_000_000)(ckpt)
    msg = one_line_error(run("compile", ckpt, "--variant", "fp32", "--out", tmp_path / "v"))
    assert "config.json: a model of ~0.4 GiB of parameters" in msg and "0.1 GiB available" in msg, msg
    assert not (tmp_path / "v").exists()


def test_xopt_debug_shows_the_library_error_behind_the_line(tmp_path, monkeypatch):
    """The one line stands for a library's exception; XOPT_DEBUG=1 raises it with its traceback."""
    import hfmodels as H

    ckpt = tmp_path / "ckpt"
    H.save_model("bert", "sequence", ckpt)
    _broken_tokenizer(ckpt)
    monkeypatch.setenv("XOPT_DEBUG", "1")
    res = run("compile", ckpt, "--variant", "fp32", "--out", tmp_path / "v")
    assert res.exit_code != 0 and isinstance(res.exception.__cause__, KeyError), res.exception

"""`xopt export CKPT --format hf`: HF-layout heads and xopt's linear token and span heads load
through transformers' AutoModelFor{SequenceClassification,TokenClassification,QuestionAnswering}
and give xopt's logits; xopt's linear sequence head is a sentence-transformers directory (mean
Pooling + Dense) whose modules, run as sentence-transformers runs them, give xopt's logits
(with the library itself where it is installed). Each exported directory opens again as an
xopt checkpoint with its head, and compiles."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hfmodels as H
from conftest import one_line_error

from xopt.cli import app
from xopt.errors import XoptError
from xopt.modeling import ModelCard, build_module, load_module, open_checkpoint, save_checkpoint

TEXTS = ["query: Open the file", "query: ファイルを開けません", "query: x"]


def _ckpt(tmp_path, head, labels=(), layout="hf"):
    """A 2-layer BERT with a small WordPiece tokenizer (tests/hfmodels.py: a 300-piece vocabulary
    keeps each export a second) and the head in `layout`, saved as xopt saves a checkpoint."""
    from transformers import BertModel

    torch.manual_seed(1)
    cfg = H.config("bert")
    card = ModelCard(pooling="mean", input_prefix="query: ", labels=list(labels), head=head, max_length=64,
                     task="demo", head_layout=layout)
    model = build_module(BertModel(cfg, add_pooling_layer=False).eval(), card)
    with torch.no_grad():
        for m in model.head_modules().values():
            for p in m.parameters():
                p.normal_()
    return save_checkpoint(model, H.tokenizer("bert", tmp_path / "tok"), card, tmp_path / f"xopt-{head}-{layout}",
                           {"kind": "test"},
                           manifest_extra={"name": f"tiny-{head}", "base_model": "tiny"})


def _batch(path):
    from transformers import AutoTokenizer

    b = AutoTokenizer.from_pretrained(str(path))(TEXTS, padding=True, return_tensors="pt")
    return b["input_ids"], b["attention_mask"]


def _xopt(path):
    ids, mask = _batch(path)
    with torch.no_grad():
        return load_module(open_checkpoint(path))(ids, mask)


def _export(ckpt, out):
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "hf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("head,layout", [("token", "hf"), ("token", "linear"), ("span", "hf"), ("span", "linear"),
                                         ("sequence", "hf")])
def test_task_heads_load_in_transformers_with_xopt_s_logits(head, layout, tmp_path):
    """HF-layout heads and xopt's linear token/span heads (the same function as HF's) export as
    the HF task model; AutoModelFor* gives xopt's logits, and the directory opens and compiles."""
    import transformers

    labels = {"token": ["NOUN", "VERB", "ADJ"], "sequence": ["a", "b", "c"]}.get(head, ())
    ckpt = _ckpt(tmp_path, head, labels, layout)
    out = _export(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    suffix = {"token": "TokenClassification", "span": "QuestionAnswering", "sequence": "SequenceClassification"}[head]
    hf = getattr(transformers, f"AutoModelFor{suffix}").from_pretrained(str(out)).eval()
    assert config["architectures"] == [type(hf).__name__] == [f"BertFor{suffix}"]
    ids, mask = _batch(out)
    with torch.no_grad():
        got = hf(input_ids=ids, attention_mask=mask)
    ref = _xopt(ckpt)
    if head != "span":
        assert hf.config.id2label == dict(enumerate(labels)) and hf.config.label2id == {k: i for i, k in
                                                                                          enumerate(labels)}
        assert torch.allclose(got.logits, ref.token_logits if head == "token" else ref.logits, atol=1e-5)
    else:
        assert torch.allclose(got.start_logits, ref.start_logits, atol=1e-5)
        assert torch.allclose(got.end_logits, ref.end_logits, atol=1e-5)

    # the exported directory is an xopt checkpoint again: same card, same outputs, and it compiles
    back = open_checkpoint(out)
    assert back.manifest == {} and back.card.head == head and back.card.labels == open_checkpoint(ckpt).card.labels
    assert back.card.input_prefix == "query: " and back.card.max_length == 64
    again = _xopt(out)
    for a, b in zip(again, ref):
        assert torch.allclose(a, b, atol=1e-5)
    res = CliRunner().invoke(app, ["compile", str(out), "--variant", "onnx-fp32", "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output


def _sentence_transformers_forward(out, ids, mask):
    """The exported modules run as sentence-transformers runs them: Transformer (AutoModel) ->
    Pooling (mean over the attention mask) -> Dense (identity activation)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense"]
    pool = json.loads((out / modules[1]["path"] / "config.json").read_text())
    assert pool["pooling_mode_mean_tokens"] and not pool["pooling_mode_cls_token"]
    dense_cfg = json.loads((out / modules[2]["path"] / "config.json").read_text())
    assert dense_cfg["activation_function"] == "torch.nn.modules.linear.Identity"
    enc = AutoModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        w = load_file(str(out / modules[2]["path"] / "model.safetensors"))
        return emb @ w["linear.weight"].T + w["linear.bias"]


def test_linear_sequence_head_is_a_sentence_transformers_directory_with_xopt_s_logits(tmp_path):
    ckpt = _ckpt(tmp_path, "sequence", ["a", "b", "c", "d"], "linear")
    out = _export(ckpt, tmp_path / "hf")
    ids, mask = _batch(out)
    ref = _xopt(ckpt)
    assert torch.allclose(_sentence_transformers_forward(out, ids, mask), ref.logits, atol=1e-5)
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "query: "}
    assert "id2label" not in json.loads((out / "config.json").read_text())    # test below: no task class invited
    assert json.loads((out / "xopt_card.json").read_text())["labels"] == ["a", "b", "c", "d"]
    if importlib.util.find_spec("sentence_transformers"):
        from sentence_transformers import SentenceTransformer

        got = SentenceTransformer(str(out), device="cpu").encode([t.removeprefix("query: ") for t in TEXTS],
                                                                prompt_name="query", convert_to_numpy=True)
        assert np.allclose(got, ref.logits.numpy(), atol=1e-4)
    back = open_checkpoint(out)
    assert back.card.head == "sequence" and back.card.labels == ["a", "b", "c", "d"]
    assert torch.allclose(_xopt(out).logits, ref.logits, atol=1e-5)


def test_encoder_only_checkpoint_is_a_sentence_transformers_directory_with_mean_pooling(tmp_path):
    from transformers import AutoModel

    ckpt = _ckpt(tmp_path, "none")
    out = _export(ckpt, tmp_path / "hf")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    ids, mask = _batch(out)
    with torch.no_grad():
        h = AutoModel.from_pretrained(str(out)).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    assert torch.allclose((h * m).sum(1) / m.sum(1), _xopt(ckpt).sentence_embedding, atol=1e-5)
    assert open_checkpoint(out).card.head == "none"


@pytest.mark.parametrize("head,layout", [("sequence", "hf"), ("sequence", "linear"), ("token", "hf"),
                                         ("token", "linear"), ("span", "hf"), ("span", "linear"), ("none", "hf")])
def test_every_hf_export_loads_correctly_with_the_class_its_config_names(head, layout, tmp_path):
    """What `pipeline()` and users do with a directory: open it with the Auto class its config's
    `architectures` names. A task class gives xopt's logits; an encoder class gives xopt's
    embedding, and then config.json carries no labels that would invite a task class (which
    would load the encoder with a freshly initialised, random head and no error)."""
    import transformers

    labels = {"token": ["NOUN", "VERB", "ADJ"], "sequence": ["a", "b", "c"]}.get(head, ())
    ckpt = _ckpt(tmp_path, head, labels, layout)
    out = _export(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    (arch,) = config["architectures"]
    kind = next((k for k, auto in H.AUTO.items() if k != "none" and arch.endswith(auto.removeprefix("AutoModel"))),
                "none")
    model = getattr(transformers, H.AUTO[kind]).from_pretrained(str(out)).eval()
    assert type(model).__name__ == arch
    ids, mask = _batch(out)
    ref = _xopt(ckpt)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask)
    if kind == "none":
        assert not ({"id2label", "label2id", "num_labels"} & set(config))
        m = mask.unsqueeze(-1).float()
        assert torch.allclose((got.last_hidden_state * m).sum(1) / m.sum(1), ref.sentence_embedding, atol=1e-5)
    else:
        assert kind == head
        if head == "span":
            assert torch.allclose(got.start_logits, ref.start_logits, atol=1e-5)
            assert torch.allclose(got.end_logits, ref.end_logits, atol=1e-5)
        else:
            assert torch.allclose(got.logits, ref.token_logits if head == "token" else ref.logits, atol=1e-5)


def _tokenizer_class(path):
    return json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"]


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_checkpoints_and_hf_exports_name_a_tokenizer_class_transformers_4_knows(arch, tmp_path):
    """transformers 5 saves a tokenizer.json-backed tokenizer as `TokenizersBackend`, a class
    transformers 4.x (what optimum-onnx pins) refuses to load. xopt's checkpoints, and HF exports
    of directories that transformers 5 saved, name `PreTrainedTokenizerFast`, which reads the same
    tokenizer.json in both and tokenizes as the saved tokenizer does (checked by hand with
    transformers 4.57.6 and 5.25.0, where `BertTokenizerFast` in its place tokenizes differently)."""
    from transformers import AutoTokenizer

    model, tok = H.save_model(arch, "token", tmp_path / "plain")     # as transformers 5 saves a checkpoint
    assert _tokenizer_class(tmp_path / "plain") == "TokenizersBackend"
    ckpt = _ckpt(tmp_path, "none")
    out = _export(tmp_path / "plain", tmp_path / "hf")
    for d, ref in ((ckpt, AutoTokenizer.from_pretrained(str(tmp_path / "tok"))), (out, tok)):   # _ckpt's tokenizer
        assert _tokenizer_class(d) == "PreTrainedTokenizerFast"
        got = AutoTokenizer.from_pretrained(str(d))
        assert got(TEXTS, padding=True)["input_ids"] == ref(TEXTS, padding=True)["input_ids"]
        assert got.pad_token == ref.pad_token and got.cls_token == ref.cls_token
    open_checkpoint(ckpt)      # the manifest hashes the rewritten file


def test_hf_format_refuses_triton_only_flags(tmp_path):
    ckpt = _ckpt(tmp_path, "span")
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "hf", "--out", str(tmp_path / "o"),
                                   "--name", "x"])
    assert "--name applies to --format triton only" in one_line_error(res)


# What optimum's ORTModelFor{SequenceClassification,TokenClassification,QuestionAnswering,
# FeatureExtraction} read from an ONNX model directory: config.json and the tokenizer beside
# model.onnx, inputs input_ids/attention_mask, and these outputs (optimum-onnx itself needs
# transformers < 4.58, so the layout is checked here and the session run as optimum runs it).
OPTIMUM_OUTPUTS = {"sequence": ("logits",), "token": ("logits",), "span": ("start_logits", "end_logits"),
                   "none": ("last_hidden_state",)}


@pytest.mark.parametrize("head", ["sequence", "token", "span", "none"])
def test_onnx_dir_has_the_layout_and_output_names_optimum_reads(head, tmp_path):
    import onnxruntime as ort
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from xopt.variants import load_variant

    labels = {"sequence": ["a", "b", "c"], "token": ["NOUN", "VERB"]}.get(head, ())
    ckpt = _ckpt(tmp_path, head, labels)
    res = CliRunner().invoke(app, ["compile", str(ckpt), "--variant", "onnx-fp32", "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    d = tmp_path / "v"
    config = AutoConfig.from_pretrained(str(d))
    if labels:
        assert config.id2label == dict(enumerate(labels))
    enc = AutoTokenizer.from_pretrained(str(d))(TEXTS, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    assert set(OPTIMUM_OUTPUTS[head]) <= {o.name for o in sess.get_outputs()}
    got = dict(zip(OPTIMUM_OUTPUTS[head], sess.run(list(OPTIMUM_OUTPUTS[head]), {
        "input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)})))
    ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
    ref = _xopt(ckpt)
    if head == "none":
        with torch.no_grad():
            want = {"last_hidden_state": AutoModel.from_pretrained(str(ckpt)).eval()(
                input_ids=ids, attention_mask=mask).last_hidden_state}
    else:
        want = dict(zip(OPTIMUM_OUTPUTS[head], ref[2:]))
    for name, value in want.items():
        assert np.allclose(got[name], value.numpy(), atol=1e-4), name
    # xopt's own runner reads the renamed graph and returns xopt's names and values
    mine = load_variant(d).runner(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))
    assert tuple(mine) == open_checkpoint(ckpt).output_names
    for name, value in zip(open_checkpoint(ckpt).output_names, ref):
        assert np.allclose(mine[name], value.numpy(), atol=1e-4), name

"""A user's own Hugging Face checkpoints, as `save_pretrained` writes them, are the model every
variant compiles: each task class (sequence / token classification, question answering, bare
encoder) of each architecture (BERT, XLM-R, RoBERTa, DeBERTa-v2) opens with its own head, and
its variants give HF's own forward; XTREME eval scores it as HF's forward does, example by
example; what xopt does not take is refused in one line, with nothing written."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import hfmodels as H
from conftest import one_line_error
from xopt.cli import app
from xopt.modeling import load_module, open_checkpoint
from xopt.variants import REGISTRY, ExportCache, compile_variant, load_variant
from xopt.variants.openvino import has_bf16

PAIRS = (["the cat sat on the mat", "open the file please now", "Пароль"], ["un chat", "der Hund läuft", "x"])
FP32_TOL = 1e-4


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _batch(tok, kind):
    b = tok(*PAIRS, padding=True, return_tensors="np") if kind == "sequence" else tok(PAIRS[0], padding=True,
                                                                                       return_tensors="np")
    return b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)


def _max_diff(ref: dict, got, mask) -> float:
    """Largest |difference| over the outputs in `ref`; per-token outputs at real tokens only (a
    padding position's scores mean nothing, and the unpadded kernels do not compute them)."""
    got = got._asdict() if hasattr(got, "_asdict") else got
    m = np.asarray(mask).astype(bool)
    return max(float(np.abs((np.asarray(got[k]) - v)[m] if v.ndim > 1 and v.shape[:2] == m.shape else
                            np.asarray(got[k]) - v).max()) for k, v in ref.items())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(HF model, tokenizer, directory) of each architecture x class, built on first use."""
    root, cache = tmp_path_factory.mktemp("hf-models"), {}

    def get(arch, kind):
        if (arch, kind) not in cache:
            d = root / f"{arch}-{kind}"
            cache[arch, kind] = (*H.save_model(arch, kind, d), d)
        return cache[arch, kind]
    return get


@pytest.mark.parametrize("kind", H.CLASSES)
@pytest.mark.parametrize("arch", H.ARCHS)
def test_checkpoint_opens_with_its_head_and_its_onnx_graph_gives_hf_s_outputs(arch, kind, saved, tmp_path):
    model, tok, d = saved(arch, kind)
    ckpt = open_checkpoint(d)
    assert ckpt.card.head == kind and ckpt.card.labels == H.LABELS.get(kind, ["start", "end"] if kind == "span" else [])
    ids, mask = _batch(tok, kind)
    ref = H.hf_outputs(model, kind, ids, mask)
    import torch

    with torch.no_grad():
        assert _max_diff(ref, load_module(ckpt)(torch.from_numpy(ids), torch.from_numpy(mask)), mask) <= FP32_TOL
    compile_variant(d, "onnx-fp32", tmp_path / "onnx")
    assert _max_diff(ref, load_variant(tmp_path / "onnx").runner(ids, mask), mask) <= FP32_TOL


# one model per head layout: XLM-R's first-token classification head, BERT's pooler chain,
# per-token heads, and a bare encoder
HEAD_KINDS = [("xlm-roberta", "sequence"), ("bert", "sequence"), ("roberta", "token"), ("bert", "span"),
              ("xlm-roberta", "none")]
# bf16 only where the CPU has it (tests/test_openvino.py checks the refusal elsewhere)
CPU = [n for n, v in REGISTRY.items() if v.device in ("cpu", "auto") and (v.precision != "bf16" or has_bf16())]


# NNCF's stock recipe quantises every Linear (the head and FFN outputs included) of these random
# encoders, whose activations are far from a trained model's
PEER_SQNR_DB = {"openvino-int8": 10}


def _sqnr_db(ref, got):
    return 10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30))


@pytest.mark.parametrize("arch,kind", HEAD_KINDS, ids=[f"{a}-{k}" for a, k in HEAD_KINDS])
def test_every_cpu_variant_builds_from_each_head_kind_and_gives_hf_s_outputs(arch, kind, saved, tiny_suite,
                                                                            tmp_path):
    model, tok, d = saved(arch, kind)
    ids, mask = _batch(tok, kind)
    ref = H.hf_outputs(model, kind, ids, mask)
    with ExportCache() as exports:
        # OpenVINO reads the same plain ONNX export as onnx-fp32, so its head handling is the
        # export's: tests/test_openvino.py checks its three variants on XLM-R's first-token head
        for name in [n for n in CPU if REGISTRY[n].backend != "openvino"]:
            opts = {"calib_data": str(tiny_suite), "calib_samples": 16} if REGISTRY[name].calibrated else None
            compile_variant(d, name, tmp_path / name, options=opts, exports=exports)
            got = load_variant(tmp_path / name).runner(ids, mask)
            if REGISTRY[name].precision == "int8":
                for k, r in ref.items():
                    r, g = (r[mask.astype(bool)], got[k][mask.astype(bool)]) if r.shape[:2] == mask.shape else (r, got[k])
                    assert _sqnr_db(r, g) >= PEER_SQNR_DB.get(name, 15), f"{name}/{k}: SQNR {_sqnr_db(r, g):.1f} dB"
            elif REGISTRY[name].precision == "bf16":
                for k, r in ref.items():
                    r, g = r.reshape(len(r), -1), got[k].reshape(len(r), -1)
                    cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-12)
                    assert cos.min() >= 0.99, f"{name}/{k}: cosine {cos.min():.4f}"
            else:
                assert _max_diff(ref, got, mask) <= FP32_TOL, name
            kept = json.loads((tmp_path / name / "manifest.json").read_text()).get("kept")
            keep = getattr(REGISTRY[name].config, "keep", None)
            head = {"sequence": "classifier", "token": "classifier", "span": "qa_outputs"}.get(kind)
            if kept is not None and head and keep is not None and keep.keeps(head):     # the head stays in float by default
                assert any(k.startswith(head) for k in kept), (name, kept)


GPU = [n for n, v in REGISTRY.items() if v.device == "cuda"]


@pytest.mark.gpu
@pytest.mark.parametrize("arch,kind", HEAD_KINDS, ids=[f"{a}-{k}" for a, k in HEAD_KINDS])
def test_every_gpu_variant_builds_from_each_head_kind(arch, kind, saved, tiny_suite, tmp_path):
    """On a GPU: each CUDA variant (and unpadded on CUDA) against HF's fp32 forward, cosine >= 0.99
    for float variants, SQNR >= 15 dB for int8/fp8, at real tokens."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch sees none)")
    model, tok, d = saved(arch, kind)
    ids, mask = _batch(tok, kind)
    ref = H.hf_outputs(model, kind, ids, mask)
    m = mask.astype(bool)
    for name in GPU + ["unpadded", "unpadded-int8"]:
        if REGISTRY[name].unavailable_reason() or (name.startswith("unpadded") and arch == "deberta-v2"):
            continue
        opts = {"calib_data": str(tiny_suite), "calib_samples": 16} if REGISTRY[name].calibrated else {}
        if name.startswith("unpadded"):
            opts["device"] = "cuda"
        if "mode" in REGISTRY[name].config.options():
            opts["mode"] = "reduce-overhead"
        compile_variant(d, name, tmp_path / name, options=opts or None)
        got = load_variant(tmp_path / name).runner(ids, mask)
        for k, r in ref.items():
            r, g = (r[m], got[k][m]) if r.shape[:2] == m.shape else (r, got[k])
            if REGISTRY[name].precision in ("int8", "fp8"):
                assert _sqnr_db(r, g) >= 15, f"{name}/{k}: SQNR {_sqnr_db(r, g):.1f} dB"
            else:
                r, g = r.reshape(len(r), -1), g.reshape(len(g), -1)
                cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-12)
                assert cos.min() >= 0.99, f"{name}/{k}: cosine {cos.min():.4f}"


# --- XTREME eval of a user's checkpoint: HF's own predictions, example by example ---------------

FIX = __import__("pathlib").Path(__file__).parent / "fixtures" / "xtreme"


def _records(out):
    from xopt import records

    recs, _ = records.read([out], strict=True)
    return {(r["task"], r["lang"]): r for r in recs if r["lang"] != "avg"}


def _hf_pair_logits(model, tok, data):
    """XTREME's run_classify: premise and hypothesis as one pair, max_length 128, truncation;
    HF's forward, one example at a time (no padding): [N, L]."""
    import torch

    with torch.no_grad():
        return np.concatenate([model(**tok(e["text_a"], e["text_b"], truncation=True, max_length=128,
                                           return_tensors="pt")).logits.numpy() for e in data])


def _hf_tag_logits(model, tok, data):
    """XTREME's run_tag: each word tokenised on its own, a word's scores at its first sub-token;
    HF's forward, one sentence at a time: per sentence [words, L]."""
    import torch

    out = []
    for e in data:
        pieces = [tok(w, add_special_tokens=False)["input_ids"] or [tok.unk_token_id] for w in e["tokens"]]
        ids = [tok.cls_token_id] + [i for p in pieces for i in p] + [tok.sep_token_id]
        first = [1 + sum(len(p) for p in pieces[:k]) for k in range(len(pieces))]
        with torch.no_grad():
            out.append(model(input_ids=torch.tensor([ids])).logits[0, first].numpy())
    return out


def _xopt_logits(variant, task, lang, data, tok):
    """The logits xopt's XTREME family computes for `data` on a variant (its own features and
    batching): per example [L] (classify) or per sentence [words, L] (tagging)."""
    from xopt.batching import pad
    from xopt.tasks.registry import family

    lv, seen = load_variant(variant), {}

    def run(seqs):
        ids, mask = pad(list(seqs), tok.pad_token_id)
        seen["ids"], seen["out"] = seqs, lv.runner(ids, mask)
        return seen["out"]
    family(task.kind).evaluate(task, lang, data, tok, lv.card, run)
    if task.kind == "sequence":
        return seen["out"]["logits"]
    from xopt.tasks import tagging

    feats = tagging.features(data, tok, task.labels, 128)
    return [seen["out"]["token_logits"][i][f["first"]] for i, f in enumerate(feats)]


@pytest.mark.parametrize("arch", ["xlm-roberta", "bert"])
def test_xtreme_eval_scores_a_checkpoint_as_hf_s_forward_does(arch, tmp_path):
    from xopt.tasks import tagging
    from xopt.tasks import xtreme as X

    out = tmp_path / "r.jsonl"
    for kind, task, langs in (("sequence", "xnli", "en,de,ar,zh"), ("token", "panx", "en,de,ru,ja")):
        labels = list(X.XNLI_LABELS if task == "xnli" else X.PANX_LABELS)
        d = tmp_path / f"{arch}-{kind}"
        model, tok = H.save_model(arch, kind, d, seed=3, labels=labels)
        assert run("compile", d, "--variant", "onnx-fp32", "--out", tmp_path / f"v-{kind}").exit_code == 0
        res = run("eval", tmp_path / f"v-{kind}", "--suite", "xtreme", "--data", FIX, "--tasks", task,
                  "--langs", langs, "--out", out)
        assert res.exit_code == 0, res.output
        recs = _records(out)
        for lang in langs.split(","):
            data = X.load(task, lang, "test", FIX)
            if task == "xnli":
                hf = _hf_pair_logits(model, tok, data)
                np.testing.assert_allclose(_xopt_logits(tmp_path / f"v-{kind}", X.TASKS[task], lang, data, tok),
                                           hf, atol=FP32_TOL)
                gold = [labels.index(e["label"]) for e in data]
                assert recs[task, lang]["outcomes"] == [float(p == g) for p, g in zip(hf.argmax(-1), gold)], lang
            else:
                hf = _hf_tag_logits(model, tok, data)
                for a, b in zip(_xopt_logits(tmp_path / f"v-{kind}", X.TASKS[task], lang, data, tok), hf):
                    np.testing.assert_allclose(a, b, atol=FP32_TOL)
                preds = [[labels[i] for i in sent.argmax(-1)] for sent in hf]
                want = tagging.sentence_counts([e["tags"] for e in data], preds)
                assert recs[task, lang]["counts"] == want.tolist(), lang


def test_eval_refuses_an_id2label_that_is_not_the_task_s(tmp_path):
    d = tmp_path / "generic"       # HF's default names: which class is "entailment" is unknown
    H.save_model("xlm-roberta", "sequence", d, labels=["LABEL_0", "LABEL_1", "LABEL_2"])
    assert run("compile", d, "--variant", "fp32", "--out", tmp_path / "v").exit_code == 0
    res = run("eval", tmp_path / "v", "--suite", "xtreme", "--data", FIX, "--tasks", "xnli", "--langs", "de",
              "--out", tmp_path / "r.jsonl")
    msg = one_line_error(res)
    assert "xnli" in msg and "id2label" in msg
    assert not (tmp_path / "r.jsonl").exists()


# --- what xopt does not take: one line, nothing written ------------------------------------------

def _refused(d, tmp_path, *want):
    res = run("compile", d, "--variant", "onnx-fp32", "--out", tmp_path / "v")
    msg = one_line_error(res)
    assert all(w in msg for w in want), msg
    assert not (tmp_path / "v").exists() and not list(tmp_path.glob(".v*"))


def test_unsupported_architecture_is_refused_in_one_line(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    d = tmp_path / "distil"
    DistilBertForSequenceClassification(DistilBertConfig(vocab_size=300, dim=32, n_layers=1, n_heads=2,
                                                         hidden_dim=48)).save_pretrained(str(d))
    _refused(d, tmp_path, "distilbert", "xlm-roberta", "sequence classification")


def test_multiple_choice_and_causal_heads_are_refused_in_one_line(tmp_path, saved):
    import transformers

    H.save_model("roberta", "choice", tmp_path / "mc")
    _refused(tmp_path / "mc", tmp_path, "ForMultipleChoice", "intermediate")
    cfg = H.config("bert")
    transformers.BertForMaskedLM(cfg).save_pretrained(str(tmp_path / "mlm"))   # an encoder: accepted
    assert open_checkpoint(tmp_path / "mlm").card.head == "none"
    cfg.is_decoder = True
    transformers.BertLMHeadModel(cfg).save_pretrained(str(tmp_path / "clm"))
    _refused(tmp_path / "clm", tmp_path, "BertLMHeadModel", "not supported")


def test_pickled_weights_only_are_refused_in_one_line(saved, tmp_path):
    import shutil

    from safetensors.torch import load_file

    _, _, d = saved("bert", "sequence")
    pickled = tmp_path / "pickled"
    shutil.copytree(d, pickled)
    import torch

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    _refused(pickled, tmp_path, "pytorch_model.bin", "safetensors", "save_pretrained")


def _edited_copy(d, dst, edit):
    """A copy of checkpoint `d` whose model.safetensors is `edit(tensors)`."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(d, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file(edit(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("arch,kind", [("xlm-roberta", "sequence"), ("bert", "none")])
def test_weights_that_do_not_fill_the_model_are_refused_naming_the_tensors(arch, kind, saved, tmp_path):
    """transformers fills missing tensors at random: a checkpoint without its encoder's layer 0,
    with a tensor of another size, with an extra layer, or with no weights at all, is refused at
    compile, at eval of a variant built before the edit, and never scored."""
    import torch

    _, _, d = saved(arch, kind)
    compile_variant(d, "fp32", tmp_path / "built")
    no_layer0 = _edited_copy(d, tmp_path / "no-layer0", lambda t: {k: v for k, v in t.items() if ".layer.0." not in k})
    _refused(no_layer0, tmp_path, "missing", "layer.0.", "at random")
    wrong = _edited_copy(d, tmp_path / "wrong-size", lambda t: {k: (torch.zeros(7) if k.endswith(
        "layer.1.output.dense.bias") else v) for k, v in t.items()})
    msg = one_line_error(run("compile", wrong, "--variant", "fp32", "--out", tmp_path / "w"))
    assert "mismatched in size" in msg and "layer.1.output.dense.bias" in msg and not (tmp_path / "w").exists(), msg
    extra = _edited_copy(d, tmp_path / "extra", lambda t: {**t, **{k.replace(".layer.1.", ".layer.9."): v.clone()
                                                                  for k, v in t.items() if ".layer.1." in k}})
    _refused(extra, tmp_path, "unexpected", "layer.9.")
    (bare := tmp_path / "bare").mkdir()
    (bare / "config.json").write_text((d / "config.json").read_text())
    _refused(bare, tmp_path, "no weights")
    # a variant directory whose weights lose the encoder after the build is refused at eval (by
    # its manifest's hashes before anything loads)
    import shutil

    v = tmp_path / "built"
    (v / "model.safetensors").unlink()
    shutil.copy(no_layer0 / "model.safetensors", v / "model.safetensors")
    msg = one_line_error(run("eval", v, "--suite", "demo", "--langs", "de"))
    assert "model.safetensors" in msg, msg


def test_user_checkpoint_round_trips_through_export_hf(saved, tmp_path):
    """`xopt export --format hf` of a user's task model writes that task model again: HF opens
    it with the same class and outputs, and it compiles as the original does."""
    import torch
    import transformers

    for arch, kind in (("xlm-roberta", "sequence"), ("bert", "sequence"), ("roberta", "token"), ("bert", "span")):
        model, tok, d = saved(arch, kind)
        out = tmp_path / f"{arch}-{kind}"
        assert run("export", d, "--format", "hf", "--out", out).exit_code == 0
        back = getattr(transformers, H.AUTO[kind]).from_pretrained(str(out)).eval()
        assert type(back) is type(model)
        ids, mask = _batch(tok, kind)
        ref, got = H.hf_outputs(model, kind, ids, mask), H.hf_outputs(back, kind, ids, mask)
        assert _max_diff(ref, got, mask) == 0
        assert set(back.state_dict()) == set(model.state_dict())
        with torch.no_grad():
            assert _max_diff(ref, load_module(open_checkpoint(out))(torch.from_numpy(ids), torch.from_numpy(mask)),
                             mask) <= FP32_TOL


@pytest.mark.parametrize("arch", ["xlm-roberta", "bert"])
def test_choice_head_is_hf_s_multiple_choice_forward(arch, tmp_path):
    """What `xopt train` trains for HellaSwag, CommonsenseQA, Cosmos QA: HF's *ForMultipleChoice
    head, one score per (context, choice) pair, equal to HF's forward over [B, choices, T]."""
    import torch

    from xopt.hf import task_heads
    from xopt.modeling import ChoiceHead, XoptModel

    model, tok = H.save_model(arch, "choice", tmp_path / "mc")
    ours = XoptModel(model.base_model, ChoiceHead(), None, *task_heads(model, "choice")).eval()
    first, choices = ["a man plays a guitar", "the cat sat"], [["he sings", "nobody is playing"], ["on the mat", "x"]]
    b = tok([f for f, cs in zip(first, choices) for _ in cs], [c for cs in choices for c in cs], padding=True,
            return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"].view(2, 2, -1), attention_mask=b["attention_mask"].view(2, 2, -1)).logits
        got = ours(b["input_ids"], b["attention_mask"]).logits.view(2, -1)
    assert torch.allclose(ref, got, atol=FP32_TOL) and ours.classifier.out_features == 1


def _few_positions(arch: str, d, card: bool):
    """An encoder of `arch` holding 24 positions, as a Hugging Face directory or (`card`) an xopt
    checkpoint whose model card states xopt's default max length, 512."""
    import transformers

    from xopt.modeling import ModelCard, build_module, save_checkpoint

    cfg = H.config(arch)
    cfg.max_position_embeddings = 24
    enc = transformers.AutoModel.from_config(cfg)
    if not card:
        enc.save_pretrained(str(d))
        return H.tokenizer(arch, d)
    tok = H.tokenizer(arch, d.parent / "tok")
    save_checkpoint(build_module(enc.eval(), ModelCard(max_length=512)), tok, ModelCard(max_length=512), d,
                    {"kind": "test"})


@pytest.mark.parametrize("arch, held, card", [("xlm-roberta", 22, False), ("bert", 24, False),
                                              ("xlm-roberta", 22, True)])
def test_a_model_with_fewer_positions_than_the_max_length_reads_long_texts_truncated(arch, held, card, tmp_path):
    """A checkpoint whose max_position_embeddings (24) is below xopt's default max length (512):
    its inputs are truncated to the positions it holds (XLM-R numbers them from padding_idx + 1,
    so 22), and a 100-word sentence is scored instead of indexing past the table. A model card
    that states 512 is lowered with one warning line; a Hugging Face directory states none."""
    import shutil

    d = tmp_path / "short"
    _few_positions(arch, d, card)
    data = tmp_path / "data"
    shutil.copytree(FIX, data)
    pairs = len((data / "tatoeba" / "tatoeba.deu-eng.deu").read_text(encoding="utf-8").splitlines())
    for side, word in (("deu", "Hund "), ("eng", "dog ")):
        with open(data / "tatoeba" / f"tatoeba.deu-eng.{side}", "a", encoding="utf-8") as f:
            f.write(word * 100 + "\n")
    res = run("compile", d, "--variant", "fp32", "--out", tmp_path / "v")
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("xopt: warning:")]
    assert len(warnings) == card, res.stderr
    assert not card or f"truncated to {held} tokens, not the 512 its model card says" in warnings[0]
    assert json.loads((tmp_path / "v" / "manifest.json").read_text())["model"]["max_length"] == held
    res = run("eval", tmp_path / "v", "--suite", "xtreme", "--data", data, "--tasks", "tatoeba", "--langs", "de",
              "--out", tmp_path / "r.jsonl")
    assert res.exit_code == 0, res.output
    assert [r["n_examples"] for r in _records(tmp_path / "r.jsonl").values()] == [pairs + 1]

import json
from dataclasses import replace

import pytest
import torch

from xopt.modeling import load_module, open_checkpoint
from xopt.train import Stage, train


@pytest.mark.parametrize("head", ["hf", "mean-linear"])
def test_baseline_and_xstilts_checkpoints(tmp_path, tiny_ckpt, tiny_suite, head):
    tstage = Stage("demo-topic", train="head", epochs=30, lr=1e-2, batch_size=16)
    istage = Stage("demo-intermediate", train="encoder", epochs=2, lr=1e-3, batch_size=8, top_layers=1)
    b = train(tiny_ckpt, "demo-topic", tiny_suite, tmp_path / "baseline", target_stage=tstage, head=head)
    x = train(tiny_ckpt, "demo-topic", tiny_suite, tmp_path / "xstilts", intermediate="demo-intermediate",
              target_stage=tstage, intermediate_stage=istage, head=head)
    mb, mx = json.loads((b / "manifest.json").read_text()), json.loads((x / "manifest.json").read_text())
    assert mb["role"] == "baseline" and mx["role"] == "xstilts"
    hist = mb["source"]["stages"][-1]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]           # the head learns
    assert len(mx["source"]["stages"]) == 2
    base = load_module(open_checkpoint(tiny_ckpt)).encoder.state_dict()
    enc_b = load_module(open_checkpoint(b)).encoder.state_dict()
    enc_x = load_module(open_checkpoint(x)).encoder.state_dict()
    # baseline: head-only target stage leaves the encoder untouched (BERT's pooler, in the
    # encoder module, is HF's head and trains with it)
    assert all(torch.equal(base[k], enc_b[k]) for k in base if not k.startswith("pooler."))
    # X-STILTs: only the top layer was trained; embeddings and lower layers carried over as they were
    changed = {k for k in base if not torch.equal(base[k], enc_x[k]) and not k.startswith("pooler.")}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed)
    # the intermediate head is discarded: the checkpoint's head has the target task's labels
    labels = json.loads(tiny_suite.read_text())["tasks"]["demo-topic"]["labels"]
    assert open_checkpoint(x).card.labels == labels
    if head == "hf":     # a standard HF checkpoint: AutoModelForSequenceClassification gives xopt's logits
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        hf = AutoModelForSequenceClassification.from_pretrained(str(x)).eval()
        assert type(hf).__name__ == "BertForSequenceClassification" and list(hf.config.id2label.values()) == labels
        batch = AutoTokenizer.from_pretrained(str(x))(["query: Open the file", "query: x"], padding=True,
                                                      return_tensors="pt")
        with torch.no_grad():
            ours = load_module(open_checkpoint(x))(batch["input_ids"], batch["attention_mask"]).logits
            assert torch.allclose(hf(**batch).logits, ours, atol=1e-5)
    else:
        assert (x / "head.safetensors").is_file() and open_checkpoint(x).card.head_layout == "linear"


def _fit_heads(ckpt_dir, suite, stage):
    """(encoder weights before, encoder after, head after) of one `fit` of `stage`."""
    from xopt.modeling import NoHead
    from xopt.hf import load_tokenizer
    from xopt.train import _seed_all, load_task
    from xopt.trainloop import fit, key

    ckpt = open_checkpoint(ckpt_dir)
    _seed_all(0)
    model = load_module(ckpt).with_head(NoHead())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    task = load_task(stage.task, {"root": str(suite)}, stage)
    res = fit(model, load_tokenizer(ckpt.path), ckpt.card.input_prefix, {stage.task: task}, stage, 0, layout="linear")
    head = {k.removeprefix("head."): v.clone() for k, v in res["trainee"].heads[key(stage.task)].xopt_state().items()}
    return before, model.encoder.state_dict(), head


def test_head_lr_gives_the_heads_their_own_learning_rate(tiny_ckpt, tiny_suite):
    # encoder at lr 0: with head_lr the fresh head learns while the encoder stays put; without
    # it the head is held at lr 0 too (same seed, so the same initial head)
    st = Stage("demo-intermediate", train="encoder", epochs=1, lr=0.0, batch_size=8, warmup=0)
    before, after, head_frozen = _fit_heads(tiny_ckpt, tiny_suite, st)
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after, head_trained = _fit_heads(tiny_ckpt, tiny_suite, replace(st, head_lr=1e-2))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_frozen["weight"], head_trained["weight"])
    # and the other way round: head at 0, encoder at a real rate
    before, after, head_zero = _fit_heads(tiny_ckpt, tiny_suite, replace(st, lr=1e-3, head_lr=0.0))
    assert torch.equal(head_zero["weight"], head_frozen["weight"])
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_average_states_is_the_mean_of_the_weights():
    from xopt.trainloop import average_states

    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0, 1.0])}
    b = {"w": torch.tensor([[3.0, 2.0], [1.0, 0.0]]), "b": torch.tensor([2.0, 5.0])}
    c = {"w": torch.tensor([[2.0, 5.0], [2.0, 2.0]]), "b": torch.tensor([1.0, 0.0])}
    avg = average_states([a, b, c])
    assert torch.equal(avg["w"], torch.tensor([[2.0, 3.0], [2.0, 2.0]]))
    assert torch.equal(avg["b"], torch.tensor([1.0, 2.0]))
    assert torch.equal(average_states([a])["w"], a["w"])


def _train_lin(ckpt, suite, out, **kw):
    """demo-topic with xopt's linear head: the mechanics below compare one weight matrix."""
    return train(ckpt, "demo-topic", suite, out, head="mean-linear", **kw)


def test_average_trains_several_heads_and_keeps_their_mean(tmp_path, tiny_ckpt, tiny_suite):
    from safetensors.torch import load_file

    # the soup of seeds 0..2 is the mean of the three single-seed heads
    tstage = Stage("demo-topic", train="head", epochs=5, lr=1e-2, batch_size=16)
    heads = []
    for seed in range(3):
        d = _train_lin(tiny_ckpt, tiny_suite, tmp_path / f"s{seed}", target_stage=tstage, seed=seed)
        heads.append(load_file(str(d / "head.safetensors")))
    soup = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "soup", target_stage=replace(tstage, average=3))
    got = load_file(str(soup / "head.safetensors"))
    head_keys = list(got)
    assert "weight" in head_keys
    for k in head_keys:
        assert not torch.equal(heads[0][k], heads[1][k])
        assert torch.allclose(got[k], sum(h[k] for h in heads) / 3, atol=1e-6)
    man = json.loads((soup / "manifest.json").read_text())
    assert man["source"]["stages"][-1]["average"]["seeds"] == [0, 1, 2]


def test_encoder_soup_is_the_mean_of_the_single_seed_encoders(tmp_path, tiny_ckpt, tiny_suite):
    # an intermediate stage with average = 3 keeps the mean of the encoders that seeds 0..2 train
    # alone from the same start (then interpolate applies to that mean)
    tstage = Stage("demo-topic", train="head", epochs=1, lr=1e-2, batch_size=16)
    istage = Stage("demo-intermediate", train="encoder", epochs=1, lr=1e-3, batch_size=8, top_layers=1)
    kw = dict(intermediate="demo-intermediate", target_stage=tstage)
    single = [load_module(open_checkpoint(_train_lin(tiny_ckpt, tiny_suite, tmp_path / f"s{k}",
                                                intermediate_stage=istage, seed=k, **kw))).encoder.state_dict()
              for k in range(3)]
    soup = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "soup",
                 intermediate_stage=replace(istage, average=3, interpolate=0.5), **kw)
    got = load_module(open_checkpoint(soup)).encoder.state_dict()
    base = load_module(open_checkpoint(tiny_ckpt)).encoder.state_dict()
    changed = [k for k in base if not torch.equal(single[0][k], single[1][k])]
    assert changed
    for k in base:
        mean = sum(e[k] for e in single) / 3
        assert torch.allclose(got[k], base[k] + 0.5 * (mean - base[k]), atol=1e-6), k
    man = json.loads((soup / "manifest.json").read_text())
    assert man["source"]["stages"][0]["average"]["seeds"] == [0, 1, 2]


def test_probe_epochs_start_the_encoder_stage_from_a_linear_probe(tmp_path, tiny_ckpt, tiny_suite):
    import pytest
    from safetensors.torch import load_file

    from xopt.errors import XoptError

    # with nothing learned after the probe (lr 0), the stage's head is the probe's: a head-only
    # run of probe_epochs at probe_lr, batch 64; the encoder is untouched
    probe = Stage("demo-topic", train="head", epochs=3, lr=1e-2, batch_size=64, length_grouped=False)
    lp = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "lp", target_stage=probe)
    lpft = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "lpft", target_stage=Stage(
        "demo-topic", train="encoder", epochs=1, lr=0, head_lr=0, batch_size=8, probe_epochs=3, probe_lr=1e-2))
    want, got = load_file(str(lp / "head.safetensors")), load_file(str(lpft / "head.safetensors"))
    fresh = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "fresh", target_stage=Stage(
        "demo-topic", train="encoder", epochs=1, lr=0, head_lr=0, batch_size=8))
    assert not torch.allclose(load_file(str(fresh / "head.safetensors"))["weight"], want["weight"])
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    base = load_module(open_checkpoint(tiny_ckpt)).encoder.state_dict()
    enc = load_module(open_checkpoint(lpft)).encoder.state_dict()
    assert all(torch.equal(base[k], enc[k]) for k in base)
    with pytest.raises(XoptError, match="probe_epochs"):
        _train_lin(tiny_ckpt, tiny_suite, tmp_path / "bad", target_stage=replace(probe, probe_epochs=2))


def test_interpolate_keeps_that_fraction_of_the_encoder_change(tmp_path, tiny_ckpt, tiny_suite):
    import pytest

    from xopt.errors import XoptError

    tstage = Stage("demo-topic", train="head", epochs=1, lr=1e-2, batch_size=16)
    istage = Stage("demo-intermediate", train="encoder", epochs=1, lr=1e-3, batch_size=8, top_layers=1)
    kw = dict(intermediate="demo-intermediate", target_stage=tstage)
    full = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "full", intermediate_stage=istage, **kw)
    part = _train_lin(tiny_ckpt, tiny_suite, tmp_path / "part",
                 intermediate_stage=replace(istage, interpolate=0.25), **kw)
    base = load_module(open_checkpoint(tiny_ckpt)).encoder.state_dict()
    ef = load_module(open_checkpoint(full)).encoder.state_dict()
    ep = load_module(open_checkpoint(part)).encoder.state_dict()
    assert any(not torch.equal(base[k], ef[k]) for k in base)
    for k in base:
        assert torch.allclose(ep[k], base[k] + 0.25 * (ef[k] - base[k]), atol=1e-6), k
    with pytest.raises(XoptError, match="interpolate"):
        _train_lin(tiny_ckpt, tiny_suite, tmp_path / "bad", target_stage=replace(tstage, interpolate=0.5))

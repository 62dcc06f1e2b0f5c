import json

import torch

from xopt.modeling import load_module, open_checkpoint
from xopt.train import Stage, train


def test_baseline_and_xstilts_checkpoints(tmp_path, tiny_ckpt, tiny_suite):
    tstage = Stage("demo-topic", train="head", epochs=30, lr=1e-2, batch_size=16)
    istage = Stage("demo-intermediate", train="encoder", epochs=2, lr=1e-3, batch_size=8, top_layers=1)
    b = train(tiny_ckpt, "demo-topic", tiny_suite, tmp_path / "baseline", target_stage=tstage)
    x = train(tiny_ckpt, "demo-topic", tiny_suite, tmp_path / "xstilts", intermediate="demo-intermediate",
              target_stage=tstage, intermediate_stage=istage)
    mb, mx = json.loads((b / "manifest.json").read_text()), json.loads((x / "manifest.json").read_text())
    assert mb["role"] == "baseline" and mx["role"] == "xstilts"
    hist = mb["source"]["stages"][-1]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]           # the head learns
    assert len(mx["source"]["stages"]) == 2
    base = load_module(open_checkpoint(tiny_ckpt)).encoder.state_dict()
    enc_b = load_module(open_checkpoint(b)).encoder.state_dict()
    enc_x = load_module(open_checkpoint(x)).encoder.state_dict()
    # baseline: head-only target stage leaves the encoder untouched
    assert all(torch.equal(base[k], enc_b[k]) for k in base)
    # X-STILTs: only the top layer was trained; embeddings and lower layers carried over as they were
    changed = {k for k in base if not torch.equal(base[k], enc_x[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed)
    # the intermediate head is discarded: the checkpoint's head has the target task's labels
    assert open_checkpoint(x).card.labels == json.loads(tiny_suite.read_text())["tasks"]["demo-topic"]["labels"]

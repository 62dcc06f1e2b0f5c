"""The model every variant compiles, its card, and checkpoint directories (transformers-style).

A checkpoint directory is a plain Hugging Face directory (config.json, model.safetensors,
tokenizer files) plus `manifest.json` (xopt.manifest: where the weights came from, their hashes,
and the model card xopt needs: pooling, input prefix, head labels, which task trained the head).
Its head is in one of two layouts (`ModelCard.head_layout`):
- "hf": the checkpoint is the Hugging Face task model itself (`<Arch>ForSequenceClassification`,
  `...ForTokenClassification`, `...ForQuestionAnswering`; `xopt.hf`), what HF Trainer, jiant and
  XTREME's scripts train and `AutoModelFor*.from_pretrained` opens;
- "linear": xopt's one linear layer `head` in `head.safetensors` beside the encoder (on the mean-
  pooled embedding for a sequence head: the sentence-transformers Pooling + Dense layout).

`XoptModel` = the HF encoder (base model), mean pooling over real tokens, and one head class
(`NoHead`, `SequenceHead`, `ChoiceHead`, `TokenHead`, `SpanHead`) that says which named output
the model returns. The head's modules carry Hugging Face's names (`classifier`, `qa_outputs`,
`pooler`, BERT's `encoder.pooler`; `head` for the linear layout) and run as a chain over the
last hidden state (`XoptModel.chain`), so a variant's logits are HF's forward of the same
checkpoint. Outputs are NamedTuples (still tuples, in this order, so ONNX export,
torch.compile and every variant see plain tuples):

| output | shape | head |
|---|---|---|
| `sentence_embedding` | [B, H] | all: mean of the last layer over real tokens (e5's embedding) |
| `layer_embedding` | [B, H] | all: the same mean over layer `card.retrieval_layer` (default: the middle layer, as XTREME's BUCC/Tatoeba) |
| `logits` | [B, L] | `SequenceHead` (XNLI, PAWS-X, demo topic), `ChoiceHead` (L = 1 per (question, choice) pair) |
| `token_logits` | [B, T, L] | `TokenHead`: on each token of the last layer (UD-POS, PAN-X) |
| `start_logits`, `end_logits` | [B, T] | `SpanHead`: 2 outputs on each token (XQuAD, MLQA, TyDiQA) |

Exported graphs (ONNX files, TensorRT engines) name their outputs as Hugging Face and optimum
do (`GRAPH_NAMES`: `token_logits` is `logits` there), and an encoder-only graph also returns
`last_hidden_state` [B, T, H], what optimum's feature extraction and sentence-transformers'
ONNX backend pool; `graph_names` maps xopt's names onto a graph's.

Packaged models are imported by `xopt.importers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from xopt.errors import XoptError

HEAD_FILE = "head.safetensors"


# --- outputs -----------------------------------------------------------------------------------

class EncoderOutput(NamedTuple):
    sentence_embedding: Any
    layer_embedding: Any


class SequenceOutput(NamedTuple):
    sentence_embedding: Any
    layer_embedding: Any
    logits: Any


class TokenOutput(NamedTuple):
    sentence_embedding: Any
    layer_embedding: Any
    token_logits: Any


class SpanOutput(NamedTuple):
    sentence_embedding: Any
    layer_embedding: Any
    start_logits: Any
    end_logits: Any


# --- heads -------------------------------------------------------------------------------------

class Head:
    """What the model's one linear layer (`XoptModel.head`) reads and how its scores become the
    named outputs. Stateless: the weights live in the linear layer, so a quantised or compiled
    replacement of that layer keeps working."""

    kind: ClassVar[str]                  # ModelCard.head, the serialised name
    Output: ClassVar[type]               # the NamedTuple this head returns
    on_tokens: ClassVar[bool] = False    # the linear layer reads every token (else the sentence embedding)
    needs_labels: ClassVar[bool] = True  # the card lists the classes (else they are fixed or absent)
    fixed_labels: ClassVar[tuple | None] = None   # classes every head of this kind has

    def __init__(self, num_labels: int = 0):
        self.num_labels = num_labels

    @property
    def width(self) -> int:
        """Outputs of the linear layer (0: no layer)."""
        return self.num_labels

    @classmethod
    def output_names(cls) -> tuple[str, ...]:
        return cls.Output._fields

    def linear(self, hidden_size: int) -> nn.Linear | None:
        return nn.Linear(hidden_size, self.width) if self.width else None

    def outputs(self, embedding, layer_embedding, scores):
        """The named output from the pooled embeddings and the linear layer's scores."""
        return self.Output(embedding, layer_embedding, scores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_labels})"


class NoHead(Head):
    kind, Output, needs_labels = "none", EncoderOutput, False

    @property
    def width(self) -> int:
        return 0

    def outputs(self, embedding, layer_embedding, scores=None):
        return EncoderOutput(embedding, layer_embedding)


class SequenceHead(Head):
    kind, Output = "sequence", SequenceOutput


class ChoiceHead(Head):
    """Multiple choice (intermediate tasks): one score per (question, choice) pair, the softmax
    over each question's choices taken by the task family (HF's *ForMultipleChoice)."""
    kind, Output, needs_labels = "choice", SequenceOutput, False

    @property
    def width(self) -> int:
        return 1


class TokenHead(Head):
    kind, Output, on_tokens = "token", TokenOutput, True


class SpanHead(Head):
    kind, Output, on_tokens, needs_labels = "span", SpanOutput, True, False
    fixed_labels = ("start", "end")

    @property
    def width(self) -> int:
        return 2

    def outputs(self, embedding, layer_embedding, scores):
        return SpanOutput(embedding, layer_embedding, scores[..., 0], scores[..., 1])


HEAD_CLASSES: dict[str, type[Head]] = {h.kind: h for h in (NoHead, SequenceHead, ChoiceHead, TokenHead, SpanHead)}
HEAD_LAYOUTS = ("hf", "linear")     # module doc
HEADS = tuple(HEAD_CLASSES)
SPAN_LABELS = SpanHead.fixed_labels
PER_TOKEN_OUTPUTS = tuple(n for h in HEAD_CLASSES.values() if h.on_tokens
                          for n in h.output_names() if n not in EncoderOutput._fields)   # axis 1 is the sequence

# Output names in exported graphs, where they differ from xopt's (module doc)
GRAPH_NAMES = {"token_logits": "logits"}
HIDDEN_OUTPUT = "last_hidden_state"


def graph_names(names, available=None) -> tuple[str, ...]:
    """The graph output names of xopt outputs `names`; with `available` (a graph's output names),
    a name the graph holds as is stays (graphs exported before the renaming)."""
    return tuple(n if available is not None and n in available else GRAPH_NAMES.get(n, n) for n in names)


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
    head_layout: str = "hf"         # HEAD_LAYOUTS (module doc)

    def __post_init__(self):
        if self.head is None:
            self.head = "sequence" if self.labels else "none"
        if self.head not in HEADS:
            raise XoptError(f"unknown head kind {self.head!r}; known: {', '.join(HEADS)}")
        if self.head_layout not in HEAD_LAYOUTS:
            raise XoptError(f"unknown head layout {self.head_layout!r}; known: {', '.join(HEAD_LAYOUTS)}")
        cls = HEAD_CLASSES[self.head]
        if cls.fixed_labels is not None:
            self.labels = list(cls.fixed_labels)
        if cls.needs_labels and not self.labels:
            raise XoptError(f"a {self.head!r} head needs labels")

    @property
    def num_outputs(self) -> int:
        return self.head_type.width

    @property
    def head_type(self) -> Head:
        return HEAD_CLASSES[self.head](len(self.labels))

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> "ModelCard":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known.setdefault("head_layout", "linear")     # cards written before HF heads: xopt's linear head
        return cls(**known)


class XoptModel(nn.Module):
    """Encoder + mean pooling + one head class (module doc). `heads`: the head's modules by their
    Hugging Face names and `chain` the order they run in over the last hidden state (each reads
    what the one before returns; HF's first-token heads pick token 0 themselves); without
    `heads`, xopt's linear layer `head` (on the mean-pooled embedding, or on every token)."""

    def __init__(self, encoder, head: Head | None = None, layer: int | None = None,
                 heads: dict[str, nn.Module] | None = None, chain: tuple[str, ...] = ()):
        super().__init__()
        n_layers = encoder.config.num_hidden_layers
        layer = n_layers // 2 if layer is None else layer
        if not 0 <= layer <= n_layers:
            raise XoptError(f"retrieval_layer {layer} out of range: the encoder has {n_layers} layers (0 = embeddings)")
        self.encoder = encoder
        self.layer = layer
        self.head_type = head or NoHead()
        if heads is None:
            self.head = self.head_type.linear(encoder.config.hidden_size)
            self.chain = ("head",) if self.head is not None else ()
            self.head_layout = "linear"
        else:
            self.head = None
            for name, module in heads.items():
                if not name.startswith("encoder."):     # BERT's pooler is already the encoder's
                    self.add_module(name, module)
            self.chain = tuple(chain)
            self.head_layout = "hf"
        # what the chain's first module reads: every token, or the mean-pooled embedding (linear layout)
        self.reads = "tokens" if self.head_type.on_tokens or self.head_layout == "hf" else "mean"

    @property
    def has_head(self) -> bool:
        return bool(self.chain)

    def head_modules(self) -> dict[str, nn.Module]:
        """The head's modules by name, in chain order (what a quantising recipe may have replaced)."""
        return {name: self.get_submodule(name) for name in self.chain}

    def head_state(self) -> dict:
        """The head's weights, keyed by module name (`classifier.dense.weight`, `head.bias`)."""
        return {f"{name}.{k}": v for name, m in self.head_modules().items() for k, v in m.state_dict().items()}

    def with_head(self, head: Head, state: dict | None = None, layout: str = "linear",
                  labels: list | None = None) -> "XoptModel":
        """The same encoder (shared, not copied) with another head, fresh or with `state`
        (`head_state()` of a model of that head); `layout`: "linear" or "hf" (`xopt.hf.new_heads`)."""
        if layout == "hf" and head.width:
            from xopt.hf import new_heads

            model = XoptModel(self.encoder, head, self.layer, *new_heads(self.encoder, head, labels))
        else:
            model = XoptModel(self.encoder, head, self.layer)
        if state is not None and model.has_head:
            model.load_head_state(state)
        return model.train(self.training)

    def load_head_state(self, state: dict) -> None:
        for name, m in self.head_modules().items():
            m.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})

    def encode(self, input_ids, attention_mask):
        """(last hidden state [B, T, H], sentence_embedding, layer_embedding)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        count = mask.sum(1).clamp(min=1.0)
        embedding = (hidden * mask).sum(1) / count
        layer_embedding = (out.hidden_states[self.layer] * mask).sum(1) / count
        return hidden, embedding, layer_embedding

    def scores(self, hidden, embedding):
        """The head chain's output from the last hidden state [B, T, H] (or the embedding [B, H]
        that a linear sequence head reads)."""
        x = embedding if self.reads == "mean" else hidden
        for name in self.chain:
            x = self.get_submodule(name)(x)
        return x

    def forward(self, input_ids, attention_mask, with_hidden: bool = False):
        """The head's named outputs; `with_hidden`: a plain tuple of them and the last hidden state."""
        hidden, embedding, layer_embedding = self.encode(input_ids, attention_mask)
        scores = self.scores(hidden, embedding) if self.has_head else None
        out = self.head_type.outputs(embedding, layer_embedding, scores)
        return (*out, hidden) if with_hidden else out


class WithHidden(nn.Module):
    """An XoptModel whose forward also returns the last hidden state (plain tuple): what an
    encoder-only model's exported graph computes (module doc)."""

    def __init__(self, model: XoptModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask, with_hidden=True)


def build_module(encoder, card: "ModelCard | None" = None) -> XoptModel:
    """The XoptModel of an encoder and a model card (None: encoder only), with a fresh head in
    the card's layout."""
    card = card or ModelCard()
    return XoptModel(encoder, None, card.retrieval_layer).with_head(card.head_type, layout=card.head_layout,
                                                                    labels=card.labels)


def output_names(card: "ModelCard | dict | None") -> tuple[str, ...]:
    """What XoptModel returns for a model card (or its JSON form), in order."""
    if not isinstance(card, ModelCard):
        card = ModelCard.from_json(card or {})
    return HEAD_CLASSES[card.head].output_names()


@dataclass
class Checkpoint:
    path: Path
    card: ModelCard
    manifest: dict
    head_state: dict | None = None     # a Hugging Face directory's head weights (xopt.hf.hf_card)

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
    if not any(path.glob("*.safetensors")) and any(path.glob("pytorch_model*.bin")):
        raise XoptError(f"checkpoint {path}: weights in pytorch_model.bin only; xopt reads safetensors (no pickles). "
                        "Re-save it: `AutoModelFor<Task>.from_pretrained(DIR).save_pretrained(DIR)` writes "
                        "model.safetensors")
    if not any(path.glob("*.safetensors")):
        raise XoptError(f"checkpoint {path}: no weights (no *.safetensors file beside config.json); a config alone "
                        "would be a randomly initialised model")
    man = mf.read(path, kind="checkpoint", verify=verify) if (path / mf.MANIFEST).exists() else {}
    for f in sorted(path.glob("*.safetensors")):     # without a manifest, no hash catches a cut-off copy
        check_safetensors(f)
    from xopt.hf import check_config, fit_positions, hf_card, read_config

    check_config(path)
    if man:
        ckpt, stated = Checkpoint(path, ModelCard.from_json(man.get("model", {})), man), True
    else:    # a Hugging Face directory: its head from its config and weights
        card, head = hf_card(path)
        ckpt, stated = Checkpoint(path, ModelCard.from_json(card), man, head), "max_length" in card
    fit_positions(ckpt.card, read_config(path), path, stated)
    return ckpt


def quiet_hf() -> None:
    """Transformers' own tqdm bars (loading/writing shards) would interleave with ours."""
    from xopt.quiet import quiet_imports

    with quiet_imports():        # transformers.utils imports torchao, which logs at import
        from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_module(ckpt: Checkpoint, dtype=None):
    """Checkpoint -> XoptModel (eval mode) on CPU: the HF task model's encoder and head modules
    (layout "hf"), or the encoder and xopt's linear head (layout "linear")."""
    import json

    import torch
    from safetensors.torch import load_file

    from xopt import hf
    from xopt.quiet import quiet_imports

    with quiet_imports():
        # the Auto classes resolve their model class lazily, inside from_pretrained; PreTrainedModel
        # imports modeling_utils (and with it torchao) here, inside the quiet block
        import transformers
        from transformers import PreTrainedModel  # noqa: F401
    quiet_hf()
    card = ckpt.card
    # SDPA where transformers has it for the architecture (DeBERTa-v2 runs its own eager attention)
    sdpa = json.loads((ckpt.path / "config.json").read_text()).get("model_type") != "deberta-v2"
    kw = {"attn_implementation": "sdpa" if sdpa else "eager", "dtype": dtype or torch.float32}
    if card.head_layout == "hf" and card.head != "none":
        task = hf.from_pretrained(getattr(transformers, hf.AUTO_CLASSES[card.head]), ckpt.path, kw)
        return XoptModel(task.base_model, card.head_type, card.retrieval_layer, *hf.task_heads(task, card.head)).eval()
    enc = hf.from_pretrained(transformers.AutoModel, ckpt.path, {**kw, **hf.pooler_kwargs(ckpt.path)})
    model = build_module(enc, card)
    if model.has_head:
        if ckpt.head_state is not None:
            model.head.load_state_dict(ckpt.head_state)
        elif not (ckpt.path / HEAD_FILE).is_file():
            raise XoptError(f"checkpoint {ckpt.path}: manifest lists labels but {HEAD_FILE} is missing")
        else:
            model.head.load_state_dict(load_file(str(ckpt.path / HEAD_FILE)))
    return model.eval()


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header or tensor data is cut short or corrupt (a copy that
    stopped half-way, a checkpoint without a manifest to verify hashes against), from its header
    alone: 8-byte header length, JSON header, then data up to the largest tensor end offset."""
    import json
    import struct

    fix = "copy or re-save the checkpoint (e.g. `xopt train` or `xopt import` again)"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or n > size - 8:
                raise ValueError(f"{size} bytes, shorter than its header")
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise XoptError(f"{path}: not a readable safetensors file ({e}); {fix}") from None
    if 8 + n + end > size:
        raise XoptError(f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + n + end}); {fix}")


def save_checkpoint(model, tokenizer, card: ModelCard, out: Path, source: dict, force: bool = False,
                    manifest_extra: dict | None = None) -> Path:
    """Write an XoptModel + tokenizer as a checkpoint directory, atomically: the HF task model
    (layout "hf", `xopt.hf.write_task_model`) or the encoder and `head.safetensors` ("linear")."""
    from safetensors.torch import save_file

    from xopt import manifest as mf
    from xopt.hf import portable_tokenizer_config, write_task_model

    quiet_hf()
    if model.has_head and card.head_layout != model.head_layout:
        raise XoptError(f"model card says head layout {card.head_layout!r}, the model has {model.head_layout!r}")
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with mf.atomic_dir(out, force=force, kind="checkpoint", need_bytes=need) as tmp:
        if model.has_head and model.head_layout == "hf":
            write_task_model(model, card, tmp)
        else:
            model.encoder.save_pretrained(str(tmp), safe_serialization=True)
            if model.has_head:
                save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(tmp / HEAD_FILE))
        tokenizer.save_pretrained(str(tmp))
        portable_tokenizer_config(tmp)       # before the manifest hashes it
        mf.write(tmp, kind="checkpoint", source=source, extra={**(manifest_extra or {}), "model": card.to_json()})
    return out

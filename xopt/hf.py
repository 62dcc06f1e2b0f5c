"""The Hugging Face layouts of xopt checkpoints, and reading them back.

A checkpoint with a head in layout "hf" (xopt.modeling) *is* the Hugging Face task model:
`<Arch>ForSequenceClassification` (XNLI, PAWS-X), `...ForTokenClassification` (UD-POS, PAN-X),
`...ForQuestionAnswering` (XQuAD, MLQA, TyDiQA), what HF Trainer, jiant and XTREME's scripts
save; `...ForMultipleChoice` is trained for intermediate tasks and not kept. Its head modules
run as XoptModel's chain under their HF names (`head_chain`): RoBERTa/XLM-R's `classifier`
(dense -> tanh -> out_proj on `<s>`), BERT's `encoder.pooler` -> `dropout` -> `classifier`,
DeBERTa-v2's `pooler` (ContextPooler) -> `dropout` -> `classifier`, `dropout` -> `classifier` on
every token, `qa_outputs` on every token. `MODEL_TYPES` are the architectures whose task models
are checked against HF's own forward (tests/test_hf_models.py).

`xopt export CKPT --format hf --out DIR` (`xopt.export.export_hf`) writes a checkpoint as that
task model (`write_task_model`; xopt's linear token and span heads are the same function as
HF's, so they are written as `classifier` / `qa_outputs`), or, for xopt's linear sequence head
and an encoder, as the encoder (`<Arch>Model`) with the sentence-transformers modules over it:
`1_Pooling` (mean over the attention mask, as xopt) and, for a sequence head, `2_Dense` (the
linear head, identity activation), so that `SentenceTransformer(DIR).encode(texts)` returns
xopt's `logits` (encoder only: its `sentence_embedding`). No HF task class computes that head, so
such a directory's config.json names the encoder class and no labels: nothing in it invites
`AutoModelForSequenceClassification`, which would load it with a random classifier. Its labels
are in the xopt model card.

Every layout keeps the tokenizer files (`tokenizer_class` as transformers 4.x and 5.x both read
it: `portable_tokenizer_config`) and the xopt model card (`xopt_card.json`: input prefix,
max length, task, retrieval layer); the sentence-transformers layouts also carry the input
prefix as the "query" prompt (`config_sentence_transformers.json`).

`hf_card` is the other direction: a Hugging Face directory without an xopt manifest opens as a
checkpoint with its head (`open_checkpoint`), the task model by its config's `architectures`,
a sentence-transformers directory with a `Dense` module as a linear sequence head.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

from xopt.errors import XoptError

AUTO_CLASSES = {"sequence": "AutoModelForSequenceClassification", "choice": "AutoModelForMultipleChoice",
                "token": "AutoModelForTokenClassification", "span": "AutoModelForQuestionAnswering"}
ARCH_SUFFIX = {kind: auto.removeprefix("AutoModel") for kind, auto in AUTO_CLASSES.items()}
HEAD_KEYS = {"token": "classifier", "span": "qa_outputs"}     # xopt's linear head in HF's task models
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "deberta-v2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")
DENSE_DIR, POOLING_DIR = "2_Dense", "1_Pooling"
CARD_FILE = "xopt_card.json"
IDENTITY = "torch.nn.modules.linear.Identity"
SUPPORTED = ("an encoder (AutoModel) or its task model for sequence classification, token classification or "
             f"question answering, model type {', '.join(MODEL_TYPES)}")


def check_model_type(model_type: str | None, where) -> None:
    if model_type not in MODEL_TYPES:
        raise XoptError(f"{where}: model type {model_type!r} is not supported; xopt takes {SUPPORTED}")


def encoder_classes(model_type: str) -> set[str]:
    """`architectures` whose weights hold a bare encoder xopt takes: the base model and its
    pre-training checkpoints (masked LM, BERT's pre-training heads, which AutoModel drops)."""
    from transformers.models.auto import modeling_auto as auto

    return {m.get(model_type) for m in (auto.MODEL_MAPPING_NAMES, auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                        auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES)} - {None}


def head_chain(task, kind: str) -> tuple[str, ...]:
    """XoptModel names of an HF task model's head modules, in the order its forward runs them on
    the last hidden state (module doc)."""
    from torch import nn

    if kind == "span":
        return ("qa_outputs",)
    if kind == "token":
        return ("dropout", "classifier")
    if not isinstance(getattr(task, "classifier", None), nn.Linear):
        return ("classifier",)            # RoBERTa's classification head reads <s> itself
    if isinstance(getattr(task, "pooler", None), nn.Module):
        return ("pooler", "dropout", "classifier")
    if isinstance(getattr(task.base_model, "pooler", None), nn.Module):
        return ("encoder.pooler", "dropout", "classifier")
    raise XoptError(f"{type(task).__name__}: its head is none of the layouts xopt runs ({SUPPORTED})")


def task_heads(task, kind: str) -> tuple[dict, tuple[str, ...]]:
    """(head modules by XoptModel name, chain) of an HF task model: XoptModel's `heads`, `chain`."""
    check_model_type(task.config.model_type, type(task).__name__)
    chain = head_chain(task, kind)
    return {n: (task.base_model if n.startswith("encoder.") else task).get_submodule(n.removeprefix("encoder."))
            for n in chain}, chain


def _task_on_meta(config, kind: str):
    """The HF task model class of `kind` for `config`, built on the meta device (no memory)."""
    import torch
    import transformers

    with torch.device("meta"):
        return getattr(transformers, AUTO_CLASSES[kind]).from_config(config)


def _task_config(config, kind: str, labels):
    config = copy.deepcopy(config)
    if kind in ("sequence", "token"):
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    elif kind == "span":
        config.num_labels = 2
    return config


def new_heads(encoder, head, labels=None) -> tuple[dict, tuple[str, ...]]:
    """Fresh head modules of HF's task model of `head`'s kind for `encoder` (HF's own
    initialisation), as XoptModel's `heads`, `chain`. A chain through BERT's pooler uses the
    encoder's pooler where it has one (pre-trained, as HF's from_pretrained does), else gives
    the encoder a new one."""
    labels = list(labels or [f"LABEL_{i}" for i in range(head.width)])
    task = _task_on_meta(_task_config(encoder.config, head.kind, labels), head.kind)
    heads, chain = task_heads(task, head.kind)
    p = next(encoder.parameters())
    for name, m in heads.items():
        if name.startswith("encoder.") and isinstance(getattr(encoder, "pooler", None), type(m)):
            heads[name] = encoder.pooler
            continue
        m.to_empty(device=p.device)
        m.to(p.dtype)
        for sub in m.modules():
            task._init_weights(sub)
        if name.startswith("encoder."):
            encoder.pooler = m
    return heads, chain


def pooler_kwargs(path: Path) -> dict:
    """from_pretrained keywords for a bare encoder: BERT/RoBERTa's pooler is built only where
    the weights hold one (a BERT chain reuses it; see `new_heads`)."""
    from safetensors import safe_open

    model_type = read_config(path).get("model_type")
    if model_type not in ("bert", "roberta", "xlm-roberta"):
        return {}
    has = False
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            has = has or any("pooler" in k.split(".")[:2] for k in st.keys())    # pooler.* or bert.pooler.*
    return {"add_pooling_layer": has}


def write_task_model(model, card, out: Path) -> str:
    """config.json and model.safetensors of the HF task model an XoptModel computes (layout "hf",
    or xopt's linear token/span head); returns the class name."""
    from safetensors.torch import save_file

    config = _task_config(model.encoder.config, card.head, card.labels)
    task = _task_on_meta(config, card.head)
    prefix = task.base_model_prefix
    state = {}
    for k, v in model.state_dict().items():
        name = f"{prefix}.{k[8:]}" if k.startswith("encoder.") else k
        if k.startswith("head."):
            name = HEAD_KEYS[card.head] + k[4:]
        state[name] = v
    want = set(task.state_dict())
    if missing := want - set(state):
        raise XoptError(f"{type(task).__name__} needs {sorted(missing)[:3]}, which this model does not hold")
    config.architectures = [type(task).__name__]
    config.save_pretrained(str(out))
    save_file({k: v.detach().contiguous() for k, v in state.items() if k in want}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return type(task).__name__


# tokenizer classes transformers 5 writes that transformers 4.x does not know -> the class both
# load the same tokenizer.json with (4.57 is what optimum-onnx pins)
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_config(path: Path) -> None:
    """Rewrite `path/tokenizer_config.json`'s `tokenizer_class` where transformers 5 named its own
    backend (`TokenizersBackend`, unknown to transformers 4.x): `PreTrainedTokenizerFast` reads
    tokenizer.json as it is in both. A model's own class (`XLMRobertaTokenizerFast`, ...) is
    kept; it is not written in place of the generic one, since transformers 5's model classes
    rebuild the pipeline from the vocabulary and tokenize a custom tokenizer.json differently."""
    f = Path(path) / "tokenizer_config.json"
    if not f.is_file() or not (Path(path) / "tokenizer.json").is_file():
        return
    config = json.loads(f.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in PORTABLE_TOKENIZER_CLASSES:
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASSES[config["tokenizer_class"]]
        f.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_config(path: Path) -> dict:
    """A checkpoint's config.json as a dict, or one line naming it."""
    return _table(Path(path) / "config.json")


def _table(f: Path) -> dict:
    """A JSON object of a checkpoint's (config.json, the xopt card, a sentence-transformers
    module's config), or one line naming the file: missing, malformed, or not an object."""
    from xopt.errors import read_json

    fix = "re-save the checkpoint (`model.save_pretrained(DIR)`)"
    d = read_json(f, f.name, fix)
    if not isinstance(d, dict):
        raise XoptError(f"{f}: not a JSON object of settings; {fix}")
    return d


def check_config(path: Path) -> None:
    """Refuse in one line a config.json that transformers does not accept (a field of the wrong
    type or range, an unknown model type): read here, before anything else reads it."""
    from xopt.quiet import quiet_imports

    with quiet_imports():
        from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(str(path))
        check_memory(read_config(path), Path(path) / "config.json")
    except XoptError:
        raise
    except Exception as e:     # transformers' validation errors have no common base below Exception
        raise XoptError(f"{Path(path) / 'config.json'}: transformers does not accept it ({first_line(e)}); "
                        "re-save the checkpoint with the model it was trained with") from e


def param_estimate(config: dict) -> int:
    """Parameters an encoder of `config` holds, from its sizes alone (nothing allocated):
    embeddings (vocab + positions + token types) x hidden, and per layer the attention's four
    h x h projections and the feed-forward's two h x intermediate ones, biases and layer norms;
    the head's h x h is within the rounding."""
    def size(key, default=0):
        v = config.get(key, default)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default

    h, i = size("hidden_size"), size("intermediate_size", 4 * size("hidden_size"))
    positions, layer = size("max_position_embeddings"), 4 * h * h + 2 * h * i + 9 * h + i
    if config.get("model_type") == "deberta-v2":    # relative position table, own projections of it
        positions = (0 if config.get("position_biased_input") is False else positions) + 2 * (
            size("max_relative_positions") or positions) * bool(config.get("relative_attention"))
        layer += 0 if config.get("share_att_key") else 2 * h * h
    emb = (size("vocab_size") + positions + size("type_vocab_size")) * h
    return emb + size("num_hidden_layers") * layer + h * h


def check_memory(config: dict, where, bytes_per_param: int = 4) -> None:
    """Refuse in one line a config whose parameters alone exceed the memory this machine has
    available, before anything allocates them."""
    from xopt.host import available_memory

    need, have = param_estimate(config) * bytes_per_param, available_memory()
    if have is not None and need > have:
        raise XoptError(f"{where}: a model of ~{need / 2**30:.1f} GiB of parameters "
                        f"(hidden_size {config.get('hidden_size')}, {config.get('num_hidden_layers')} layers, "
                        f"vocab_size {config.get('vocab_size')}, {bytes_per_param} bytes each); this machine has "
                        f"{have / 2**30:.1f} GiB available: check those sizes, or use a machine with more memory")


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def position_limit(config: dict) -> int | None:
    """The longest input, in tokens, the encoder's absolute position embeddings hold:
    `max_position_embeddings` less the position offset (RoBERTa and XLM-R number positions from
    padding_idx + 1); None where attention is relative only (DeBERTa-v2 without
    `position_biased_input`)."""
    n = config.get("max_position_embeddings")
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    if config.get("model_type") == "deberta-v2" and not config.get("position_biased_input", True):
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta"):
        n -= int(config.get("pad_token_id", 1)) + 1
    return n


_FITTED: set = set()


def fit_positions(card, config: dict, where, stated: bool = True) -> None:
    """Lower `card.max_length` to what the encoder's position embeddings hold (`hf.position_limit`):
    a longer input would index past them. A length the checkpoint states (its xopt model card) is
    lowered with a warning, once per checkpoint and process; xopt's default, where nothing states
    one (a Hugging Face directory), is the model's limit without one."""
    limit = position_limit(config)
    if limit is None or card.max_length <= limit:
        return
    if stated and str(where) not in _FITTED:
        _FITTED.add(str(where))
        print(f"xopt: warning: {where}: the model holds {limit} positions (max_position_embeddings "
              f"{config['max_position_embeddings']}); inputs are truncated to {limit} tokens, not the "
              f"{card.max_length} its model card says", file=sys.stderr)
    card.max_length = limit


def hf_card(path: Path) -> tuple[dict, dict | None]:
    """(model card JSON, head weights {name: tensor} or None) of a Hugging Face directory without
    an xopt manifest, read from its config's `architectures`/`id2label`, its weights and its
    sentence-transformers modules (module doc)."""
    from safetensors import safe_open

    config = read_config(path)
    arch = (config.get("architectures") or [""])[0]
    id2label = config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
    card = {"pooling": "mean"}
    xcard = _table(path / CARD_FILE) if (path / CARD_FILE).is_file() else {}
    # written by export_hf: prefix, max_length, task, retrieval layer, and the labels of a linear
    # sequence head, whose config.json names no labels (it names the encoder class)
    card.update({k: v for k, v in xcard.items() if k in ("input_prefix", "max_length", "task", "retrieval_layer")})
    st = path / "config_sentence_transformers.json"
    if st.is_file():
        prompt = (_table(st).get("prompts") or {}).get("query")
        if prompt:
            card["input_prefix"] = prompt
    kind = next((k for k, suffix in ARCH_SUFFIX.items() if arch.endswith(suffix)), None)
    if kind == "choice":
        raise XoptError(f"{path}: {arch} is a multiple-choice model, which xopt trains for intermediate tasks only; "
                        f"xopt compiles {SUPPORTED}")
    check_model_type(config.get("model_type"), path)
    if kind is None and arch and arch not in encoder_classes(config["model_type"]):
        raise XoptError(f"{path}: {arch} is not supported; xopt compiles {SUPPORTED}")
    if kind is not None:
        if not any(path.glob("*.safetensors")):
            raise XoptError(f"{path}: {arch} without model.safetensors (xopt reads safetensors only)")
        return {**card, "head": kind, "head_layout": "hf", **({"labels": labels} if kind != "span" else {})}, None
    modules = path / "modules.json"
    if modules.is_file():
        from xopt.errors import read_json

        mods = read_json(modules, modules.name, "re-save it with sentence-transformers' `model.save(DIR)`")
        if not isinstance(mods, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                 and isinstance(m.get("path"), str) for m in mods):
            raise XoptError(f"{modules}: not a list of modules with a type and a path each")
        pooling = [m for m in mods if m["type"].endswith("Pooling")]
        if pooling:
            pcfg = _table(path / pooling[0]["path"] / "config.json")
            if not pcfg.get("pooling_mode_mean_tokens"):
                raise XoptError(f"{path}: its sentence-transformers Pooling is not mean pooling; xopt pools by the "
                                "mean over the attention mask")
        dense = [m for m in mods if m["type"].endswith("Dense")]
        if len(dense) > 1:
            raise XoptError(f"{path}: {len(dense)} Dense modules; xopt's head is one linear layer")
        if dense:
            d = path / dense[0]["path"]
            dcfg = _table(d / "config.json")
            if dcfg.get("activation_function", IDENTITY) != IDENTITY:
                raise XoptError(f"{path}: its Dense module applies {dcfg['activation_function']}; xopt's head is "
                                "linear (identity activation)")
            with safe_open(str(d / "model.safetensors"), "pt") as f:
                head = {k.removeprefix("linear."): f.get_tensor(k) for k in f.keys()}
            n = dcfg["out_features"]
            labels = next((ls for ls in (xcard.get("labels") or [], labels) if len(ls) == n),
                          [f"LABEL_{i}" for i in range(n)])
            return {**card, "head": "sequence", "labels": labels, "head_layout": "linear"}, head
    return card, None


def param_counts(path: str | Path) -> dict:
    """{"params", "non_embedding_params"} of a checkpoint, from its safetensors headers (no
    weights loaded). Non-embedding = all but the token, position and token-type embedding
    tables (Kaplan et al. 2020's convention), head included."""
    from safetensors import safe_open

    total = emb = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for k in st.keys():
                n = math.prod(st.get_slice(k).get_shape())
                total += n
                if k.endswith("_embeddings.weight") or k.endswith("embed_tokens.weight"):
                    emb += n
    return {"params": total, "non_embedding_params": total - emb}


def num_layers(path: str | Path) -> int | None:
    """The encoder's number of layers (config.json's num_hidden_layers), None when it does not say."""
    f = Path(path) / "config.json"
    try:
        n = json.loads(f.read_text()).get("num_hidden_layers")
    except (OSError, ValueError):
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def from_pretrained(cls, path: Path, kw: dict):
    """`cls.from_pretrained(path)`, refused in one line when the weights do not fill the model:
    transformers initialises missing tensors at random and skips mismatched ones, so a checkpoint
    without its encoder weights would otherwise be scored as a random encoder. Unexpected
    tensors are refused where they fall inside the model's own modules (an extra layer, say);
    those of heads the class does not have (classifier, qa_outputs, lm_head, pooler, ...) are
    what loading an encoder from a task checkpoint leaves out."""
    # ignore_mismatched_sizes: the mismatches come back in `info` (and are refused below)
    # instead of as transformers' multi-line RuntimeError
    import torch

    dtype = kw.get("dtype") if isinstance(kw.get("dtype"), torch.dtype) else torch.float32
    check_memory(read_config(path), Path(path) / "config.json", dtype.itemsize)
    try:
        model, info = cls.from_pretrained(str(path), output_loading_info=True, ignore_mismatched_sizes=True, **kw)
    except (ValueError, KeyError, TypeError) as e:   # a config the model cannot be built from (heads, activation)
        raise XoptError(f"checkpoint {path}: its config.json does not build {cls.__name__} "
                        f"({first_line(e)}); re-save the checkpoint with the model it was trained with") from e
    inside = {name for name, _ in model.named_children()} | {model.base_model_prefix}
    problems = {"missing": sorted(info.get("missing_keys") or []),
                "mismatched in size": sorted(str(k[0] if isinstance(k, tuple) else k)
                                             for k in info.get("mismatched_keys") or []),
                "unexpected": sorted(k for k in info.get("unexpected_keys") or [] if k.split(".")[0] in inside)}
    said = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for what, v in problems.items() if v]
    if said:
        raise XoptError(f"checkpoint {path}: its weights do not match {type(model).__name__} of its config.json: "
                        f"{'; '.join(said)} tensors; transformers would fill the gaps at random. Re-save the checkpoint "
                        "with the model it was trained with (`model.save_pretrained(DIR)`)")
    return model


_TOKENIZERS: dict = {}
# The files AutoTokenizer reads; directories with the same contents (a checkpoint and each of its
# variants) share one parsed tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")


def _tokenizer_key(path: Path) -> tuple:
    """What identifies a directory's tokenizer: its tokenizer files' contents and the config's
    model_type (AutoTokenizer's fallback for the class)."""
    import hashlib
    import json

    key = []
    for name in _TOKENIZER_FILES:
        f = path / name
        if f.is_file():
            key.append((name, hashlib.sha256(f.read_bytes()).hexdigest()))
    cfg = path / "config.json"
    try:
        key.append(("model_type", json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None))
    except (ValueError, OSError, AttributeError):
        key.append(("config", str(path.resolve())))      # unreadable: not shared, the load says why
    return tuple(key) if len(key) > 1 else (str(path.resolve()),)


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint or variant directory, parsed once per process and tokenizer
    file (XLM-R's 250k-piece tokenizer.json takes seconds); an edited file is read again."""
    from xopt.quiet import quiet_imports

    with quiet_imports():
        from transformers import AutoTokenizer

    path = Path(path)
    key = _tokenizer_key(path)
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 8:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        try:
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:    # tokenizers and transformers raise KeyError, ValueError, Exception, ...
            raise XoptError(f"{path}: its tokenizer files do not load ({first_line(e)}); copy them from the "
                            "model's source (`tokenizer.save_pretrained(DIR)` writes them)") from e
    return _TOKENIZERS[key]


def check_tokenizer(path: Path, config: dict):
    """The checkpoint's tokenizer, refused in one line where it does not load or gives token ids
    past the model's embedding table (`vocab_size`)."""
    tok = load_tokenizer(path)
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and len(tok) > vocab:
        raise XoptError(f"{path}: its tokenizer has {len(tok)} tokens, the model's embeddings hold {vocab} "
                        "(config.json vocab_size): not this model's tokenizer; copy the model's own tokenizer files")
    return tok

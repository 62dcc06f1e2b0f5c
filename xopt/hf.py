"""The Hugging Face layouts of xopt checkpoints, and reading them back.

`xopt export CKPT --format hf --out DIR` (`xopt.export.export_hf`) writes a checkpoint as:
- token head (UD-POS, PAN-X): `<Arch>ForTokenClassification` (`bert.*` / `roberta.*` encoder
  weights + `classifier.*`, `id2label`/`label2id`), which computes xopt's `token_logits`:
  dropout is the identity in eval mode and the classifier reads the last hidden state, as ours;
- span head (XQuAD, MLQA, TyDiQA): `<Arch>ForQuestionAnswering` (`qa_outputs.*`), xopt's
  `start_logits`/`end_logits`;
- sequence head and encoder only: the encoder (`<Arch>Model`) with the sentence-transformers
  modules over it: `1_Pooling` (mean over the attention mask, as xopt) and, for a sequence
  head, `2_Dense` (xopt's linear head, identity activation), so that
  `SentenceTransformer(DIR).encode(texts)` returns xopt's `logits` (encoder only: its
  `sentence_embedding`). HF's `*ForSequenceClassification` classes pool the first token
  through a dense + tanh layer, a different function: no config can make them compute a linear
  layer on the mean-pooled embedding, so the sequence head is not written in that layout.
  `id2label`/`label2id` are in config.json all the same.

Every layout keeps the tokenizer files and the xopt model card (`xopt_card.json`: input prefix,
max length, task, retrieval layer); the sentence-transformers layouts also carry the input
prefix as the "query" prompt (`config_sentence_transformers.json`).

`hf_card` is the other direction: a Hugging Face directory without an xopt manifest opens as a
checkpoint with its head (`open_checkpoint`): `*ForTokenClassification` and
`*ForQuestionAnswering` by their `architectures` and weights, a sentence-transformers directory
with a `Dense` module as a sequence head; `*ForSequenceClassification` is refused in one line
(see above).
"""

from __future__ import annotations

import json
from pathlib import Path

from xopt.errors import XoptError

ARCH_SUFFIX = {"token": "ForTokenClassification", "span": "ForQuestionAnswering"}
HEAD_KEYS = {"token": "classifier", "span": "qa_outputs"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")
DENSE_DIR, POOLING_DIR = "2_Dense", "1_Pooling"
CARD_FILE = "xopt_card.json"
IDENTITY = "torch.nn.modules.linear.Identity"


def hf_card(path: Path) -> tuple[dict, dict | None]:
    """(model card JSON, head weights {name: tensor} or None) of a Hugging Face directory without
    an xopt manifest, read from its config's `architectures`/`id2label`, its weights and its
    sentence-transformers modules (module doc)."""
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    id2label = config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
    card = {"pooling": "mean"}
    xcard = path / CARD_FILE
    if xcard.is_file():            # written by export_hf: prefix, max_length, task, retrieval layer
        card.update({k: v for k, v in json.loads(xcard.read_text()).items() if k in ("input_prefix", "max_length",
                                                                                     "task", "retrieval_layer")})
    st = path / "config_sentence_transformers.json"
    if st.is_file():
        prompt = (json.loads(st.read_text()).get("prompts") or {}).get("query")
        if prompt:
            card["input_prefix"] = prompt
    if arch.endswith("ForSequenceClassification"):
        raise XoptError(f"{path}: {arch} pools the first token through a dense + tanh layer; xopt's sequence head is "
                        "one linear layer on the mean-pooled embedding, a different function, so the head cannot be "
                        "taken as it is. Train an xopt head on the encoder (xopt train --model DIR), or give a "
                        "sentence-transformers directory (mean Pooling + Dense)")
    for kind, suffix in ARCH_SUFFIX.items():
        if arch.endswith(suffix):
            weights = path / "model.safetensors"
            if not weights.is_file():
                raise XoptError(f"{path}: {arch} without model.safetensors (xopt reads safetensors only)")
            with safe_open(str(weights), "pt") as f:
                head = {k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(HEAD_KEYS[kind] + ".")}
            if set(head) != {"weight", "bias"}:
                raise XoptError(f"{path}: {arch} weights lack {HEAD_KEYS[kind]}.weight/.bias (found "
                                f"{sorted(head) or 'none'})")
            return {**card, "head": kind, **({"labels": labels} if kind == "token" else {})}, head
    modules = path / "modules.json"
    if modules.is_file():
        mods = json.loads(modules.read_text())
        pooling = [m for m in mods if m["type"].endswith("Pooling")]
        if pooling:
            pcfg = json.loads((path / pooling[0]["path"] / "config.json").read_text())
            if not pcfg.get("pooling_mode_mean_tokens"):
                raise XoptError(f"{path}: its sentence-transformers Pooling is not mean pooling; xopt pools by the "
                                "mean over the attention mask")
        dense = [m for m in mods if m["type"].endswith("Dense")]
        if len(dense) > 1:
            raise XoptError(f"{path}: {len(dense)} Dense modules; xopt's head is one linear layer")
        if dense:
            d = path / dense[0]["path"]
            dcfg = json.loads((d / "config.json").read_text())
            if dcfg.get("activation_function", IDENTITY) != IDENTITY:
                raise XoptError(f"{path}: its Dense module applies {dcfg['activation_function']}; xopt's head is "
                                "linear (identity activation)")
            with safe_open(str(d / "model.safetensors"), "pt") as f:
                head = {k.removeprefix("linear."): f.get_tensor(k) for k in f.keys()}
            n = dcfg["out_features"]
            labels = labels if len(labels) == n else [f"LABEL_{i}" for i in range(n)]
            return {**card, "head": "sequence", "labels": labels}, head
    return card, None

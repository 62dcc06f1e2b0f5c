"""Tiny random Hugging Face models of each architecture and task class, built from configs and
saved with `save_pretrained` as HF Trainer, jiant and XTREME's scripts save them, with a small
trained tokenizer of the architecture's own conventions (WordPiece with [CLS]/[SEP] for BERT,
BPE with <s>/</s> for RoBERTa, XLM-R and DeBERTa-v2), so a model compiles in seconds."""

from __future__ import annotations

from pathlib import Path

ARCHS = ("bert", "xlm-roberta", "roberta", "deberta-v2")
CLASSES = ("sequence", "token", "span", "none")
XNLI_LABELS = ["contradiction", "entailment", "neutral"]
PANX_LABELS = ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
LABELS = {"sequence": XNLI_LABELS, "token": PANX_LABELS}
AUTO = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification",
        "span": "AutoModelForQuestionAnswering", "none": "AutoModel", "choice": "AutoModelForMultipleChoice"}
CORPUS = ["the cat sat on the mat", "un chat est assis sur le tapis", "der Hund läuft schnell nach Hause",
          "open the file please", "el perro come", "Пароль изменён", "ファイルを開けません", "who wrote the book",
          "Paris is the capital of France", "a man plays a guitar", "nobody is playing"]


def tokenizer(arch: str, out: Path):
    """A PreTrainedTokenizerFast (vocabulary ~300) with the architecture's special tokens and
    pair template, saved into `out`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bert = arch == "bert"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if bert else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]") if bert else models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = (trainers.WordPieceTrainer if bert else trainers.BpeTrainer)(vocab_size=300, special_tokens=specials)
    tok.train_from_iterator(CORPUS * 20, trainer)
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        names = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
        names = dict(unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>", cls_token="<s>",
                     sep_token="</s>", mask_token="<mask>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **names)
    fast.save_pretrained(str(out))
    return fast


def config(arch: str, labels=None, hidden: int = 32, layers: int = 2):
    import transformers as T

    # initializer_range 0.2, not HF's 0.02: at 0.02 attention is near uniform and the first token's
    # state hardly depends on the input (logits move by ~1e-5), so a first-token head could not
    # tell a pair from its concatenation; at 0.2 they move by ~0.1-1
    kw = dict(vocab_size=300, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
              intermediate_size=48, max_position_embeddings=140, initializer_range=0.2)
    if labels:
        kw |= {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    if arch == "bert":
        return T.BertConfig(**kw, pad_token_id=0)
    roberta = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if arch == "xlm-roberta":
        return T.XLMRobertaConfig(**kw, **roberta)
    if arch == "roberta":
        return T.RobertaConfig(**kw, **roberta)
    if arch == "deberta-v2":      # mDeBERTa-v3's attention: relative c2p/p2c, no absolute positions
        return T.DebertaV2Config(**kw, pad_token_id=1, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                 position_biased_input=False, max_relative_positions=-1, type_vocab_size=0)
    raise ValueError(arch)


def save_model(arch: str, kind: str, out: Path, seed: int = 0, labels=None):
    """A random `AutoModelFor<kind>` of `arch` saved with save_pretrained (safetensors) and its
    tokenizer: (model in eval mode, tokenizer)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, AUTO[kind]).from_config(config(arch, labels or LABELS.get(kind))).eval()
    with torch.no_grad():     # HF initialises biases to zero; random ones catch a bias that is dropped
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(out))
    return model, tokenizer(arch, out)


def hf_outputs(model, kind: str, input_ids, attention_mask) -> dict:
    """HF's own forward, under xopt's output names."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(input_ids), attention_mask=torch.as_tensor(attention_mask))
    if kind == "sequence":
        return {"logits": out.logits.numpy()}
    if kind == "token":
        return {"token_logits": out.logits.numpy()}
    if kind == "span":
        return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}
    m = torch.as_tensor(attention_mask).unsqueeze(-1).float()
    return {"sentence_embedding": ((out.last_hidden_state * m).sum(1) / m.sum(1)).numpy()}

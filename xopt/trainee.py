"""The model a training stage trains: `XoptModel`'s encoder with one head per task of the stage,
and which of its weights the stage trains.

A head is Hugging Face's own task head (layout "hf": e.g. XLM-R's dense -> tanh -> out_proj on
<s>, BERT's pooler -> classifier) or xopt's linear head ("linear": on the mean-pooled embedding,
or on every token). Continued MLM uses a token head whose weight is the (frozen) word-embedding
matrix, applied to the masked positions only (a [B, T, 250k] logit tensor would not fit).
"""

from __future__ import annotations

from xopt.tasks.registry import TaskData, family


def key(task: str) -> str:
    """A task's name as a key of the trainee's heads (a ModuleDict key holds no dots)."""
    return task.replace(".", "_")


def head_of(task: TaskData, vocab: int = 0):
    """The head class a task trains (xopt.modeling), with its number of outputs."""
    return family(task.kind).head_for(task, vocab)


def head_chain(model, head, layout: str, labels=None):
    """A fresh head for `model`'s encoder as one module: forward(hidden, embedding) -> scores,
    and `xopt_state()`, its weights under XoptModel's names (`XoptModel.load_head_state`)."""
    from torch import nn

    class Chain(nn.Module):
        def __init__(self, fresh):
            super().__init__()
            self.names, self.reads = fresh.chain, fresh.reads
            self.mods = nn.ModuleList(fresh.head_modules().values())

        def forward(self, hidden, embedding):
            x = embedding if self.reads == "mean" else hidden
            for m in self.mods:
                x = m(x)
            return x

        def xopt_state(self) -> dict:
            return {f"{n}.{k}": v.detach().cpu().contiguous() for n, m in zip(self.names, self.mods)
                    for k, v in m.state_dict().items()}

    return Chain(model.with_head(head, layout=layout, labels=labels))


def make_trainee(model, tasks: dict[str, TaskData], layout: str = "hf"):
    """The encoder of `model` composed with one head per task (`head_chain`, in `layout`):
    forward(task, ids, mask) -> that head's named outputs. `model`'s own head (if any) is unused;
    a head through BERT's pooler trains the encoder's pooler, as HF's task model does."""
    from torch import nn

    enc = model.encoder
    hidden, vocab = enc.config.hidden_size, enc.config.vocab_size

    class Trainee(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.heads = nn.ModuleDict()
            self.head_types = {}
            for name, t in tasks.items():
                head = head_of(t, vocab)
                if family(t.kind).ties_embeddings:
                    lin = nn.Linear(hidden, head.width)
                    lin.weight = enc.embeddings.word_embeddings.weight    # tied, as BERT's MLM decoder
                    self.heads[key(name)] = lin
                else:
                    self.heads[key(name)] = head_chain(model, head, layout, t.labels if head.needs_labels else None)
                self.head_types[name] = head

        def forward(self, task: str, input_ids, attention_mask, mlm_positions=None):
            lin = self.heads[key(task)]
            if mlm_positions is not None:     # hidden states of masked positions only
                hidden_states = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                return lin(hidden_states[mlm_positions])
            head = self.head_types[task]
            hidden, embedding, layer_embedding = self.model.encode(input_ids, attention_mask)
            return head.outputs(embedding, layer_embedding, lin(hidden, embedding))

    return Trainee()


def build_trainee(model, tasks: dict[str, TaskData], layout: str, seed: int, device, heads: dict | None,
                  dropout: float | None):
    """`make_trainee` on `device` with its fresh heads drawn from `seed` (or loaded from `heads`, a
    state dict of the trainee's heads) and every dropout at `dropout` (None: the model's own)."""
    import torch

    torch.manual_seed(seed)
    trainee = make_trainee(model, tasks, layout).to(device)
    if heads is not None:
        trainee.heads.load_state_dict(heads)
    if dropout is not None:      # the encoder's and the heads' (HF's heads have their own dropout)
        for m in trainee.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
    return trainee


def freeze(model, trainee, tasks: dict[str, TaskData], stage) -> None:
    """Mark what `stage` trains: in encoder stages its transformer layers (the top `top_layers`,
    or all) and the heads; in head-only stages the heads alone. The embeddings stay frozen (the
    multilingual vocabulary, and most of the weights), and so does a head's weight tied to them
    (continued MLM). The heads are marked last: a head through BERT's pooler trains the pooler."""
    for p in model.parameters():
        p.requires_grad_(False)
    if stage.train != "head":
        n_layers = model.encoder.config.num_hidden_layers
        first = n_layers - (stage.top_layers or n_layers)
        for pname, p in model.encoder.named_parameters():
            layer = int(pname.split(".")[2]) if pname.startswith("encoder.layer.") else -1
            p.requires_grad_(layer >= first)
    tied = {key(n) for n, t in tasks.items() if family(t.kind).ties_embeddings}
    for n, h in trainee.heads.items():
        for pname, p in h.named_parameters():
            p.requires_grad_(not (n in tied and pname == "weight"))

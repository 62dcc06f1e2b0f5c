"""The unpadded encoder: XoptModel's function with the padding taken out of the batch.

A padded batch [B, T] becomes one packed sequence of its N real tokens (N = mask.sum()) plus
`cu_seqlens` [B+1] (offsets of each sentence in the pack). Every GEMM, GELU and LayerNorm then
runs on [N, H] rows instead of [B*T, H]; attention runs per sentence over its own tokens:
- CUDA, fp16/bf16: `torch.nn.attention.varlen.varlen_attn` (FlashAttention varlen, cu_seqlens);
- elsewhere: `scaled_dot_product_attention` per sentence (a Python loop over the batch; the
  documented CPU path, exact, not fast).
Pooling (mean over each sentence's tokens) is a segment sum over the pack. Per-token outputs
are scattered back to the padded [B, T] layout; padded positions hold 0 (HF's would hold the
head applied to a padding token's hidden state: meaningless either way, callers mask them).

Built from the weights of the HF encoder inside an XoptModel (BERT and XLM-R layouts: same
module names; XLM-R's position ids start after its padding index, as in HF). Linears run in
the module's dtype (cuBLAS via F.linear) or, with `int8=True`, as W8A8: int8 weights per
output channel, int8 activations per token computed on the fly, int8 GEMM with the
dequantisation, bias and GELU fused in its epilogue (`xopt.kernels.int8_linear`).
"""

from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F

from xopt import kernels as K
from xopt.errors import XoptError


class Linear:
    """y = x W^T + b, fp (F.linear) or W8A8 int8; bias and GELU applied where the caller asks."""

    def __init__(self, lin: torch.nn.Linear, int8: bool, dtype, device, act_amax: float | None = None):
        self.bias = lin.bias.detach().to(device=device, dtype=dtype)
        self.int8 = int8
        # static activation scale (from calibration) or None: per-token scales computed per call
        self.act_scale = None if act_amax is None else torch.tensor([act_amax / 127.0], device=device)
        w = lin.weight.detach().to(device)
        if int8:
            self.w_q, self.w_scale = K.quantize_weight(w)
            self.bias32 = lin.bias.detach().to(device=device, dtype=torch.float32)
        else:
            self.weight = w.to(dtype)

    def __call__(self, x, bias: bool = True, gelu: bool = False):
        if self.int8:
            q, s = K.quantize_rows(x) if self.act_scale is None else K.quantize_static(x, self.act_scale)
            return K.int8_linear(q, s, self.w_q, self.w_scale, self.bias32 if bias else None, x.dtype, gelu=gelu)
        if gelu:
            return K.bias_gelu(F.linear(x, self.weight), self.bias)
        return F.linear(x, self.weight, self.bias if bias else None)


class UnpaddedEncoder(torch.nn.Module):
    """Runs an XoptModel (HF BERT/XLM-R encoder + mean pooling + head) on packed tokens."""

    def __init__(self, xopt_model, dtype=torch.float32, device="cpu", int8: bool = False, keep_fp: str = "",
                 act_amax: dict[str, float] | None = None):
        """`act_amax`: static int8 activations, clip range of each Linear's input by the
        XoptModel's module name (xopt.calibration's profile); None = dynamic per-token scales."""
        super().__init__()
        enc = xopt_model.encoder
        cfg = enc.config
        if cfg.model_type not in ("bert", "roberta", "xlm-roberta"):
            raise XoptError(f"unpadded: model type {cfg.model_type!r} not supported (BERT, RoBERTa and XLM-R encoders: "
                            "their absolute-position attention is what these kernels compute)")
        if cfg.hidden_act != "gelu":
            raise XoptError(f"unpadded: activation {cfg.hidden_act!r} not supported (only BERT/XLM-R's exact 'gelu')")
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise XoptError("unpadded: only absolute position embeddings are supported")
        self.dtype, self.device = dtype, torch.device(device)
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        # XLM-R/RoBERTa number positions from padding_idx + 1; BERT from 0
        self.pos_offset = cfg.pad_token_id + 1 if cfg.model_type in ("xlm-roberta", "roberta") else 0
        keep = re.compile(keep_fp) if keep_fp else None
        emb = enc.embeddings
        t = lambda p: p.detach().to(device=device, dtype=dtype)   # noqa: E731
        self.word, self.pos = t(emb.word_embeddings.weight), t(emb.position_embeddings.weight)
        self.type0 = t(emb.token_type_embeddings.weight[0])
        self.emb_ln = (t(emb.LayerNorm.weight), t(emb.LayerNorm.bias))
        self.quantized: list[str] = []
        self.linears: dict[str, Linear] = {}

        def lin(name, m, sources=None):
            q = int8 and not (keep and keep.search(name))
            if q:
                self.quantized.append(name)
            amax = None
            if q and act_amax is not None:
                names = ["encoder." + s for s in (sources or [name])]     # XoptModel names: encoder.<HF name>
                missing = [n for n in names if n not in act_amax]
                if missing:
                    raise XoptError(f"calibration profile has no range for {missing[0]}: recalibrate this checkpoint")
                amax = max(act_amax[n] for n in names)
            self.linears[name] = Linear(m, q, dtype, device, amax)
            return self.linears[name]

        self.layers = []
        for i, layer in enumerate(enc.encoder.layer):
            a = layer.attention
            qkv = torch.nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)   # one GEMM for Q, K and V
            with torch.no_grad():
                qkv.weight.copy_(torch.cat([a.self.query.weight, a.self.key.weight, a.self.value.weight]))
                qkv.bias.copy_(torch.cat([a.self.query.bias, a.self.key.bias, a.self.value.bias]))
            p = f"encoder.layer.{i}."
            self.layers.append({
                "qkv": lin(p + "attention.self.qkv", qkv, [p + "attention.self." + x for x in ("query", "key", "value")]),
                "attn_out": lin(p + "attention.output.dense", a.output.dense),
                "ln1": (t(a.output.LayerNorm.weight), t(a.output.LayerNorm.bias)),
                "ffn_in": lin(p + "intermediate.dense", layer.intermediate.dense),
                "ffn_out": lin(p + "output.dense", layer.output.dense),
                "ln2": (t(layer.output.LayerNorm.weight), t(layer.output.LayerNorm.bias)),
            })
        self.retrieval_layer = xopt_model.layer
        self.head_type = xopt_model.head_type     # xopt.modeling head class: what the head reads, what comes back
        # the head: a copy of the XoptModel's head chain in this dtype (HF's own modules: a
        # first-token head reads token 0 of a [B, 1, H] batch of each sequence's first token)
        self.head, self.head_reads = None, xopt_model.reads
        if xopt_model.has_head:
            self.head = torch.nn.ModuleList(copy.deepcopy(m) for m in xopt_model.head_modules().values())
            self.head = self.head.to(device=device, dtype=dtype).eval()

    def int8_linears(self) -> tuple[list[str], list[str]]:
        """(names of the Linears holding int8 weights, names of the others), from what is in
        place rather than what was asked for; XoptModel module names (`encoder.<HF name>`, the
        fused QKV as `...attention.self.qkv`), as the other recipes' `kept` lists."""
        held = {"encoder." + n: getattr(m, "w_q", None) for n, m in self.linears.items()}
        q = [n for n, w in held.items() if w is not None and w.dtype == torch.int8]
        return q, [n for n in held if n not in q]

    def attention(self, qkv, cu, lengths, max_len: int):
        n, three_h = qkv.shape
        h = three_h // 3
        q, k, v = qkv.view(n, 3, self.heads, h // self.heads).unbind(1)      # [N, heads, d] each
        if qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16):
            from torch.nn.attention.varlen import varlen_attn

            return varlen_attn(q, k, v, cu, cu, max_len, max_len).reshape(n, h)
        out = torch.empty_like(q)
        starts = cu.tolist()
        for b in range(len(starts) - 1):
            s, e = starts[b], starts[b + 1]
            if e > s:
                out[s:e] = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                                          v[s:e].transpose(0, 1)).transpose(0, 1)
        return out.reshape(n, h)

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        mask = attention_mask.bool()
        flat = mask.reshape(-1).nonzero().squeeze(1)                          # packed -> padded index
        lengths = mask.sum(1)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        max_len = int(lengths.max()) if b else 0
        if self.pos_offset:
            pos = (mask.long().cumsum(1) * mask + self.pos_offset - 1).reshape(-1)[flat]
        else:
            pos = torch.arange(t, device=input_ids.device).repeat(b)[flat]
        x = self.word[input_ids.reshape(-1)[flat]] + self.pos[pos]
        x = K.add_layernorm(x, self.type0, None, *self.emb_ln, self.eps)
        seg = torch.repeat_interleave(torch.arange(b, device=x.device), lengths)
        count = lengths.clamp(min=1).to(torch.float32)[:, None]

        def pool(hid):
            return (torch.zeros((b, hid.shape[1]), dtype=torch.float32, device=hid.device)
                    .index_add_(0, seg, hid.float()) / count).to(hid.dtype)

        layer_emb = pool(x) if self.retrieval_layer == 0 else None
        for i, L in enumerate(self.layers, start=1):
            ctx = self.attention(L["qkv"](x), cu, lengths, max_len)
            x = K.add_layernorm(L["attn_out"](ctx, bias=False), L["attn_out"].bias, x, *L["ln1"], self.eps)
            inner = L["ffn_in"](x, gelu=True)
            x = K.add_layernorm(L["ffn_out"](inner, bias=False), L["ffn_out"].bias, x, *L["ln2"], self.eps)
            if i == self.retrieval_layer:
                layer_emb = pool(x)
        emb = pool(x)
        scores = None
        if self.head is not None and self.head_type.on_tokens:   # per-token scores, scattered back to [B, T]
            packed = self.run_head(x)
            scores = packed.new_zeros((b * t, packed.shape[1])).index_copy_(0, flat, packed).view(b, t, -1)
        elif self.head is not None and self.head_reads == "mean":
            scores = self.run_head(emb)
        elif self.head is not None:      # HF's first-token heads: each sequence's first token, as [B, 1, H]
            scores = self.run_head(x[cu[:-1].long().clamp(max=max(len(x) - 1, 0))].unsqueeze(1))
        return self.head_type.outputs(emb, layer_emb, scores)

    def run_head(self, x):
        for m in self.head:
            x = m(x)
        return x

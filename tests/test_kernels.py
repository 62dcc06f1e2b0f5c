"""xopt.kernels: the Triton kernels (Triton's CPU interpreter here, the GPU under `gpu`) and the
unpadded encoder, each against a PyTorch reference: ragged lengths, length 1, the longest
length, a batch with no padding at all, and an empty row."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from xopt import kernels as K

HAVE_TRITON = importlib.util.find_spec("triton") is not None
if HAVE_TRITON:
    # imported here, before any test sets TRITON_INTERPRET, as torch.compile would in a real
    # session: the interpreted kernels must work with triton's library jitted for the GPU
    import triton  # noqa: F401
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install -e '.[test]')")
HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU (torch sees none)")


@pytest.fixture
def interp(monkeypatch):
    """Route CPU tensors through Triton's interpreter (the kernels, not the PyTorch paths)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.which(torch.empty(0)) == "interpret"


def sqnr_db(ref, got):
    ref, got = ref.double(), got.double()
    return float(10 * torch.log10((ref ** 2).sum() / ((ref - got) ** 2).sum().clamp(min=1e-30)))


def _torch_path(fn, *args, **kw):
    """The same op through its PyTorch path (TRITON_INTERPRET unset for the call)."""
    import os

    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        assert K.which(args[0]) == "torch"
        return fn(*args, **kw)
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old


# ----------------------------------------------------------------------------- kernels

@needs_triton
@pytest.mark.parametrize("shape", [(1, 8), (7, 40), (3, 5, 24)])
def test_bias_gelu(interp, shape):
    x, b = torch.randn(shape), torch.randn(shape[-1])
    got = K.bias_gelu(x, b)
    torch.testing.assert_close(got, F.gelu(x + b), rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("bias,residual", [(True, True), (False, True), (True, False)])
def test_add_layernorm(interp, bias, residual):
    n = 48                                        # not a power of two: masked columns
    x, r = torch.randn(6, n) * 3, torch.randn(6, n)
    b, w, lb = torch.randn(n), torch.rand(n) + 0.5, torch.randn(n)
    got = K.add_layernorm(x, b if bias else None, r if residual else None, w, lb, 1e-12)
    ref = F.layer_norm(x + (b if bias else 0) + (r if residual else 0), (n,), w, lb, 1e-12)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@needs_triton
def test_quantize_rows_matches_torch_path(interp):
    x = torch.randn(9, 40) * torch.logspace(-2, 2, 9)[:, None]
    x[4] = 0                                      # an all-zero row must not divide by zero
    q, s = K.quantize_rows(x)
    q_ref, s_ref = _torch_path(K.quantize_rows, x)
    assert q.dtype == torch.int8 and s.shape == (9,)
    torch.testing.assert_close(s, s_ref)
    assert (q.int() - q_ref.int()).abs().max() <= 1 and (q == q_ref).float().mean() > 0.99
    assert q.abs().max() == 127 and (q[4] == 0).all()
    assert sqnr_db(x, q.float() * s[:, None]) > 35


@needs_triton
def test_quantize_static_matches_torch_path(interp):
    x = torch.randn(5, 24) * 4
    scale = torch.tensor([3.0 / 127])                 # clips everything beyond |3|
    q, s = K.quantize_static(x, scale)
    q_ref, _ = _torch_path(K.quantize_static, x, scale)
    assert s.shape == (5,) and (s == scale).all()
    assert (q.int() - q_ref.int()).abs().max() <= 1 and q.abs().max() == 127
    inside = x.abs() < 3
    assert ((q.float() * scale - x)[inside].abs() <= scale / 2 + 1e-6).all()


@needs_triton
@pytest.mark.parametrize("m,bias,gelu", [(1, True, False), (17, False, False), (33, True, True)])
def test_int8_gemm_epilogue(interp, m, bias, gelu):
    k, n = 40, 24                                 # neither a multiple of the 16x16x16 tiles
    a, w = torch.randn(m, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    aq, a_s = _torch_path(K.quantize_rows, a)
    wq, w_s = K.quantize_weight(w)
    got = K.int8_linear(aq, a_s, wq, w_s, b, torch.float32, gelu=gelu)
    # exact reference: int32 products, then the same epilogue
    ref = (aq.int() @ wq.int().t()).double() * a_s.double()[:, None] * w_s.double()[None, :]
    if bias:
        ref = ref + b.double()
    if gelu:
        ref = F.gelu(ref)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    fp = F.linear(a, w, b)
    assert sqnr_db(F.gelu(fp) if gelu else fp, got) > 25      # W8A8 vs fp32


# ----------------------------------------------------------------------------- encoder

LENGTHS = {"ragged": [9, 1, 5, 12], "full": [12, 12, 12], "single": [1], "with-empty-row": [7, 0, 3]}


def _tiny(model_type="bert", head="sequence", layers=2):
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    from xopt.modeling import ModelCard, build_module

    torch.manual_seed(0)
    cfg_cls, model_cls = {"bert": (BertConfig, BertModel), "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel)}[
        model_type]
    cfg = cfg_cls(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=40, pad_token_id=1, attn_implementation="sdpa")
    card = ModelCard(labels=["a", "b", "c"], head=head) if head != "span" else ModelCard(head="span")
    return build_module(model_cls(cfg, add_pooling_layer=False).eval(), card).eval()


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = max(max(lengths), 1)
    ids = torch.randint(3, 120, (len(lengths), t), generator=g)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 1), mask


def _compare(ref, got, mask, min_db):
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        if r.dim() == 3 or r.shape == mask.shape:            # per-token: padded positions are free
            m = mask.bool()
            r, g = r[m], g[m]
        else:     # an empty row has no first token: HF's first-token head reads a masked-out pad there
            rows = mask.sum(1) > 0
            r, g = r[rows], g[rows]
        assert sqnr_db(r, g) >= min_db, f"SQNR {sqnr_db(r, g):.1f} dB"


@pytest.mark.parametrize("case,model_type,head", [(c, "bert", "sequence") for c in LENGTHS] + [
    ("ragged", "xlm-roberta", "token"), ("with-empty-row", "xlm-roberta", "span")])
def test_unpadded_encoder_torch_path_matches_hf(case, model_type, head):
    """The CPU path (what `unpadded` runs on hosts without CUDA) computes XoptModel exactly."""
    from xopt.kernels.encoder import UnpaddedEncoder

    model = _tiny(model_type, head)
    ids, mask = _batch(LENGTHS[case])
    with torch.inference_mode():
        ref = model(ids, mask)
        got = UnpaddedEncoder(model)(ids, mask)
        q = UnpaddedEncoder(model, int8=True)(ids, mask)
    _compare(ref, got, mask, 90)       # fp32 vs fp32: summation order only
    _compare(ref, q, mask, 30)         # W8A8, every Linear quantised


@needs_triton
@pytest.mark.parametrize("case", ["ragged", "full"])
def test_unpadded_encoder_triton_interpreter(interp, case):
    """The same encoder through the Triton kernels (interpreted, one layer to keep it quick):
    fp32 and W8A8; "ragged" has length 1, the longest length and padding in one batch."""
    from xopt.kernels.encoder import UnpaddedEncoder

    model = _tiny(layers=1)
    ids, mask = _batch(LENGTHS[case])
    with torch.inference_mode():
        ref = model(ids, mask)
        got = UnpaddedEncoder(model)(ids, mask)
        q = UnpaddedEncoder(model, int8=True)(ids, mask)
        q_torch = _torch_path(UnpaddedEncoder(model, int8=True), ids, mask)
        # static scales: each Linear input's max |x| on this very batch (a stand-in profile)
        amax = {}
        hooks = [m.register_forward_pre_hook(lambda m, a, n=n: amax.__setitem__(n, float(a[0].abs().max())))
                 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        model(ids, mask)
        for h in hooks:
            h.remove()
        qs = UnpaddedEncoder(model, int8=True, act_amax=amax)(ids, mask)
        qs_torch = _torch_path(UnpaddedEncoder(model, int8=True, act_amax=amax), ids, mask)
    _compare(ref, got, mask, 90)
    _compare(ref, q, mask, 30)
    _compare(q_torch, q, mask, 60)     # kernel vs PyTorch path: same int8 function
    _compare(ref, qs, mask, 25)
    _compare(qs_torch, qs, mask, 60)


@pytest.mark.parametrize("bad", ["gelu_new", "relative_key"])
def test_unpadded_refuses_what_it_does_not_implement(bad):
    from xopt.errors import XoptError
    from xopt.kernels.encoder import UnpaddedEncoder

    model = _tiny()
    if bad == "gelu_new":
        model.encoder.config.hidden_act = bad
    else:
        model.encoder.config.position_embedding_type = bad
    with pytest.raises(XoptError, match="unpadded: "):
        UnpaddedEncoder(model)


# ----------------------------------------------------------------------------- compiled for a GPU, without one

IMMA = {80: r"mma\.sync\.aligned\.m16n8k32\S*\.s32\.s8\.s8\.s32",      # Ampere int8 tensor cores
        90: r"wgmma\.mma_async\S*\.s32\.s8\.s8"}                       # Hopper warpgroup int8 MMA


@needs_triton
@pytest.mark.parametrize("arch,dtype", [(80, "fp16"), (90, "fp16"), (90, "bf16")])
def test_kernels_compile_for_the_gpu_without_spills(arch, dtype):
    """Every kernel, with the launch configuration the wrappers pick for XLM-R-base shapes
    (4,096 packed tokens, 768/3072 wide), compiles for A100/H100 on this GPU-less host; the int8
    GEMM lowers to int8 tensor-core MMA with a software pipeline (cp.async), nothing spills to
    local memory, shared memory fits the device, and the row kernels move 128-bit vectors."""
    import re

    from xopt.kernels import triton_ops

    got = triton_ops.compile_for_gpu(arch, dtype)
    assert set(got) == {"bias_gelu", "add_layernorm", "quantize_rows", "quantize_static",
                        "int8_gemm[BM=64]", "int8_gemm[BM=128]"}
    for name, r in got.items():
        assert r["stack"] == 0, f"{name} spills {r['stack']} B to local memory on sm_{arch}"
        assert r["shared"] <= triton_ops.SMEM_LIMIT[arch], name
        if name.startswith("int8_gemm"):
            assert re.search(IMMA[arch], r["ptx"]), f"{name}: no int8 tensor-core MMA on sm_{arch}"
            assert "cp.async" in r["ptx"], f"{name}: loads are not pipelined"
        else:
            assert "ld.global.v4" in r["ptx"], f"{name}: no 128-bit loads"


# ----------------------------------------------------------------------------- on the GPU

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 200])
def test_kernels_on_gpu(m):
    x, b = torch.randn(m, 3072, device="cuda", dtype=torch.float16), torch.randn(3072, device="cuda",
                                                                                 dtype=torch.float16)
    assert K.which(x) == "triton"
    torch.testing.assert_close(K.bias_gelu(x, b), F.gelu(x.float() + b.float()).half(), rtol=2e-3, atol=2e-3)
    r, w, lb = torch.randn_like(x), torch.rand(3072, device="cuda").half() + 0.5, torch.randn(3072, device="cuda").half()
    torch.testing.assert_close(K.add_layernorm(x, b, r, w, lb, 1e-5),
                               F.layer_norm((x + b + r).float(), (3072,), w.float(), lb.float(), 1e-5).half(),
                               rtol=1e-2, atol=1e-2)
    wt = torch.randn(768, 3072, device="cuda")
    aq, a_s = K.quantize_rows(x)
    wq, w_s = K.quantize_weight(wt)
    got = K.int8_linear(aq, a_s, wq, w_s, None, torch.float16)
    ref = (aq.double() @ wq.double().t()) * a_s.double()[:, None] * w_s.double()[None, :]
    torch.testing.assert_close(got.double(), ref, rtol=2e-3, atol=2e-2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", ["ragged", "full"])
def test_unpadded_encoder_on_gpu(case):
    from xopt.kernels.encoder import UnpaddedEncoder

    model = _tiny()
    ids, mask = _batch(LENGTHS[case])
    with torch.inference_mode():
        ref = model(ids, mask)
        got = UnpaddedEncoder(model, dtype=torch.float16, device="cuda")(ids.cuda(), mask.cuda())
        q = UnpaddedEncoder(model, dtype=torch.float16, device="cuda", int8=True)(ids.cuda(), mask.cuda())
    for r, g, gq in zip(ref, got, q):
        if r.dim() == 2 and r.shape != mask.shape:
            cos = F.cosine_similarity(r, g.float().cpu(), dim=-1)
            assert cos.min() >= 0.99
        assert sqnr_db(r, gq.float().cpu()) >= 20


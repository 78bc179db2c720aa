"""The csrc/ CPU kernels against their plain torch references (megatron_lite/ops/fused.py), and their use
in the model: attention paths, bias-GeLU, fallbacks, activation checkpointing."""

import pytest
import torch

from megatron_lite.config import ModelConfig
from megatron_lite.errors import _warned
from megatron_lite.model import attention
from megatron_lite.ops import fused
from megatron_lite.model.gpt import GPTModel
from tests.conftest import tiny_model_config

KERNEL, WHY = fused.kernel_for("cpu", torch.float32)
# bf16 results are rounded to 8 bits of mantissa: one rounding step apart is agreement.
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2)}


def test_cpu_kernels_are_built_by_the_install():
    assert KERNEL is not None, WHY


def _check_grads(kernel_fn, reference_fn, inputs, dtype):
    """Forward and backward of kernel_fn and reference_fn agree on the same inputs and output gradient."""
    ours = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ref = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    y, r = kernel_fn(*ours), reference_fn(*ref)
    assert y.dtype == r.dtype == dtype and y.shape == r.shape
    torch.testing.assert_close(y, r, **TOL[dtype])
    grad = torch.randn_like(r)
    y.backward(grad)
    r.backward(grad)
    for a, b in zip(ours, ref):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 64, 64), (1, 3, 37, 37), (2, 2, 5, 19), (1, 1, 1, 700)])
def test_causal_softmax_matches_reference(shape, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 4).to(dtype)
    _check_grads(lambda t: fused.causal_softmax(t, 0.3, KERNEL), lambda t: fused.causal_softmax_reference(t, 0.3),
                 [x], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_batch", [1, 2])
def test_masked_softmax_matches_reference_including_fully_masked_rows(dtype, mask_batch):
    torch.manual_seed(1)
    x = (torch.randn(2, 3, 17, 45) * 4).to(dtype)
    mask = torch.rand(mask_batch, 1, 17, 45) < 0.4
    mask[0, 0, 3] = True  # a row with nothing to attend to: zeros, not NaN
    _check_grads(lambda t: fused.masked_softmax(t, mask, 0.5, KERNEL),
                 lambda t: fused.masked_softmax_reference(t, mask, 0.5), [x], dtype)
    out = fused.masked_softmax(x, mask, 0.5, KERNEL)
    assert torch.equal(out[0, :, 3], torch.zeros_like(out[0, :, 3]))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 33, 128), (3, 7, 96), (1, 1000)])
def test_bias_gelu_matches_reference(shape, dtype):
    torch.manual_seed(2)
    x, bias = (torch.randn(shape) * 3).to(dtype), torch.randn(shape[-1])
    tol = dict(TOL[dtype], atol=2e-5) if dtype == torch.float32 else TOL[dtype]  # tanh near its saturation
    ours = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    ref = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    y, r = fused.bias_gelu(*ours, KERNEL), fused.bias_gelu_reference(*ref)
    torch.testing.assert_close(y, r, **tol)
    grad = torch.randn_like(r)
    y.backward(grad)
    r.backward(grad)
    torch.testing.assert_close(ours[0].grad, ref[0].grad, **tol)
    assert ours[1].grad.dtype == torch.float32  # the fp32 master bias gets an fp32 gradient
    torch.testing.assert_close(ours[1].grad, ref[1].grad, atol=1e-4 if dtype == torch.float32 else 0.3, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 1000), (7, 8064), (1, 3)])
def test_softmax_cross_entropy_matches_reference(shape, dtype):
    torch.manual_seed(4)
    logits, labels = (torch.randn(shape) * 5).to(dtype), torch.randint(0, shape[1], shape[:1])
    ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = fused.softmax_cross_entropy(ours, labels, KERNEL)
    ref_loss = fused.softmax_cross_entropy_reference(ref, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)  # fp32 inside for either dtype
    grad = torch.rand(shape[0])
    loss.backward(grad)
    ref_loss.backward(grad)
    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad, ref.grad, **TOL[dtype])


def test_fused_loss_in_the_trainer_path_matches_the_plain_loss():
    from megatron_lite.parallel.cross_entropy import vocab_parallel_cross_entropy

    logits, labels = torch.randn(40, 300, dtype=torch.bfloat16), torch.randint(0, 300, (40,))
    torch.testing.assert_close(vocab_parallel_cross_entropy(logits, labels, fused_kernel=True),
                               vocab_parallel_cross_entropy(logits, labels), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 300\)"):
        fused.softmax_cross_entropy(logits, torch.full((40,), 300), KERNEL)


def test_bias_gelu_is_as_accurate_as_torch_in_fp32():
    """Both against float64: our tanh via exp may not lose more than a few ulps over torch's."""
    torch.manual_seed(3)
    x, bias = torch.randn(64, 512) * 4, torch.randn(512)
    exact = fused.bias_gelu_reference(x.double(), bias.double())
    ours_err = (fused.bias_gelu(x, bias, KERNEL).double() - exact).abs().max().item()
    torch_err = (fused.bias_gelu_reference(x, bias).double() - exact).abs().max().item()
    assert ours_err <= 4 * torch_err + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, n, out, bias", [(1, 256, 768, True), (3, 37, 19, False), (8, 64, 130, True),
                                                (8, 256, 8192, False), (5, 1, 3, True)])
def test_decode_linear_matches_torch_linear(rows, n, out, bias, dtype):
    torch.manual_seed(0)
    x, w = torch.randn(rows, 1, n).to(dtype), torch.randn(out, n).to(dtype)
    b = torch.randn(out).to(dtype) if bias else None
    y = KERNEL.decode_linear(x, w, b)
    assert y.shape == (rows, 1, out) and y.dtype == dtype
    # Against fp32 arithmetic on the same values: the kernel sums in fp32 in its own order, then rounds once.
    exact = fused.decode_linear_reference(x.float(), w.float(), None if b is None else b.float())
    tol = dict(atol=1e-4, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=8e-3)
    torch.testing.assert_close(y.float(), exact, **tol)
    with pytest.raises(RuntimeError, match="at most 8 rows"):
        KERNEL.decode_linear(torch.randn(9, n).to(dtype), w)


def test_kernels_reject_bad_shapes_with_a_message():
    with pytest.raises(RuntimeError, match="mask must be"):
        fused.masked_softmax(torch.randn(2, 2, 4, 4), torch.zeros(2, 1, 4, 5, dtype=torch.bool), 1.0, KERNEL)
    with pytest.raises(RuntimeError, match="bias must be"):
        fused.bias_gelu(torch.randn(3, 8), torch.randn(7), KERNEL)
    with pytest.raises(RuntimeError, match="weight takes 8"):
        KERNEL.decode_linear(torch.randn(1, 7), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="both be float32 or bfloat16"):
        KERNEL.decode_linear(torch.randn(1, 8), torch.randn(4, 8, dtype=torch.bfloat16))


def test_unsupported_dtype_falls_back_with_one_warning(capsys):
    _warned.clear()
    assert fused.use_kernel("bias-gelu-fusion", "cpu", torch.float16) is None
    assert fused.use_kernel("bias-gelu-fusion", "cpu", torch.float16) is None
    err = capsys.readouterr().err
    assert err.count("warning: bias-gelu-fusion: the CPU kernels do not take torch.float16") == 1


def test_auto_attention_picks_the_measured_faster_path():
    core = attention.attention_core
    assert core("auto", False, False, "cpu", torch.bfloat16) is attention.sdpa_attention  # fusion not asked for
    assert core("auto", True, False, "cpu", torch.float32) is attention.sdpa_attention  # SDPA faster in fp32
    assert core("auto", True, False, "cuda", torch.bfloat16) is attention.sdpa_attention  # flash
    assert core("auto", True, False, "cpu", torch.bfloat16) not in (attention.sdpa_attention,
                                                                    attention.reference_attention)
    assert core("reference", True, True, "cpu", torch.float32) is attention.reference_attention


def small_cfg(**overrides) -> ModelConfig:
    cfg = tiny_model_config(num_layers=3, hidden_size=64, num_attention_heads=4, seq_length=32,
                      max_position_embeddings=64, rotary_pct=0.5, padded_vocab_size=256)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _loss_and_grads(cfg, ids, dtype=None):
    torch.manual_seed(0)
    model = GPTModel(cfg).train()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_fused_model_matches_the_reference_model(dtype):
    """Fused attention + fused bias-GeLU against the reference attention + reference tanh GeLU."""
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    fast = _loss_and_grads(small_cfg(attention_impl="fused", bias_gelu_fusion=True), ids, dtype)
    plain = _loss_and_grads(small_cfg(attention_impl="reference", bias_gelu_fusion=True), ids, dtype)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype is None else dict(atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(fast[0], plain[0], **tol)
    for name, grad in fast[1].items():
        torch.testing.assert_close(grad, plain[1][name], **tol, msg=name)


def test_bias_gelu_fusion_falls_back_to_the_same_math(monkeypatch):
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    fast = _loss_and_grads(small_cfg(bias_gelu_fusion=True), ids)
    monkeypatch.setattr(fused, "kernel_for", lambda device, dtype: (None, "disabled by the test"))
    plain = _loss_and_grads(small_cfg(bias_gelu_fusion=True), ids)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=1e-5)


def test_fused_attention_with_cached_keys_matches_reference():
    """Decoding after a prompt exercises the masked kernel (queries after cached keys)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 16), torch.randn(2, 4, 12, 16), torch.randn(2, 4, 12, 16)
    core = attention.attention_core("fused", False, False, "cpu", torch.float32)
    torch.testing.assert_close(core(q, k, v, 0.0), attention.reference_attention(q, k, v, 0.0),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_checkpoint", [1, 2])
def test_activation_checkpointing_gives_the_same_gradients(per_checkpoint):
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(2))
    plain = _loss_and_grads(small_cfg(), ids)
    ckpt = _loss_and_grads(small_cfg(checkpoint_activations=True, checkpoint_num_layers=per_checkpoint), ids)
    torch.testing.assert_close(ckpt[0], plain[0], atol=0, rtol=0)
    for name, grad in ckpt[1].items():
        torch.testing.assert_close(grad, plain[1][name], atol=1e-6, rtol=1e-5, msg=name)

"""The CUDA kernels against their references, fp32 / fp16 / bf16 (skipped without a GPU)."""

import pytest
import torch

from megatron_lite.ops import fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def kernel(dtype):
    module, why = fused.kernel_for("cuda", dtype)
    assert module is not None, why
    return module


def _agree(fn, ref, inputs, dtype):
    ours = [t.clone().requires_grad_() for t in inputs]
    theirs = [t.clone().requires_grad_() for t in inputs]
    y, r = fn(*ours), ref(*theirs)
    torch.testing.assert_close(y, r, **TOL[dtype])
    grad = torch.randn_like(r)
    y.backward(grad)
    r.backward(grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
# Key lengths below 32, above 32 and above 256 (one block of 256 threads, 8 warps, reduces each row).
@pytest.mark.parametrize("shape", [(2, 4, 128, 128), (1, 3, 37, 37), (2, 2, 5, 19), (1, 2, 300, 300),
                                   (1, 16, 1024, 1024)])
def test_causal_softmax_cuda(shape, dtype):
    x = (torch.randn(shape, device="cuda") * 4).to(dtype)
    _agree(lambda t: fused.causal_softmax(t, 0.3, kernel(dtype)), lambda t: fused.causal_softmax_reference(t, 0.3),
           [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_batch", [1, 2])
def test_masked_softmax_cuda(dtype, mask_batch):
    x = (torch.randn(2, 3, 17, 300, device="cuda") * 4).to(dtype)
    mask = torch.rand(mask_batch, 1, 17, 300, device="cuda") < 0.4
    mask[0, 0, 3] = True
    _agree(lambda t: fused.masked_softmax(t, mask, 0.5, kernel(dtype)),
           lambda t: fused.masked_softmax_reference(t, mask, 0.5), [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 33, 128), (8, 512, 4096), (1, 1000)])
def test_bias_gelu_cuda(shape, dtype):
    x, bias = (torch.randn(shape, device="cuda") * 3).to(dtype), torch.randn(shape[-1], device="cuda")
    ours = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    ref = [x.clone().requires_grad_(), bias.clone().requires_grad_()]
    y, r = fused.bias_gelu(*ours, kernel(dtype)), fused.bias_gelu_reference(*ref)
    torch.testing.assert_close(y, r, **TOL[dtype])
    grad = torch.randn_like(r)
    y.backward(grad)
    r.backward(grad)
    torch.testing.assert_close(ours[0].grad, ref[0].grad, **TOL[dtype])
    rows = x.numel() // shape[-1]
    torch.testing.assert_close(ours[1].grad, ref[1].grad, atol=TOL[dtype]["atol"] * rows ** 0.5, rtol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 19), (33, 300), (16, 50304)])
def test_softmax_cross_entropy_cuda(shape, dtype):
    logits = (torch.randn(shape, device="cuda") * 3).to(dtype)
    labels = torch.randint(0, shape[1], (shape[0],), device="cuda")
    ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = fused.softmax_cross_entropy(ours, labels, kernel(dtype))
    ref_loss = fused.softmax_cross_entropy_reference(ref, labels)
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-4)  # both in fp32 from the same 16-bit logits
    grad = torch.randn_like(ref_loss)
    loss.backward(grad)
    ref_loss.backward(grad)
    torch.testing.assert_close(ours.grad, ref.grad, **TOL[dtype])


def test_cross_entropy_kernel_gives_nan_for_a_label_out_of_range_without_a_host_sync():
    """The range check is in the kernel (a host-side min/max would sync every micro step)."""
    logits, labels = torch.randn(4, 300, device="cuda"), torch.tensor([0, 299, 300, -1], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        loss = fused.softmax_cross_entropy(logits, labels, kernel(torch.float32))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss[:2].isfinite().all() and loss[2:].isnan().all()

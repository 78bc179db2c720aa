"""The fused kernels of csrc/ as autograd functions, and the plain torch references they are tested against.

The kernels are built by setup.py at install time (megatron_lite._fused_cpu always, _fused_cuda with a CUDA
torch); nothing is compiled here. When a kernel cannot serve a device or dtype, `kernel_for` says why and the
model uses the reference instead, with one warning.
"""

import importlib

import torch
import torch.nn.functional as F

from megatron_lite.errors import warn_once


def _import(name: str):
    """(module or None, why it is missing)."""
    try:
        return importlib.import_module(f"megatron_lite.{name}"), ""
    except ImportError as e:
        return None, str(e)


_CPU, _CPU_MISSING = _import("_fused_cpu")
_CUDA, _CUDA_MISSING = _import("_fused_cuda")
_DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.float16, torch.bfloat16)}


def kernel_for(device: torch.device, dtype: torch.dtype):
    """(kernel module, "") when a fused kernel serves this device and dtype, else (None, the reason)."""
    device = torch.device(device)
    module, missing = (_CPU, _CPU_MISSING) if device.type == "cpu" else (_CUDA, _CUDA_MISSING)
    if device.type not in _DTYPES:
        return None, f"no fused kernels for {device.type} devices"
    if module is None:
        return None, (f"the {device.type.upper()} kernels are not built ({missing}); "
                      "reinstall with `pip install --no-build-isolation -e .`")
    if dtype not in _DTYPES[device.type]:
        return None, f"the {device.type.upper()} kernels do not take {dtype}"
    return module, ""


def use_kernel(key: str, device, dtype: torch.dtype):
    """The kernel module for config key `key`, or None after warning once why the torch path is used instead."""
    module, why = kernel_for(device, dtype)
    if module is None:
        warn_once(f"{key}: {why}; using the plain torch path")
    return module


def _call(module, name: str, device: torch.device, *args):
    """Run a kernel; CUDA kernels also take the current stream of the tensors' device."""
    if device.type != "cuda":
        return getattr(module, name)(*args)
    with torch.cuda.device(device):
        return getattr(module, name)(*args, torch.cuda.current_stream(device).cuda_stream)


# ---- references: the definitions the kernels must match ----

def causal_softmax_reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * x) over the last dim of [..., sq, sk]; query i sees keys <= i + sk - sq (fp32 inside)."""
    sq, sk = x.shape[-2:]
    visible = torch.ones(sq, sk, dtype=torch.bool, device=x.device).tril(diagonal=sk - sq)
    return (x.float() * scale).masked_fill(~visible, float("-inf")).softmax(-1).to(x.dtype)


def masked_softmax_reference(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * x) of [b, np, sq, sk] where mask [b or 1, 1, sq, sk] is False; fully masked rows are 0."""
    probs = (x.float() * scale).masked_fill(mask, float("-inf")).softmax(-1)
    return probs.masked_fill(mask.all(-1, keepdim=True), 0.0).to(x.dtype)


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x + bias), tanh form (GPT-NeoX's bias_gelu), computed in fp32, returned in x's dtype."""
    return F.gelu(x.float() + bias.float(), approximate="tanh").to(x.dtype)


def softmax_cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row loss [n] (fp32) of logits [n, v] against labels [n]."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def decode_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor = None) -> torch.Tensor:
    """x [..., in] @ weight [out, in]^T + bias: the linear layers of a decoding step (no gradient)."""
    return F.linear(x, weight, bias)


# ---- the kernels as autograd functions ----

class _CausalSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, module):  # x [b, np, sq, sk]
        b, np_, sq, sk = x.shape
        y = _call(module, "causal_softmax_forward", x.device, x.reshape(b * np_, sq, sk), scale)
        ctx.save_for_backward(y)
        ctx.scale, ctx.module = scale, module
        return y.view(b, np_, sq, sk)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        dx = _call(ctx.module, "causal_softmax_backward", y.device, grad.reshape(y.shape), y, ctx.scale)
        return dx.view(grad.shape), None, None


class _MaskedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, scale, module):  # x [b, np, sq, sk], mask [b or 1, 1, sq, sk]
        y = _call(module, "masked_softmax_forward", x.device, x, mask, scale)
        ctx.save_for_backward(y)
        ctx.scale, ctx.module = scale, module
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _call(ctx.module, "masked_softmax_backward", y.device, grad, y, ctx.scale), None, None, None


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, module):  # x [..., h], bias [h]
        ctx.save_for_backward(x, bias)
        ctx.module = module
        return _call(module, "bias_gelu_forward", x.device, x, bias)

    @staticmethod
    def backward(ctx, grad):
        x, bias = ctx.saved_tensors
        dx, dbias = _call(ctx.module, "bias_gelu_backward", x.device, grad, x, bias)
        return dx, dbias, None


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, module):  # logits [n, v] fp32 or 16-bit, labels [n]
        loss, lse = _call(module, "softmax_cross_entropy_forward", logits.device, logits, labels)
        ctx.save_for_backward(logits, labels, lse)  # the logits as they are: no fp32 copy, no saved softmax
        ctx.module = module
        return loss

    @staticmethod
    def backward(ctx, grad):
        logits, labels, lse = ctx.saved_tensors
        return _call(ctx.module, "softmax_cross_entropy_backward", logits.device, grad, logits, labels, lse), None, None


def causal_softmax(x: torch.Tensor, scale: float, module) -> torch.Tensor:
    """Fused causal_softmax_reference (module from kernel_for)."""
    return _CausalSoftmax.apply(x, scale, module)


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, scale: float, module) -> torch.Tensor:
    """Fused masked_softmax_reference (module from kernel_for)."""
    return _MaskedSoftmax.apply(x, mask, scale, module)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, module) -> torch.Tensor:
    """Fused bias_gelu_reference (module from kernel_for)."""
    return _BiasGelu.apply(x, bias, module)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, module) -> torch.Tensor:
    """Fused softmax_cross_entropy_reference (module from kernel_for)."""
    return _SoftmaxCrossEntropy.apply(logits, labels, module)

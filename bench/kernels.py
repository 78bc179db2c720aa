#!/usr/bin/env python3
"""Each fused csrc/ kernel vs the unfused torch ops it replaces, forward + backward, same inputs, same run.

The peers are what the model computes without the kernels (as GPT-NeoX's unfused path):
causal softmax = scale, masked_fill(-inf) of the upper triangle, softmax; masked softmax = scale,
masked_fill, softmax; bias-GeLU = bias add, GeLU (tanh form). Both sides take and return the same dtype.
Before timing, each pair's outputs and input gradients are checked equal (dtype tolerances): a wrong kernel fails
here instead of showing as a speed-up. Clocks are read with the device idle. Rounds interleave ours and the peer
after warm-up; medians. Ratios are speed-ups (peer time / our time).
Ends with `RATIO causal_softmax <ours/peer>` (speed) for fp32 at sequence length 512.
"""

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.ops import fused  # noqa: E402
from device import add_device_argument, select_device, timed  # noqa: E402

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
             torch.float16: dict(atol=2e-3, rtol=2e-3)}


def unfused_causal(x, scale):
    sq, sk = x.shape[-2:]
    hidden = torch.ones(sq, sk, dtype=torch.bool, device=x.device).triu(1)
    return torch.softmax((x * scale).masked_fill(hidden, float("-inf")), dim=-1)


def unfused_masked(x, mask, scale):
    return torch.softmax((x * scale).masked_fill(mask, float("-inf")), dim=-1)


def unfused_bias_gelu(x, bias):
    return F.gelu(x + bias.to(x.dtype), approximate="tanh")


def leaves(inputs):
    return [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]


def check_equal(name, ours, peer, inputs, grad):
    """Ours and the peer give the same output and the same gradient of the first input, or the bench stops."""
    results = []
    for fn in (ours, peer):
        xs = leaves(inputs)
        y = fn(*xs)
        y.backward(grad)
        results.append((y.detach().float(), xs[0].grad.float()))
    tol = TOLERANCE[inputs[0].dtype]
    for what, a, b in (("output", results[0][0], results[1][0]), ("gradient", results[0][1], results[1][1])):
        try:
            torch.testing.assert_close(a, b, **tol)
        except AssertionError as e:
            raise SystemExit(f"{name}: our {what} differs from the unfused torch ops'\n{e}") from None


def compare(name, ours, peer, inputs, rounds, warmup, device):
    with torch.no_grad():
        grad = torch.randn_like(peer(*inputs))
    check_equal(name, ours, peer, inputs, grad)
    times = {"ours": [], "peer": []}
    for r in range(warmup + rounds):
        for side, fn in (("ours", ours), ("peer", peer)):
            xs = leaves(inputs)
            t = timed(lambda: fn(*xs).backward(grad), device)
            if r >= warmup:
                times[side].append(t)
    ours_t, peer_t = statistics.median(times["ours"]), statistics.median(times["peer"])
    print(f"{name:52s} ours {ours_t * 1e3:8.2f} ms  unfused torch {peer_t * 1e3:8.2f} ms  "
          f"speed-up {peer_t / ours_t:5.2f}")
    return peer_t / ours_t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="tiny shapes (a check that the bench runs)")
    add_device_argument(parser)
    args = parser.parse_args()
    device = select_device(args.device)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, fwd+bwd per call, "
          f"median of {args.rounds} interleaved rounds after {args.warmup} warm-up; outputs and gradients checked "
          f"equal first")
    torch.manual_seed(0)
    headline = None
    for dtype in dtypes:
        kernel, why = fused.kernel_for(device, dtype)
        if kernel is None:
            raise SystemExit(f"no fused kernel for {device} {dtype}: {why}")
        tag = str(dtype).replace("torch.", "")
        for batch_heads, seq in ((8, 512),) if args.small else ((32 * 4, 512), (8 * 4, 1024), (4 * 4, 2048)):
            x = torch.randn(batch_heads // 4, 4, seq, seq, device=device, dtype=dtype)
            r = compare(f"causal softmax {tag} [{batch_heads // 4}, 4, {seq}, {seq}]",
                        lambda t: fused.causal_softmax(t, 0.125, kernel), lambda t: unfused_causal(t, 0.125),
                        [x], args.rounds, args.warmup, device)
            if dtype == torch.float32 and seq == 512:
                headline = r
        x = torch.randn(8, 4, 512, 512, device=device, dtype=dtype)
        mask = torch.rand(8, 1, 512, 512, device=device) < 0.3
        compare(f"masked softmax {tag} [8, 4, 512, 512]", lambda t: fused.masked_softmax(t, mask, 0.125, kernel),
                lambda t: unfused_masked(t, mask, 0.125), [x], args.rounds, args.warmup, device)
        for rows, h in ((256, 1024),) if args.small else ((16 * 256, 4 * 256), (4 * 2048, 4 * 768)):
            x, bias = torch.randn(rows, h, device=device, dtype=dtype), torch.randn(h, device=device)
            compare(f"bias-GeLU {tag} [{rows}, {h}] (+ fp32 bias [{h}])", lambda t, b: fused.bias_gelu(t, b, kernel),
                    unfused_bias_gelu, [x, bias], args.rounds, args.warmup, device)
    print(f"RATIO causal_softmax {headline:.3f}")


if __name__ == "__main__":
    main()

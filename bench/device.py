"""What every bench that computes on a device shares: `--device`, and clocks read only once the device is done."""

import os
import time

import torch


def add_device_argument(parser):
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda where a GPU is visible, else cpu; ours and the peer both run there")


def select_device(name: str) -> torch.device:
    """The bench's device; 'cpu' also hides GPUs from what the bench builds (the trainer picks CUDA when it sees one).
    Call before anything initialises CUDA."""
    if name == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible to torch (a CPU build, or CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def synchronize(device: torch.device):
    """Wait for the device's queued work (CUDA kernels run asynchronously: a clock read before this measures
    only their launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds `fn()` takes on `device`, from an idle device to an idle device."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start

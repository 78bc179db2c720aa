"""Micro batches of token windows, moved to the device the way training wants them."""

import numpy as np
import torch


def get_batch(dataset, start: int, size: int, device) -> torch.Tensor:
    """Samples [start, start+size) of a dataset as a [size, s+1] int64 tensor on `device`. To a GPU the copy is
    from page-locked memory and asynchronous: the host prepares the next micro batch while this one computes
    (a copy from pageable memory would wait for the GPU to finish the queued backward)."""
    rows = [dataset[(start + i) % len(dataset)]["text"] for i in range(size)]
    batch = torch.from_numpy(np.stack(rows).astype(np.int64))  # [size, s+1]
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)

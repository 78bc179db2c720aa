"""Read `.pt` files without running pickled code: torch's weights-only unpickler, refusals as UserError."""

import pickle
import re

import torch

from megatron_lite.errors import UserError


def load_pt(path: str):
    """Tensors, dicts, lists and numbers from a torch.save file; anything else is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))  # what the file asked to call or build
        what = f" (it asks for {found.group(1)})" if found else ""
        raise UserError(f"refused to load {path}: it holds pickled objects other than tensors and plain "
                        f"containers, which could run code{what}") from None
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise UserError(f"cannot read {path} as a torch.save file: {str(e).splitlines()[0][:200]}") from None

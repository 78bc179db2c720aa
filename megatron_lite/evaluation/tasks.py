"""What an eval task is: a name, a plan (its keys and inputs checked before any model is loaded) and a run.
Each task is one module defining TASK; registry.py lists them."""

from dataclasses import dataclass
from typing import Any, Callable, Dict

from megatron_lite.config import Config


@dataclass
class EvalContext:
    """What every task's run receives: the loaded model (None when no task needs one) and where it runs."""

    model: Any
    tokenizer: Any
    device: Any
    precision: Any  # the resolved inference precision (precision.Resolved), or None without a model
    rank: int
    world_size: int


@dataclass
class EvalTask:
    name: str
    plan: Callable[[Config], Any]  # check the task's keys and inputs; return what run needs
    run: Callable[[Config, Any, EvalContext], Dict]  # results by name (rank 0's are reported)
    needs_model: Callable[[Config, Any], bool] = lambda cfg, plan: True

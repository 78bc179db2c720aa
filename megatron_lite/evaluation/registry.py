"""The eval tasks eval.py can run, by name (eval-tasks)."""

from megatron_lite.errors import UserError
from megatron_lite.evaluation import humaneval_task, perplexity_task

TASKS = {task.name: task for task in (perplexity_task.TASK, humaneval_task.TASK)}


def tasks_for(names) -> list:
    """The tasks eval-tasks names, in its order; an unknown name is a UserError."""
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise UserError(f"eval-tasks: unknown task(s) {sorted(unknown)}; available: {', '.join(TASKS)}")
    return [TASKS[name] for name in names]

"""Weights & Biases logging with GPT-NeoX's keys (use_wandb, wandb_project / group / team / run_name / host)."""

import importlib.util
import netrc
import os
from urllib.parse import urlparse

from megatron_lite.config import LogConfig


def has_api_key(host: str) -> bool:
    """GPT-NeoX's test for `use_wandb` left unset: a key in WANDB_API_KEY or in ~/.netrc for the host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(host).hostname or host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_wanted(log: LogConfig) -> bool:
    """use_wandb as given; unset, on when wandb is installed and an API key is configured (as GPT-NeoX)."""
    if log.use_wandb is not None:
        return log.use_wandb
    # find_spec, not an import: importing wandb costs every training run about a second
    return importlib.util.find_spec("wandb") is not None and has_api_key(log.wandb_host)


class WandbLogger:
    """One run per training job (rank 0), holding the resolved config; metrics keyed by iteration."""

    def __init__(self, log: LogConfig, config: dict, run_dir: str = None):
        import wandb  # the config loader checked it is installed when use_wandb is true

        os.environ.setdefault("WANDB_BASE_URL", log.wandb_host)
        self.wandb = wandb
        self.run = wandb.init(project=log.wandb_project, group=log.wandb_group, entity=log.wandb_team,
                              name=log.wandb_run_name, config=config, dir=run_dir, save_code=False)

    def log(self, record: dict) -> None:
        metrics = {(f"valid/{k}" if k.startswith("val") else f"train/{k}"): v
                   for k, v in record.items() if k != "iteration"}
        self.run.log(metrics, step=record["iteration"])

    def finish(self) -> None:
        self.run.finish()

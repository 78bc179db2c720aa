"""fp16 loss scaling: static, or dynamic as DeepSpeed's (window, hysteresis, min scale)."""

from megatron_lite.config import PrecisionConfig


class LossScaler:
    """Scale the loss before backward; on overflow skip the step and (dynamically) shrink the scale."""

    def __init__(self, cfg: PrecisionConfig):
        self.dynamic = cfg.precision == "fp16" and cfg.loss_scale == 0
        if cfg.precision != "fp16":
            self.scale = 1.0
        else:
            self.scale = float(2 ** cfg.initial_scale_power) if self.dynamic else float(cfg.loss_scale)
        self.window, self.min_scale, self.hysteresis = cfg.loss_scale_window, cfg.min_loss_scale, cfg.hysteresis
        self.hysteresis_left = cfg.hysteresis
        self.good_steps = 0

    def update(self, overflow: bool) -> None:
        """Record one step's outcome: halve after `hysteresis` overflows, double after `window` good steps."""
        if not self.dynamic:
            return
        if overflow:
            self.good_steps = 0
            self.hysteresis_left -= 1
            if self.hysteresis_left <= 0:
                self.scale = max(self.scale / 2.0, self.min_scale)
                self.hysteresis_left = self.hysteresis
        else:
            self.good_steps += 1
            if self.good_steps % self.window == 0:
                self.scale *= 2.0
                self.hysteresis_left = self.hysteresis

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "hysteresis_left": self.hysteresis_left}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
        self.hysteresis_left = int(state["hysteresis_left"])

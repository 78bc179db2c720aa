"""fp16 loss scaling: static, or dynamic with the arithmetic of DeepSpeed's DynamicLossScaler."""

from megatron_lite.config import PrecisionConfig


class LossScaler:
    """Scale the loss before backward; on overflow skip the step and (dynamically) shrink the scale.

    As DeepSpeed: an overflow spends one unit of hysteresis, and once none is left each further overflow
    halves the scale; the hysteresis refills only when the scale doubles, after loss_scale_window steps
    without overflow (or on every clean step with consecutive_hysteresis)."""

    def __init__(self, cfg: PrecisionConfig):
        self.dynamic = cfg.precision == "fp16" and cfg.loss_scale == 0
        if cfg.precision != "fp16":
            self.scale = 1.0
        else:
            self.scale = float(2 ** cfg.initial_scale_power) if self.dynamic else float(cfg.loss_scale)
        self.window, self.min_scale, self.hysteresis = cfg.loss_scale_window, cfg.min_loss_scale, cfg.hysteresis
        self.consecutive_hysteresis = cfg.consecutive_hysteresis
        self.hysteresis_left = cfg.hysteresis
        self.steps, self.last_overflow = 0, -1  # steps seen; the step index of the last overflow

    def update(self, overflow: bool) -> None:
        """Record one step's outcome."""
        if not self.dynamic:
            return
        if overflow:
            if self.hysteresis == 1 or self.hysteresis_left == 1:
                self.scale = max(self.scale / 2.0, self.min_scale)
            else:
                self.hysteresis_left -= 1
            self.last_overflow = self.steps
        else:
            if self.consecutive_hysteresis:
                self.hysteresis_left = self.hysteresis
            clean = self.steps - self.last_overflow - 1  # clean steps before this one, since the last overflow
            if clean > 0 and clean % self.window == 0:
                self.hysteresis_left = self.hysteresis
                self.scale *= 2.0
        self.steps += 1

    def state_dict(self) -> dict:
        return {"scale": self.scale, "steps": self.steps, "last_overflow": self.last_overflow,
                "hysteresis_left": self.hysteresis_left}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.hysteresis_left = float(state["scale"]), int(state["hysteresis_left"])
        if "steps" in state:
            self.steps, self.last_overflow = int(state["steps"]), int(state["last_overflow"])
        else:  # a checkpoint written before the DeepSpeed arithmetic: its clean steps since the last doubling
            self.steps, self.last_overflow = int(state["good_steps"]), -1

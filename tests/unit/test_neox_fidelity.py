"""50 steps of our trainer == 50 steps of a plain loop over transformers' GPTNeoXForCausalLM and torch AdamW, with
GPT-NeoX's parameter groups, AnnealingLR schedule, clipping and gradient accumulation written out here."""

import math

import torch
import torch.nn.functional as F
import transformers

from megatron_lite.config_loader import load_config
from megatron_lite.data.batches import get_batch
from megatron_lite.training.trainer import Trainer

STEPS, LR, MIN_LR, WARMUP, CLIP, DECAY, GAS = 50, 3e-3, 3e-4, 0.1, 0.5, 0.1, 2


def annealing_lr(n: int) -> float:
    """GPT-NeoX's AnnealingLR.get_lr, linear decay, after n applied steps (end = lr-decay-iters = STEPS)."""
    end, warmup = STEPS, WARMUP * STEPS
    done = min(n, end - warmup)
    if n <= warmup:
        return LR * done / warmup
    return max(LR * (end - (done - warmup)) / end, MIN_LR)


def hf_twin(model, cfg):
    """GPTNeoXForCausalLM with our model's initial weights (our names are its names without `gpt_neox.`)."""
    m = cfg.model
    config = transformers.GPTNeoXConfig(
        vocab_size=m.padded_vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=4 * m.hidden_size, hidden_act="gelu",
        rotary_pct=m.rotary_pct, rotary_emb_base=m.rotary_emb_base, max_position_embeddings=m.max_position_embeddings,
        layer_norm_eps=m.layernorm_epsilon, use_parallel_residual=False, tie_word_embeddings=False,
        hidden_dropout=0.0, attention_dropout=0.0, attn_implementation="eager")
    twin = transformers.GPTNeoXForCausalLM(config)
    head = next(k for k in twin.state_dict() if k in ("embed_out.weight", "lm_head.weight"))  # by version
    weights = {(head if k == "embed_out.weight" else f"gpt_neox.{k}"): v for k, v in model.state_dict().items()}
    missing, unexpected = twin.load_state_dict(weights, strict=False)
    assert not unexpected and all("rotary" in k or "masked_bias" in k or k.endswith("attention.bias")
                                  for k in missing), (missing, unexpected)
    return twin


def neox_param_groups(model, weight_decay):
    """GPT-NeoX's get_params_for_weight_decay_optimization: LayerNorm weights and every bias are not decayed."""
    no_decay = [p for n, p in model.named_parameters() if n.endswith(".bias") or "layernorm" in n or "layer_norm" in n]
    decay = [p for n, p in model.named_parameters() if not any(p is q for q in no_decay)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def test_fifty_steps_match_transformers_with_gpt_neox_formulas(micro_config):
    cfg = load_config([micro_config], [
        "--hidden-dropout", "0", "--attention-dropout", "0", "--precision", "fp32", "--peak-tflops", "1",
        "--save", "", "--train-iters", str(STEPS), "--lr", str(LR), "--min-lr", str(MIN_LR), "--warmup", str(WARMUP),
        "--lr-decay-style", "linear", "--gradient-clipping", str(CLIP), "--weight-decay", str(DECAY),
        "--gradient-accumulation-steps", str(GAS), "--attention-impl", "sdpa"])
    ours = Trainer(cfg)
    twin = hf_twin(ours.model, cfg).train()
    optimizer = torch.optim.AdamW(neox_param_groups(twin, DECAY), lr=LR, betas=tuple(cfg.optim.betas),
                                  eps=cfg.optim.eps)
    micro = cfg.train.train_micro_batch_size_per_gpu
    curves, clipped = [], 0
    for step in range(STEPS):
        first = step * cfg.train.train_batch_size
        for group in optimizer.param_groups:
            group["lr"] = annealing_lr(step)  # step applied steps before this one
        optimizer.zero_grad()
        total = 0.0
        for j in range(GAS):
            tokens = get_batch(ours.train_data, first + j * micro, micro, torch.device("cpu"))
            logits = twin(input_ids=tokens[:, :-1]).logits
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            (loss / GAS).backward()
            total += loss.item() / GAS
        norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), CLIP).item()
        clipped += norm > CLIP
        optimizer.step()
        record = ours.train_step()
        assert record["lr"] == annealing_lr(step)
        curves.append((record["loss"], total, record["grad_norm"], norm))
    worst = max(abs(a - b) / b for a, b, _, _ in curves)
    print(f"largest relative loss difference over {STEPS} steps: {worst:.2e}; first {curves[0][:2]}, "
          f"last {curves[-1][:2]}")
    for i, (a, b, na, nb) in enumerate(curves):
        assert math.isclose(a, b, rel_tol=1e-4), (i, a, b)
        assert math.isclose(na, nb, rel_tol=1e-3), (i, na, nb)
    assert clipped >= 10 and curves[-1][0] < curves[0][0] - 1.0  # clipping was active, and the model learned

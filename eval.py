#!/usr/bin/env python3
"""Evaluate a trained model: ./deepy.py eval.py CONF.yml [...] [--key value ...]

For now: perplexity on the valid or test split of `data-path` (`eval-split`).
"""

import json
import os
import sys

from megatron_lite.config_loader import load_config_from_argv
from megatron_lite.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv):
    cfg = load_config_from_argv(argv)
    from megatron_lite.build import load_trained_model
    from megatron_lite.data.gpt_dataset import build_train_valid_test_datasets
    from megatron_lite.evaluation.perplexity import perplexity, unigram_entropy
    from megatron_lite.training.trainer import autocast

    unknown = set(cfg.eval.eval_tasks) - {"perplexity"}
    if unknown:
        raise UserError(f"eval-tasks: unknown task(s) {sorted(unknown)}; available: perplexity")
    if cfg.data.data_path is None:
        raise UserError("no evaluation data: set 'data-path' to a preprocessed PREFIX")
    model, _, device = load_trained_model(cfg)
    want = (0, 1, 0) if cfg.eval.eval_split == "valid" else (0, 0, 1)  # one pass over the chosen split
    splits = build_train_valid_test_datasets(cfg.data.data_path, cfg.data.split, cfg.model.seq_length,
                                             num_samples=want, seed=cfg.train.seed)
    dataset = splits[1] if cfg.eval.eval_split == "valid" else splits[2]
    if dataset is None:
        raise UserError(f"split '{cfg.data.split}' gives the {cfg.eval.eval_split} split no documents (key 'split')")
    result = perplexity(model, dataset, cfg.train.train_micro_batch_size_per_gpu, device,
                        lambda: autocast(device, cfg.precision.precision))
    result["unigram_entropy"] = unigram_entropy(dataset)
    print(f"{cfg.eval.eval_split} perplexity {result['perplexity']:.3f} (loss {result['loss']:.4f} nats/token "
          f"over {result['tokens']} tokens; a unigram model of this split scores {result['unigram_entropy']:.4f})")
    if cfg.eval.eval_results_prefix:
        path = f"{cfg.eval.eval_results_prefix}_results.json"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({cfg.eval.eval_split: result}, f, indent=1)
        os.replace(path + ".tmp", path)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

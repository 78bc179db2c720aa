#!/usr/bin/env python3
"""Data-parallel scaling on this machine: training tokens/s at dp=1 and dp=2, and the share of a dp=2 step
spent communicating.

Two gloo processes, one thread each (like with like: dp=2 uses twice the cores of dp=1). Every round runs,
after warm-up and interleaved: dp=1 (rank 0 steps alone while rank 1 waits), dp=2 with our bucketed reducer
(all-reduce overlapped with backward), dp=2 with torch DistributedDataParallel (the peer reducer), and dp=2
without any gradient communication (compute only). Same GPT-NeoX model, random token batches, fp32, AdamW.
The communication share is 1 - (compute-only step time / our dp=2 step time).
Ends with `RATIO scaling <dp2/dp1 tokens/s>`.
"""

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def worker(rank: int, port: int, args, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from megatron_lite.config import ModelConfig, ParallelConfig
    from megatron_lite.model.gpt import GPTModel
    from megatron_lite.parallel import state
    from megatron_lite.parallel.data_parallel import GradReducer
    from megatron_lite.training.loss import lm_loss

    torch.set_num_threads(args.threads)
    s = state.initialize(ParallelConfig(data_parallel_size=2, world_size=2))
    cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                      seq_length=args.seq, max_position_embeddings=args.seq, padded_vocab_size=args.vocab,
                      pos_emb="rotary", no_weight_tying=True, hidden_dropout=0.0, attention_dropout=0.0)
    cpu = torch.device("cpu")

    def build():
        torch.manual_seed(0)
        model = GPTModel(cfg)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    ours, ours_opt = build()
    reducer = GradReducer(ours.parameters(), s.dp_group, 2, args.bucket_mb)
    alone, alone_opt = build()
    ddp_model, ddp_opt = build()
    ddp = DistributedDataParallel(ddp_model, process_group=s.dp_group, bucket_cap_mb=args.bucket_mb)
    torch.manual_seed(1 + rank)
    tokens = torch.randint(0, args.vocab, (args.micro, args.seq + 1))

    def step(model, opt, reducer=None):
        if reducer:
            reducer.zero_grad()
            reducer.set_sync(True)
        else:
            opt.zero_grad(set_to_none=True)
        lm_loss(model, tokens, cpu, "fp32").backward()
        if reducer:
            reducer.finish()
        opt.step()

    kinds = {
        "dp1": lambda: step(alone, alone_opt) if rank == 0 else None,
        "dp2_ours": lambda: step(ours, ours_opt, reducer),
        "dp2_torch_ddp": lambda: step(ddp, ddp_opt),
        "dp2_no_comm": lambda: step(alone, alone_opt),
    }
    times = {k: [] for k in kinds}
    for r in range(args.warmup + args.rounds):
        for name, run in kinds.items():
            dist.barrier()
            t0 = time.perf_counter()
            run()
            elapsed = time.perf_counter() - t0
            dist.barrier()
            if r >= args.warmup:
                times[name].append(elapsed)
    if rank == 0:
        results.put({k: statistics.median(v) for k, v in times.items()})
    state.destroy()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, port, args, results)) for r in range(2)]
    for proc in procs:
        proc.start()
    med = results.get(timeout=1800)
    for proc in procs:
        proc.join(60)
    tokens = args.micro * args.seq
    tps = {"dp1": tokens / med["dp1"], "dp2_ours": 2 * tokens / med["dp2_ours"],
           "dp2_torch_ddp": 2 * tokens / med["dp2_torch_ddp"], "dp2_no_comm": 2 * tokens / med["dp2_no_comm"]}
    print(f"model {args.layers} layers x {args.hidden} hidden, seq {args.seq}, vocab {args.vocab}, micro batch "
          f"{args.micro} per rank, fp32, {args.threads} thread(s) per process, gloo on CPU; median of "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")
    for name, value in tps.items():
        print(f"{name:15s} step {1000 * med[name]:8.1f} ms   {value:9.0f} tokens/s")
    comm = 1 - med["dp2_no_comm"] / med["dp2_ours"]
    print(f"communication share of a dp=2 step (ours): {100 * comm:.1f}%")
    print(f"ours vs torch DDP at dp=2: {tps['dp2_ours'] / tps['dp2_torch_ddp']:.3f}x tokens/s")
    print(f"RATIO scaling {tps['dp2_ours'] / tps['dp1']:.3f}")


if __name__ == "__main__":
    main()

"""GPTModel at tp=2 equals tp=1 (loss and gradients, fp32); the bucketed data-parallel reduction equals the
plain all-reduce after backward; gradient clipping's norm over tp shards equals the full model's."""

import torch

from megatron_lite.model.gpt import GPTModel
from megatron_lite.parallel import state
from megatron_lite.parallel.data_parallel import GradReducer, reference_all_reduce
from megatron_lite.parallel.layers import gather_param
from megatron_lite.parallel.reshard import merge_tp_shards, partition_facts, split_tp
from megatron_lite.parallel.random import TRACKER
from megatron_lite.training.optim import clip_grad_norm
from megatron_lite.training.loss import lm_loss
from tests.conftest import tiny_model_config
from tests.distributed.harness import run_workers

CFG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16, max_position_embeddings=16,
           rotary_pct=0.5, padded_vocab_size=256)


def _check_gpt_tp(no_weight_tying, **options):
    cfg = tiny_model_config(**{**CFG, **options}, no_weight_tying=no_weight_tying)
    with state.single_process():
        torch.manual_seed(0)
        ref = GPTModel(cfg)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    names = dict(model.named_parameters())
    for name, p in ref.named_parameters():  # the same seed builds the same model at every tp size
        assert torch.equal(gather_param(names[name]), p.detach()), name
    # Resharding the tp=1 weights by the parameters' facts gives this rank's shard, and merging gives them back.
    facts = partition_facts(ref)
    shards = split_tp(ref.state_dict(), 2, facts)
    mine = shards[state.get().tp_rank]
    assert all(torch.equal(mine[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(merge_tp_shards(shards, facts)[k], v) for k, v in ref.state_dict().items())
    torch.manual_seed(1)
    tokens = torch.randint(0, 250, (3, CFG["seq_length"] + 1))
    loss = lm_loss(model, tokens, torch.device("cpu"), "fp32")
    loss.backward()
    with state.single_process():
        ref_loss = lm_loss(ref, tokens, torch.device("cpu"), "fp32")
        ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-5, (loss.item(), ref_loss.item())
    for name, p in ref.named_parameters():
        ours = gather_param(names[name], names[name].grad)
        assert torch.allclose(ours, p.grad, atol=1e-5), f"{name}: {(ours - p.grad).abs().max().item():.3g}"
    # The clipping norm counts shards once each and replicated parameters once.
    params = list(model.parameters())
    norm = clip_grad_norm(params, float("inf"), state.get().tp_group)
    ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), float("inf")).item()
    assert abs(norm - ref_norm) < 1e-5 * ref_norm, (norm, ref_norm)


def _gpt_tp2():
    _check_gpt_tp(no_weight_tying=True)
    _check_gpt_tp(no_weight_tying=False, pos_emb="learned")  # GPT-NeoX's defaults: positions replicated over tp
    # The fused kernels on each rank's heads and MLP shard (bias-GeLU takes the column-parallel bias slice).
    _check_gpt_tp(no_weight_tying=True, attention_impl="fused", bias_gelu_fusion=True)
    # The architecture options: [x; gate] and [q; k; v] blocks split separately, no biases, RMSNorm.
    _check_gpt_tp(no_weight_tying=True, activation="swiglu", num_kv_heads=2)
    _check_gpt_tp(no_weight_tying=True, norm="rmsnorm", activation="swiglu", num_kv_heads=2, rotary_pct=1.0,
                  use_bias_in_attn_linear=False, use_bias_in_mlp=False)
    _check_gpt_tp(no_weight_tying=False, use_bias_in_norms=False, attention_impl="reference", num_kv_heads=2)


def test_gpt_model_tp2_matches_tp1():
    run_workers(_gpt_tp2, world=2, tp=2, timeout=120)


def _dp_reduce():
    s = state.get()
    torch.manual_seed(0)
    a = GPTModel(tiny_model_config(**CFG))
    b = GPTModel(tiny_model_config(**CFG))
    b.load_state_dict(a.state_dict())
    reducer = GradReducer(a.parameters(), s.dp_group, s.dp_size, bucket_mb=0.05)  # several buckets
    assert len(reducer.buckets) > 2
    a(torch.zeros(1, 1, dtype=torch.long)).sum().backward()  # leftovers that zero_grad must clear
    reducer.zero_grad()
    torch.manual_seed(100 + s.dp_rank)  # each rank its own data
    batches = [torch.randint(0, 250, (2, CFG["seq_length"] + 1)) for _ in range(2)]
    launch, still_pending = reducer._launch, []

    def recording_launch(i):  # how many other buckets still await gradients when bucket i is launched
        still_pending.append(sum(1 for j, left in enumerate(reducer.pending) if left and j != i))
        launch(i)

    reducer._launch = recording_launch
    for j, tokens in enumerate(batches):  # two micro batches: only the last one reduces
        reducer.set_sync(j == len(batches) - 1)
        (lm_loss(a, tokens, torch.device("cpu"), "fp32") / 2).backward()
        if j < len(batches) - 1:
            assert reducer.work == [] and still_pending == []  # accumulation only
        (lm_loss(b, tokens, torch.device("cpu"), "fp32") / 2).backward()
    # Overlap: every bucket's async all-reduce was launched from backward's hooks before finish(), the first
    # while the other buckets' gradients were still being computed.
    assert len(reducer.work) == len(reducer.buckets) and still_pending[0] == len(reducer.buckets) - 1
    assert all(isinstance(w, torch.distributed.Work) for w in reducer.work)
    reducer.finish()
    assert reducer.work == []
    reference_all_reduce(b.parameters(), s.dp_group, s.dp_size)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    gathered = [torch.empty_like(p.grad) for _ in range(s.dp_size)]
    torch.distributed.all_gather(gathered, next(a.parameters()).grad, group=s.dp_group)
    assert torch.equal(gathered[0], gathered[1]) and gathered[0].abs().sum() > 0  # replicas apply one update


def test_bucketed_dp_reduction_matches_plain_all_reduce():
    run_workers(_dp_reduce, world=2, tp=1, timeout=120)


def _all_gather(t, group=None):
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, t, group=group)
    return parts


def _rng_streams():
    # world 4: tp groups {0,1} {2,3}, dp groups {0,2} {1,3}
    TRACKER.seed(1234)
    replicated = torch.rand(4)
    with TRACKER.fork():
        per_head = torch.rand(4)
    rep, head = _all_gather(replicated), _all_gather(per_head)
    assert torch.equal(rep[0], rep[1]) and torch.equal(rep[2], rep[3])  # one stream per tp group
    assert not torch.equal(rep[0], rep[2])  # data-parallel replicas drop out different units
    assert len({tuple(h.tolist()) for h in head}) == 4  # every rank's heads have their own stream

    # Activation checkpointing replays both streams: gradients equal those without recomputation.
    cfg = tiny_model_config(**CFG, hidden_dropout=0.2, attention_dropout=0.2)
    torch.manual_seed(0)
    model = GPTModel(cfg).train()
    tokens = torch.randint(0, 250, (2, CFG["seq_length"] + 1))
    grads = []
    for recompute in (False, True):
        model.checkpoint_activations = recompute
        model.zero_grad()
        torch.manual_seed(5)
        TRACKER.seed(99)
        lm_loss(model, tokens, torch.device("cpu"), "fp32").backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_rng_streams_and_recomputation_under_tp2_dp2():
    run_workers(_rng_streams, world=4, tp=2, timeout=120)

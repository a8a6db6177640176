"""Data-parallel training of the winner (`python -m sweep.finalize`): the Trainer's shard hook (K processes train
the run one process trains, and a restored run repeats itself exactly), the rung loop of a rank other than 0, and
the command end to end on the smoke sweep."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_config

from diffusion_core.loop import BEST, LAST, RungLoop
from diffusion_core.trainer import Shard, Trainer

STEPS = 12


def ddp_config(dropout: float):
    return tiny_config(model={"dropout": dropout, "class_conditional": True}, train={"warmup_steps": 3, "max_steps": STEPS})


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in trainer.model.named_parameters()}


def _data_parallel_worker(rank: int, world_size: int, folder: str, dropout: float) -> None:
    """Rank ``rank``: train STEPS straight; then half of them, restore rank 0's checkpoint in a new trainer, the rest."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        cfg, shard = ddp_config(dropout), Shard(rank, world_size)
        straight = Trainer(cfg, "cpu", shard=shard)
        losses = straight.train_until(1)
        grads = _grads(straight)
        losses += straight.train_until(STEPS)
        first = Trainer(cfg, "cpu", shard=shard)
        first.train_until(STEPS // 2)
        if rank == 0:
            first.save_checkpoint(Path(folder) / "half.pt")
        dist.barrier()
        resumed = Trainer(cfg, "cpu", shard=shard)
        resumed.load_checkpoint(Path(folder) / "half.pt")
        resumed.train_until(STEPS)
        torch.save({"straight": _weights(straight), "resumed": _weights(resumed), "losses": losses, "grads": grads},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_data_parallel(folder: Path, dropout: float, world_size: int = 2) -> list[dict]:
    mp.spawn(_data_parallel_worker, args=(world_size, str(folder), dropout), nprocs=world_size, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def test_a_shard_takes_every_kth_item_and_the_shards_cover_the_batch():
    batch = torch.arange(12)
    shards = [Shard(r, 3).take(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    with pytest.raises(ValueError, match="rank 3"):
        Shard(3, 3)


def test_a_batch_that_does_not_split_into_equal_shards_is_refused():
    with pytest.raises(ValueError, match="batch_size 16 does not split into 3"):
        Trainer(ddp_config(0.0), "cpu", shard=Shard(0, 3))


def test_two_processes_train_the_run_one_process_trains(tmp_path):
    """Without dropout, DDP over two shards of each global batch (same images, timesteps, noises and labels as
    one process draws) computes one process's gradient and losses, up to float summation order. (Weights are
    compared loosely: Adam turns float noise in a near-zero gradient into a step of up to lr.)"""
    ranks = run_data_parallel(tmp_path, dropout=0.0)
    single = Trainer(ddp_config(0.0), "cpu")
    losses = single.train_until(1)
    grads = _grads(single)
    losses += single.train_until(STEPS)
    for rank in ranks:
        assert rank["losses"] == pytest.approx(losses, rel=1e-4)
        for key, value in grads.items():
            torch.testing.assert_close(rank["grads"][key], value, rtol=1e-4, atol=1e-7, msg=key)
        for key, value in _weights(single).items():
            torch.testing.assert_close(rank["straight"][key], value, rtol=0, atol=1e-3, msg=key)


def test_a_restored_data_parallel_run_repeats_itself_exactly(tmp_path):
    """With dropout (each rank's own masks), every rank restored from rank 0's checkpoint continues exactly as
    the uninterrupted run, and the ranks hold the same weights."""
    ranks = run_data_parallel(tmp_path, dropout=0.2)
    for rank in ranks:
        for key, value in rank["straight"].items():
            assert torch.equal(rank["resumed"][key], value), key
            assert torch.equal(ranks[0]["straight"][key], value), key


def test_a_loop_without_an_evaluator_only_trains(tmp_path):
    """A data-parallel rank other than 0: rung by rung to max_steps, no evaluation, no checkpoint files."""
    cfg = tiny_config(train={"max_steps": 30}, eval={"every_steps": 10})
    rungs = []
    RungLoop(Trainer(cfg, "cpu"), None, tmp_path).run(rungs.append)
    assert [r.step for r in rungs] == [10, 20, 30] and [r.final for r in rungs] == [False, False, True]
    assert all(r.evaluation is None and r.model is None and not r.improved for r in rungs)
    assert set(rungs[0].metrics()) == {"loss", "train_seconds"}
    assert not (tmp_path / LAST).exists() and not (tmp_path / BEST).exists()

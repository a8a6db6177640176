"""The Ray Train worker of ``python -m sweep.finalize``, a thin adapter like the Tune trainable: the winner's run
config -> a data-parallel Trainer (one ``Shard`` per worker, DDP) -> the rung loop -> ``ray.train.report``.

Rank 0 evaluates (FID/KID on ``final.num_samples`` at ``final.every_steps``), writes the min-FID and last
checkpoints, logs each rung to the final run in the tracker and reports the loop's folder as Ray Train's checkpoint;
the other ranks only train, and report in step with it (a report is a barrier across the workers). A restarted
worker group, or the same command run again, continues every rank from the latest reported checkpoint, and rank 0
reopens the same tracked run (its id travels in the checkpoint).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import ray.train
import ray.train.torch
import torch

from diffusion_core.config import MAY_CHANGE, RunConfig
from diffusion_core.evaluate import Evaluator
from diffusion_core.loop import Rung, RungLoop
from diffusion_core.trainer import Shard, Trainer
from sweep.tracking import FINAL_ROLE, ROLE_TAG, TrackedRun, open_tracker
from sweep.trainable import log_rung, restore_from


@dataclass(frozen=True)
class FinalJob:
    """What every worker is given (``train_loop_config``): the run config and where to track the run."""

    run_config: str  # RunConfig as JSON
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    key: str  # the final run's identity among the sweep's runs: one per winning trial
    name: str
    params: dict[str, Any] = field(default_factory=dict)  # logged when the run is created: the winner's values
    tags: dict[str, str] = field(default_factory=dict)  # set on every start: this invocation's budget
    threads: int = 1

    def config(self) -> dict[str, Any]:
        return asdict(self)


def open_final_run(job: FinalJob, loop: RungLoop) -> TrackedRun:
    """The final run as a child of the sweep's parent (tag ``role: final``), reopened after a restart."""
    tags = {ROLE_TAG: FINAL_ROLE, "restored_at_step": str(loop.trainer.step), **job.tags}
    return open_tracker(job.tracking_uri).trial_run(job.experiment_id, job.parent_run_id, job.key, job.name, job.params,
                                                    tags, loop.extra.get("run_id"))


def report_rung(rung: Rung, loop: RungLoop, run: TrackedRun | None) -> None:
    """Rank 0: the rung to the tracker and to Ray Train with the loop's folder as checkpoint; other ranks: in step."""
    if run is None:
        ray.train.report({"step": rung.step})
        return
    metrics = rung.metrics()
    log_rung(run, rung, metrics, loop.folder)
    print(f"final step {rung.step}/{loop.trainer.cfg.train.max_steps}: loss {metrics['loss']:.4f}, FID {metrics['fid']:.2f} "
          f"(best {rung.best.fid:.2f} at step {rung.best.step})", flush=True)
    ray.train.report({**metrics, "step": rung.step, "run_id": run.run_id},
                     checkpoint=ray.train.Checkpoint.from_directory(str(loop.folder)), delete_local_checkpoint_after_upload=False)


def train_final(config: dict[str, Any]) -> None:
    """One worker of the data-parallel final training (``TorchTrainer``'s ``train_loop_per_worker``)."""
    with tempfile.TemporaryDirectory(prefix="final_rung_") as folder:  # rank 0's checkpoints until Ray Train copies them
        train_in(FinalJob(**config), folder)


def train_in(job: FinalJob, folder: str) -> None:
    """This worker's shard of the training, rung by rung; rank 0 writes its checkpoints into ``folder``."""
    context = ray.train.get_context()
    shard = Shard(context.get_world_rank(), context.get_world_size())
    cfg = RunConfig.model_validate_json(job.run_config)
    torch.set_num_threads(job.threads)
    device = ray.train.torch.get_device()
    trainer = Trainer(cfg, device, shard=shard)
    loop = RungLoop(trainer, Evaluator(cfg, device) if shard.rank == 0 else None, folder)
    restore_from(loop, ray.train.get_checkpoint(), {*MAY_CHANGE, "train.max_steps"})  # finalize again with more steps continues
    run = open_final_run(job, loop) if shard.rank == 0 else None
    if run is not None:
        loop.extra["run_id"] = run.run_id
    rungs = 0

    def report(rung: Rung) -> None:
        nonlocal rungs
        report_rung(rung, loop, run)
        rungs += 1

    loop.run(report)
    if not rungs:  # already trained to this budget: report once, so that the driver still learns the run
        done = {"step": trainer.step, "best_fid": loop.best.fid if math.isfinite(loop.best.fid) else -1.0}
        ray.train.report({**done, "run_id": run.run_id} if run is not None else done)

"""What a sweep costs before it starts: ASHA's rungs in training steps, the expected and worst-case trial-steps
and evaluated samples, device-hours from a throughput that is configured (``sweep.throughput``) or measured by a
short timed run of the configured model here, and with node prices an approximate bill. Also the rungs that would
judge a warm-up rather than the model.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning") keeps the best 1/η of the trials that
reach a rung, so in expectation a fraction η^-k of the trials trains past rung k; with no pruning (worst case,
or ``scheduler.type: fifo``) every trial trains to ``train.max_steps``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F

from diffusion_core.config import RunConfig
from diffusion_core.data import ImageData
from diffusion_core.inception_weights import fid_inception_skeleton
from diffusion_core.trainer import Trainer, default_device
from sweep.config import SweepConfig
from sweep.nodes import (
    ClusterSpec,
    describe_placement,
    load_cluster_spec,
    place,
    resolve_cluster_config,
)

MEASURE_BATCH = 2  # images per timed pass; times scale linearly to the configured batch size
MEASURE_SECONDS = 1.0


@dataclass(frozen=True)
class Budget:
    """Training steps and evaluated samples of a whole sweep: expected under ASHA and with no pruning."""

    rungs: list[int]  # the evaluation steps at which ASHA decides, ascending
    expected_steps: float
    worst_steps: float
    expected_samples: float
    worst_samples: float


@dataclass(frozen=True)
class Throughput:
    """One trial's speed on one device: training steps/s at ``train.batch_size`` and evaluated samples/s
    (sampling at ``eval.sampling_steps`` plus their Inception features); ``source`` says where it comes from."""

    train_steps_per_second: float
    samples_per_second: float
    source: str

    def hours(self, steps: float, samples: float) -> float:
        return (steps / self.train_steps_per_second + samples / self.samples_per_second) / 3600


def asha_milestones(grace: int, max_t: int, reduction_factor: float) -> list[int]:
    """Ray's own ASHA rungs (its bracket with s = 0), ascending."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    return sorted(int(m) for m, _ in _Bracket(grace, max_t, reduction_factor, s=0)._rungs if m < max_t)


def evaluation_steps(every: int, max_steps: int) -> list[int]:
    """The steps at which a trial evaluates and reports (the rung loop's ``next_rung``)."""
    return sorted({*range(every, max_steps + 1, every), max_steps})


def rung_steps(cfg: SweepConfig) -> list[int]:
    """The evaluations at which ASHA decides: the first report at or after each of its milestones."""
    base = cfg.run_config({})
    if cfg.sweep.scheduler.type == "fifo":
        return []
    reports = evaluation_steps(base.eval.every_steps, base.train.max_steps)
    milestones = asha_milestones(cfg.grace_period, base.train.max_steps, cfg.sweep.scheduler.reduction_factor)
    return sorted({next(s for s in reports if s >= m) for m in milestones} - {base.train.max_steps})


def budget(cfg: SweepConfig) -> Budget:
    """Trial-steps and evaluated samples of the sweep; a fraction η^-k of the trials goes on past rung k."""
    base = cfg.run_config({})
    rungs, max_steps, eta = rung_steps(cfg), base.train.max_steps, cfg.sweep.scheduler.reduction_factor
    reports = evaluation_steps(base.eval.every_steps, max_steps)
    samples_per_report = base.eval.num_samples * len(base.train.ema_rates)
    bounds = [0, *rungs, max_steps]
    steps = samples = 0.0
    for k, (lo, hi) in enumerate(pairwise(bounds)):
        surviving = eta ** -k
        steps += surviving * (hi - lo)
        samples += surviving * samples_per_report * sum(lo < s <= hi for s in reports)
    study = cfg.sampling_search
    final = (study.trials * (study.num_samples or base.eval.num_samples)) if study else 0
    n = cfg.sweep.num_trials
    return Budget(rungs, n * steps, n * max_steps, n * (samples + eta ** -len(rungs) * final),
                  n * (samples_per_report * len(reports) + final))


def warmup_warnings(cfg: SweepConfig) -> list[str]:
    """Rungs that fall inside a warm-up, or within one EMA time constant 1/(1 - rate) of its end: there the
    bank's fastest EMA still weights the warm-up's weights by more than e^-1, so ASHA would rank the warm-up."""
    base = cfg.run_config({})
    warmup = max(_candidates(cfg, "train.warmup_steps", base.train.warmup_steps)
                 + _candidates(cfg, "train.ema_warmup_steps", base.train.ema_warmup_steps))
    banks = [b if isinstance(b, list) else [b] for b in _candidates(cfg, "train.ema_rates", base.train.ema_rates)]
    lines = []
    for rung in rung_steps(cfg):
        if rung <= warmup:
            lines.append(f"WARNING: the ASHA rung at step {rung:,} falls inside the warm-up (it ends at step {warmup:,}); "
                         "move sweep.scheduler.grace_period past it")
            continue
        for bank in banks:
            fastest = min(bank)
            tau = 1 / (1 - fastest)
            if rung < warmup + tau:
                lines.append(f"WARNING: the ASHA rung at step {rung:,} is within one EMA time constant ({tau:,.0f} steps for "
                             f"rate {fastest:g}, train.ema_rates {bank}) of the warm-up's end at step {warmup:,}: it would rank "
                             f"the warm-up, not the model; rungs from step {warmup + tau:,.0f} on, or a faster rate in the bank")
    return lines


def _candidates(cfg: SweepConfig, path: str, value: object) -> list:
    """Every value a key takes in the sweep: its dimension's candidates, else its fixed value."""
    dim = next((d for d in cfg.dimensions if d.path == path), None)
    if dim is None:
        return [value]
    return list(dim.choices or []) if dim.kind == "choice" else [dim.low, dim.high]


def _timed(run: Callable[[], object], device: torch.device) -> float:
    """Seconds per call of ``run``: one untimed warm-up call, then calls until MEASURE_SECONDS have passed."""
    run()
    calls, started = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - started < MEASURE_SECONDS:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        calls += 1
    return (time.perf_counter() - started) / calls


def measure_throughput(cfg: RunConfig) -> Throughput:
    """A short timed run of the configured model on this machine's device, MEASURE_BATCH images per pass, scaled
    linearly to ``train.batch_size``; a sample costs ``eval.sampling_steps`` network passes and one pass of the
    FID network's architecture (timing needs no weights)."""
    device, b = default_device(), MEASURE_BATCH
    small = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": b, "compile": False})})
    shape = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    images = torch.randint(0, 256, (8 * b, *shape), dtype=torch.uint8)
    trainer = Trainer(small, device, data=ImageData(images, torch.zeros(8 * b, dtype=torch.long)))
    step = _timed(trainer.train_step, device) * cfg.train.batch_size / b
    x = torch.randn(b, *shape, device=device)
    t = torch.full((b,), cfg.diffusion.timesteps // 2, device=device, dtype=torch.long)
    net = trainer.model.eval()
    with torch.inference_mode():
        forward = _timed(lambda: net(x, t), device) / b
        inception = fid_inception_skeleton().eval().to(device)
        pictures = F.interpolate(x[:, :1].expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear")
        features = _timed(lambda: inception(pictures), device) / b
    per_sample = cfg.eval.sampling_steps * forward + features
    source = f"measured here on {device.type}: batch {b} scaled to {cfg.train.batch_size}, first value of each dimension"
    return Throughput(1 / step, 1 / per_sample, source)


def throughput(cfg: SweepConfig, measure: bool) -> Throughput | None:
    """``sweep.throughput`` when configured, else a short timed run here when ``measure``, else None."""
    given = cfg.sweep.throughput
    if given is not None and not measure:
        return Throughput(given.train_steps_per_second, given.samples_per_second, f"configured: {given.measured_on}")
    return measure_throughput(cfg.run_config({})) if measure else None


def cost_lines(cfg: SweepConfig, hours: tuple[float, float], spec: ClusterSpec | None) -> list[str]:
    """The bill for expected and worst-case trial-hours on the node type the trials land on, plus the head."""
    res = cfg.sweep.resources_per_trial
    gpu_hours = (f"GPU-hours: {hours[0] * res.gpu:,.1f} expected, {hours[1] * res.gpu:,.1f} with no pruning "
                 f"({res.gpu:g} GPU per trial)")
    lines = [gpu_hours] if res.gpu else []
    if spec is None:
        return lines
    placement = place(spec, res.cpu, res.gpu, cfg.sweep.max_concurrent)
    landed = next((n for n in placement.nodes if n != spec.head), None) or next(iter(placement.nodes), None)
    node, head = (spec.types.get(landed) if landed else None), spec.types[spec.head]
    if node is None or node.price_per_hour is None or head.price_per_hour is None:
        return lines + [f"cost: give every node type a price in {spec.source.parent.name}/cluster.env (DIFFUSION_SWEEP_NODE_PRICES)"]
    per_trial_hour = node.price_per_hour / placement.per_node[landed]
    bills = [h * per_trial_hour + h / cfg.sweep.max_concurrent * head.price_per_hour for h in hours]
    bill = (f"cost: ~${bills[0]:,.0f} expected, ~${bills[1]:,.0f} with no pruning ({landed} at ${node.price_per_hour:g}/h "
            f"for {placement.per_node[landed]} trial(s), the head ({spec.head}) at ${head.price_per_hour:g}/h while "
            f"{cfg.sweep.max_concurrent} trials run at once; on-demand prices from cluster.env)")
    return [*lines, bill]


def estimate_lines(cfg: SweepConfig, spec: ClusterSpec | None, measure: bool = False) -> list[str]:
    """The whole estimate, as printed by ``--dry-run`` (``measure``: time the model here)."""
    b = budget(cfg)
    rungs = ", ".join(f"{r:,}" for r in b.rungs) or "none (no pruning)"
    lines = [
        f"ASHA rungs at steps: {rungs}; every trial may train to {cfg.run_config({}).train.max_steps:,}",
        (f"trial-steps: {b.expected_steps:,.0f} expected (1/{cfg.sweep.scheduler.reduction_factor:g} go on at each rung), "
         f"{b.worst_steps:,.0f} with no pruning"),
        f"evaluated samples: {b.expected_samples:,.0f} expected, {b.worst_samples:,.0f} with no pruning",
    ]
    speed = throughput(cfg, measure)
    if speed is None:
        lines.append("hours and cost: set sweep.throughput, or pass --measure to time the model on this machine")
    else:
        hours = (speed.hours(b.expected_steps, b.expected_samples), speed.hours(b.worst_steps, b.worst_samples))
        lines += [f"throughput: {speed.train_steps_per_second:.3g} steps/s, {speed.samples_per_second:.3g} samples/s ({speed.source})",
                  f"trial-hours: {hours[0]:,.1f} expected, {hours[1]:,.1f} with no pruning", *cost_lines(cfg, hours, spec)]
    return lines + warmup_warnings(cfg)


def print_cluster_estimate(cfg: SweepConfig, measure: bool) -> None:
    """``--dry-run``'s last part: where the trials land on the cluster's node types, and what the sweep costs."""
    path = resolve_cluster_config(cfg.sweep.cluster_config)
    spec = load_cluster_spec(path) if path.is_file() else None
    res = cfg.sweep.resources_per_trial
    print(f"\nPlacement on {cfg.sweep.cluster_config} ({cfg.sweep.max_concurrent} trials at once):")
    lines = describe_placement(spec, res.cpu, res.gpu, cfg.sweep.max_concurrent) if spec else [f"no cluster config at {path}"]
    print("\n".join(f"  {line}" for line in lines))
    print("\nEstimate:")
    print("\n".join(f"  {line}" for line in estimate_lines(cfg, spec, measure)))

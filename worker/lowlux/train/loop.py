"""The training loop (paper Sec. 4.1): Adam, lr 1e-4 then 1e-5, MSRA init, weight-normalised convs.

A run lives in one directory:

``checkpoint.pt``   model (with weight norm), optimiser, step, RNG states, config, wall time; rewritten
                    atomically every few minutes, so ``--resume`` loses at most that much.
``log.csv``         step, loss, L1, MS-SSIM, lr, seconds per step (every ``log_every`` steps).
``eval.csv``        step, PSNR, SSIM on the fixed evaluation set (GT ratio), every ``eval_every``; with
                    ``ema`` also the averaged weights' scores.
``best.safetensors`` / ``last.safetensors``  folded weights: best eval PSNR so far / latest.

With ``ema`` > 0 the loop keeps an exponential moving average of the weights (as BasicSR and most
restoration work do): late in training, Adam's steps wander around a minimum and the average sits nearer
its centre. ``last.safetensors`` is then the average, and ``best`` whichever of the two scored higher.

Batches are a pure function of (seed, step) (see :mod:`.data`), and the model is initialised from
the seed, so a resumed run continues exactly as an uninterrupted one would (same thread count).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..atomic import replacing
from ..model import LINEAR_CAMERA_WB, SRGB, LowLightNet, apply_weight_norm, msra_init
from ..weights import load_state, save_weights, strip_weight_norm_keys
from .data import PairDataset, SequentialFrom, Source
from .loss import RestorationLoss

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    run_dir: Path
    steps: int = 100_000
    batch: int = 8
    crop: int = 256
    lr: float = 1e-4
    lr_after: float = 1e-5
    lr_drop_at: int | None = None
    """Step where lr becomes ``lr_after``; None = half of ``steps`` (the paper drops at 500K of 1M)."""
    l1_weight: float = 0.8
    msssim_weight: float = 0.2
    seed: int = 0
    workers: int = 1
    threads: int | None = 1
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_minutes: float = 5.0
    init_weights: str | None = None
    """Start a new run from these weights (any format :func:`lowlux.weights.load_state` reads)."""
    ema: float = 0.0
    """Decay of the weights' moving average per step (e.g. 0.999); 0 keeps none."""
    output_space: str = SRGB
    """What the net learns to output (:data:`lowlux.model.OUTPUT_SPACES`)."""
    camera_weight: float = 0.2
    """Linear nets: weight of the camera-RGB L1 beside the loss on the rendered picture."""
    colour_weight: float = 0.0
    """Weight of the low-frequency colour L1 (8-px cells; :class:`.loss.RestorationLoss`)."""
    bf16: bool = False
    """The net's forward and backward in bfloat16 autocast (weights, loss and optimiser stay float32)."""
    compile_loss: bool = False
    """The loss through ``torch.compile`` (:attr:`.loss.RestorationLoss.compile`)."""
    device: str = "cpu"
    """Where the net trains: cpu, cuda, cuda:1, or auto (a GPU when torch sees one). Data are made on the
    CPU (``workers`` processes) whatever the device; checkpoints load on any device."""
    source_names: list[str] = field(default_factory=list)

    @property
    def drop_at(self) -> int:
        return self.lr_drop_at if self.lr_drop_at is not None else self.steps // 2

    def lr_at(self, step: int) -> float:
        return self.lr if step < self.drop_at else self.lr_after

    def to_json(self) -> dict:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


EvalFn = Callable[[LowLightNet], dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_model(seed: int, init_weights: str | Path | None = None, output_space: str = SRGB) -> LowLightNet:
    """MSRA-initialised net (or given weights) with weight norm on every conv, reproducible from the seed.

    Weights of another output space are a fine start: the architecture is the same and most of what
    the net knows (denoising, demosaicking) carries over."""
    torch.manual_seed(seed)
    model = msra_init(LowLightNet(output_space))
    if init_weights is not None:
        model.load_state_dict(load_state(init_weights))
    return apply_weight_norm(model)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, model: LowLightNet, opt: torch.optim.Optimizer, step: int,
                    config: TrainConfig, extra: dict) -> None:
    with replacing(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "rng": _rng_state(), "config": config.to_json(), **extra}, tmp)


def new_ema(model: LowLightNet, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """A moving average of ``model``'s weights: its first update copies them, each later one moves
    the average ``1 - decay`` of the way towards them."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class CsvLog:
    """Append-only CSV; on resume, rows past the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, columns: Sequence[str], keep_until: int | None) -> None:
        self.path, self.columns = path, list(columns)
        rows: list[list[str]] = []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and int(r[0]) <= keep_until]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows(rows)

    def write(self, **values) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([values.get(c, "") for c in self.columns])


def _progress(total: int, initial: int):
    from tqdm import tqdm

    # In a log file (nohup) a bar redrawn often is noise: update it at most every 30 s there.
    interactive = os.isatty(2)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.05,
                mininterval=0.5 if interactive else 30.0)


def train(config: TrainConfig, sources: Sequence[Source], weights: Sequence[float],
          resume: bool = False, eval_fn: EvalFn | None = None) -> dict:
    """Train until ``config.steps``; returns a summary (final step, last loss, best eval)."""
    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    from ..engine import resolve_device

    device = resolve_device(config.device)
    ckpt_path = run / CHECKPOINT
    model = new_model(config.seed, None if resume and ckpt_path.is_file() else config.init_weights,
                      config.output_space).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)  # loaded state follows the parameters' device
    step, best, state = 0, -math.inf, None
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state.get("best_psnr", -math.inf))
        _set_rng_state(state["rng"])
        log.info("resumed %s at step %d", run, step)
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from step 0", run)
    else:
        seed_everything(config.seed)
    ema = new_ema(model, config.ema) if config.ema else None
    ema_name = f"ema {config.ema:g}"
    if ema is not None and state is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    elif ema is not None and step > 0:
        log.info("the checkpoint has no weight average: it starts from the step-%d weights", step)
    (run / "config.json").write_text(json.dumps(config.to_json(), indent=2))
    keep = step if state is not None else None
    train_log = CsvLog(run / "log.csv", ["step", "loss", "l1", "msssim", "lr", "sec_per_step"], keep)
    eval_log = CsvLog(run / "eval.csv", ["step", "psnr", "ssim", "wall_s", "ema_psnr", "ema_ssim", "chart_de00",
                                         "ema_chart_de00"], keep)

    dataset = PairDataset(sources, weights, config.crop, config.seed)
    loader = DataLoader(dataset, batch_size=config.batch, sampler=SequentialFrom(step * config.batch),
                        num_workers=config.workers, persistent_workers=config.workers > 0,
                        prefetch_factor=4 if config.workers > 0 else None, pin_memory=device.type == "cuda")
    loss_fn = RestorationLoss(config.l1_weight, config.msssim_weight, render=config.output_space == LINEAR_CAMERA_WB,
                              camera_weight=config.camera_weight, colour_weight=config.colour_weight,
                              compile=config.compile_loss)
    # wall_s in eval.csv counts the whole run, across resumes
    started = time.time() - (float(state.get("wall_s", 0.0)) if state is not None else 0.0)
    last_ckpt = time.time()
    window: list[float] = []
    parts: dict[str, float] = {}
    loss_value = float("nan")

    def checkpoint() -> None:
        extra = {"best_psnr": best, "wall_s": time.time() - started}
        if ema is not None:
            extra["ema"] = ema.state_dict()
        save_checkpoint(ckpt_path, model, opt, step, config, extra)
        export_weights(model if ema is None else ema.module, run / "last.safetensors",
                       {"steps": str(step), "weights": "trained" if ema is None else ema_name})

    def score(net: LowLightNet) -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            scores = eval_fn(net)
        net.train()
        return scores

    def evaluate_now() -> None:
        nonlocal best
        if eval_fn is None:
            return
        t = time.time()
        scores = score(model)
        averaged = score(ema.module) if ema is not None else None
        eval_log.write(step=step, psnr=f"{scores['psnr']:.4f}", ssim=f"{scores['ssim']:.5f}",
                       wall_s=f"{time.time() - started:.0f}",
                       ema_psnr=f"{averaged['psnr']:.4f}" if averaged else "",
                       ema_ssim=f"{averaged['ssim']:.5f}" if averaged else "",
                       chart_de00=f"{scores['chart_de00']:.3f}" if "chart_de00" in scores else "",
                       ema_chart_de00=f"{averaged['chart_de00']:.3f}" if averaged and "chart_de00" in averaged else "")
        log.info("step %d: eval PSNR %.3f dB, SSIM %.4f%s (%.1f s)", step, scores["psnr"], scores["ssim"],
                 f"; averaged {averaged['psnr']:.3f} dB, {averaged['ssim']:.4f}" if averaged else "",
                 time.time() - t)
        candidates = [("trained", model, scores)] + ([(ema_name, ema.module, averaged)] if averaged else [])
        kind, net, top = max(candidates, key=lambda c: c[2]["psnr"])
        if top["psnr"] > best:
            best = top["psnr"]
            export_weights(net, run / "best.safetensors",
                           {"steps": str(step), "eval_psnr": f"{best:.4f}", "eval_ssim": f"{top['ssim']:.5f}",
                            "weights": kind})

    model.train()
    bar = _progress(config.steps, step)
    batches = iter(loader)
    try:
        while step < config.steps:
            t0 = time.time()
            x, y, cam_to_rgb, gain = (t.to(device, non_blocking=True) for t in next(batches))
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = model(x)
            loss, parts = loss_fn(out.float(), y, cam_to_rgb, gain)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}")
            window.append(time.time() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if step % config.log_every == 0 or step == config.steps:
                train_log.write(step=step, loss=f"{loss_value:.6f}", l1=f"{parts.get('l1', 0):.6f}",
                                msssim=f"{parts.get('msssim', float('nan')):.6f}", lr=f"{config.lr_at(step - 1):g}",
                                sec_per_step=f"{np.mean(window):.4f}")
                window.clear()
            if config.eval_every and step % config.eval_every == 0:
                evaluate_now()
                checkpoint()
                last_ckpt = time.time()
            elif time.time() - last_ckpt > config.checkpoint_minutes * 60:
                checkpoint()
                last_ckpt = time.time()
    finally:
        bar.close()
        if step > 0 and math.isfinite(loss_value):  # never overwrite a good checkpoint with a diverged net
            checkpoint()
    return {"step": step, "loss": loss_value, "best_psnr": best, **parts}


def folded_copy(model: LowLightNet) -> LowLightNet:
    """A plain (weight norm folded) copy of a training model, for evaluation."""
    plain = LowLightNet(model.output_space)
    plain.load_state_dict(strip_weight_norm_keys(model.state_dict()))
    return plain.eval()


def export_weights(model: LowLightNet, path: Path, metadata: dict[str, str]) -> Path:
    """Folded safetensors weights of a training model, loadable by :func:`lowlux.weights.load_model`."""
    return save_weights(model, path, metadata)


def checkpoint_model(path: Path) -> LowLightNet:
    """The folded net of a run's checkpoint."""
    state = load_checkpoint(path)
    model = new_model(0, output_space=state.get("config", {}).get("output_space", SRGB))
    model.load_state_dict(state["model"])
    return folded_copy(model)

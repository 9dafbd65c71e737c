"""The training loop: it learns, it resumes exactly, it exports loadable weights."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from lowlux.train.data import Pair
from lowlux.train.loop import TrainConfig, checkpoint_model, train
from lowlux.train.loss import RestorationLoss, msssim_levels
from lowlux.weights import load_model


@dataclass
class FixedSource:
    """Always the same pair: a tiny fixed batch to overfit."""

    pair: Pair
    name: str = "fixed"

    def sample(self, rng, size):
        return self.pair


@dataclass
class RandomSource:
    """A different smooth pair per draw (for the resume test)."""

    name: str = "random"

    def sample(self, rng, size):
        target = rng.random((size // 8, size // 8, 3), dtype=np.float32).repeat(8, 0).repeat(8, 1)
        dark = (target.mean(axis=2) / 100 + rng.normal(0, 0.001, (size, size))).astype(np.float32)
        return Pair(np.clip(dark, 0, 1), 100.0, target)


def fixed_pair(size: int = 64) -> Pair:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    target = np.stack([0.2 + 0.6 * xx, 0.5 * np.ones_like(xx), 0.3 + 0.4 * yy], -1).astype(np.float32)
    dark = np.clip(target.mean(-1) / 100 + rng.normal(0, 5e-4, (size, size)), 0, 1).astype(np.float32)
    return Pair(dark, 100.0, target)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(run_dir=tmp_path / "run", steps=20, batch=2, crop=64, lr=1e-3, lr_drop_at=1000, workers=0,
                threads=1, log_every=1, eval_every=0, checkpoint_minutes=60)
    base.update(kw)
    return TrainConfig(**base)


def losses(run_dir) -> list[float]:
    with open(run_dir / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_twenty_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    cfg = config(tmp_path)
    summary = train(cfg, [FixedSource(fixed_pair())], [1.0])
    curve = losses(cfg.run_dir)
    assert summary["step"] == 20 and len(curve) == 20
    assert np.mean(curve[-3:]) < 0.7 * np.mean(curve[:3])
    # the exported weights load in the inference path and match the checkpoint
    net = load_model(cfg.run_dir / "last.safetensors")
    ref = checkpoint_model(cfg.run_dir / "checkpoint.pt")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-6)


def test_bf16_autocast_trains_too_with_float32_weights(tmp_path):
    cfg = config(tmp_path, bf16=True)
    train(cfg, [FixedSource(fixed_pair())], [1.0])
    curve = losses(cfg.run_dir)
    assert np.mean(curve[-3:]) < 0.7 * np.mean(curve[:3])
    state = torch.load(cfg.run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = config(tmp_path / "a", steps=6, lr=1e-4, log_every=1)
    train(straight, [RandomSource()], [1.0])
    half = config(tmp_path / "b", steps=3, lr=1e-4, log_every=1)
    train(half, [RandomSource()], [1.0])
    first_wall = torch.load(half.run_dir / "checkpoint.pt", weights_only=False)["wall_s"]
    rest = config(tmp_path / "b", steps=6, lr=1e-4, log_every=1)
    train(rest, [RandomSource()], [1.0], resume=True)
    a = torch.load(straight.run_dir / "checkpoint.pt", weights_only=False)
    b = torch.load(rest.run_dir / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert losses(straight.run_dir) == losses(rest.run_dir)  # same log, no duplicated rows
    assert b["wall_s"] > first_wall > 0  # wall time adds up across the resume


def test_eval_hook_writes_the_curve_and_best_weights(tmp_path):
    calls = []

    def fake_eval(model):
        calls.append(model.training)
        return {"psnr": 20.0 + len(calls), "ssim": 0.5}

    cfg = config(tmp_path, steps=4, eval_every=2)
    train(cfg, [FixedSource(fixed_pair())], [1.0], eval_fn=fake_eval)
    assert calls == [False, False]  # evaluated in eval mode
    with open(cfg.run_dir / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["psnr"]) for r in rows] == [("2", "21.0000"), ("4", "22.0000")]
    from lowlux.weights import read_metadata

    assert read_metadata(cfg.run_dir / "best.safetensors")["steps"] == "4"


def test_weight_average_follows_the_trained_weights_by_its_decay(tmp_path):
    cfg = config(tmp_path, steps=3, ema=0.5)
    snapshots = []

    def record(model):  # the trained net after each evaluated step
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"psnr": 20.0, "ssim": 0.5}

    train(TrainConfig(**{**cfg.__dict__, "eval_every": 1}), [FixedSource(fixed_pair())], [1.0], eval_fn=record)
    trained = snapshots[0::2]  # each step scores the trained net, then the average
    expected = trained[0]  # the average starts at the weights after the first step
    for weights in trained[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * weights[k] for k in expected}
    averaged = torch.load(cfg.run_dir / "checkpoint.pt", weights_only=False)["ema"]
    for key, value in expected.items():
        assert torch.allclose(averaged[f"module.{key}"], value, atol=1e-6), key
    assert not torch.allclose(averaged["module.lse.conv.parametrizations.weight.original1"],
                              trained[-1]["lse.conv.parametrizations.weight.original1"])


def test_resume_keeps_the_weight_average(tmp_path):
    straight = config(tmp_path / "a", steps=6, lr=1e-4, ema=0.9)
    train(straight, [RandomSource()], [1.0])
    train(config(tmp_path / "b", steps=3, lr=1e-4, ema=0.9), [RandomSource()], [1.0])
    rest = config(tmp_path / "b", steps=6, lr=1e-4, ema=0.9)
    train(rest, [RandomSource()], [1.0], resume=True)
    a = torch.load(straight.run_dir / "checkpoint.pt", weights_only=False)["ema"]
    b = torch.load(rest.run_dir / "checkpoint.pt", weights_only=False)["ema"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_best_weights_are_whichever_of_trained_and_average_scored_higher(tmp_path):
    from lowlux.weights import read_metadata

    def average_wins(model):
        is_average = not any(p.grad is not None for p in model.parameters())
        return {"psnr": 30.0 if is_average else 25.0, "ssim": 0.5}

    cfg = config(tmp_path, steps=2, eval_every=2, ema=0.99)
    train(cfg, [FixedSource(fixed_pair())], [1.0], eval_fn=average_wins)
    with open(cfg.run_dir / "eval.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["psnr"], row["ema_psnr"]) == ("25.0000", "30.0000")
    meta = read_metadata(cfg.run_dir / "best.safetensors")
    assert (meta["weights"], meta["eval_psnr"]) == ("ema 0.99", "30.0000")
    assert read_metadata(cfg.run_dir / "last.safetensors")["weights"] == "ema 0.99"


def test_weight_average_decay_must_lie_between_zero_and_one(tmp_path):
    with pytest.raises(ValueError, match="ema decay"):
        train(config(tmp_path, ema=1.5), [FixedSource(fixed_pair())], [1.0])


def test_msssim_scales_fit_the_crop():
    assert msssim_levels(256) == 5 and msssim_levels(161) == 5 and msssim_levels(160) == 4
    assert msssim_levels(64) == 3 and msssim_levels(12) == 1
    loss = RestorationLoss()
    x = torch.rand(2, 3, 64, 64)
    total, parts = loss(x, x)
    assert float(total) == pytest.approx(0.0, abs=1e-5) and parts["msssim"] == pytest.approx(1.0, abs=1e-5)
    total, _ = loss(x, 1 - x)
    assert float(total) > 0.1


def test_msssim_is_pytorch_msssims_at_five_scales_in_value_and_gradient():
    from lowlux.train.loss import msssim
    from pytorch_msssim import ms_ssim

    torch.manual_seed(0)
    y = torch.rand(2, 3, 176, 176)
    x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_()
    ours, = torch.autograd.grad(msssim(x, y, 5), x)
    theirs, = torch.autograd.grad(ms_ssim(x, y, data_range=1.0), x)
    with torch.no_grad():
        assert float(msssim(x, y, 5)) == pytest.approx(float(ms_ssim(x, y, data_range=1.0)), abs=1e-6)
        assert float(msssim(x, y, 3)) != pytest.approx(float(msssim(x, y, 5)), abs=1e-4)  # fewer scales: another figure
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-9)


def test_export_ships_best_weights_with_a_model_card(tmp_path):
    from lowlux.train.card import export
    from lowlux.train.evaluate import EvalItem, run_eval
    from lowlux.train.unprocess import sony_colour

    scores = iter([21.0, 23.0, 22.0])
    cfg = config(tmp_path, steps=6, eval_every=2)
    train(cfg, [FixedSource(fixed_pair())], [1.0], eval_fn=lambda m: {"psnr": next(scores), "ssim": 0.5})
    pair = fixed_pair()
    item = EvalItem("flat", pair.dark, pair.ratio, pair.target, sony_colour())
    run_eval([item], cfg.run_dir / "best.safetensors", None, tmp_path / "eval", baseline=False)
    shipped = export(cfg.run_dir, tmp_path / "eval" / "eval.json", tmp_path / "weights", "a test machine")
    card = (tmp_path / "weights" / "README.md").read_text()
    assert "| ours | GT exposure ratio |" in card and "a test machine" in card
    assert "Steps: 4 (best eval PSNR)" in card  # the step with the best score, not the last one
    assert "loss 0.8 L1 + 0.2 (1 - MS-SSIM), seed" in card  # the paper's loss for an sRGB run
    assert "| 6 | 22.00 | 0.5000 |" in card
    assert "| 4 | 23.00 | 0.5000 |" in card  # the shipped step is always in the curve
    load_model(shipped)


def test_a_new_evaluation_of_the_shipped_weights_rewrites_only_the_cards_evaluation_tables(tmp_path):
    """The pipeline around the net changed, the weights did not: the card's scores follow, its
    training record stays; an evaluation of other weights is refused."""
    from lowlux.train.card import export, refresh_evaluation
    from lowlux.train.cli import main
    from lowlux.train.evaluate import EvalItem, run_eval
    from lowlux.train.unprocess import sony_colour

    cfg = config(tmp_path, steps=2, eval_every=2)
    train(cfg, [FixedSource(fixed_pair())], [1.0], eval_fn=lambda m: {"psnr": 21.0, "ssim": 0.5})
    pair = fixed_pair()
    items = [EvalItem("flat", pair.dark, pair.ratio, pair.target, sony_colour())]
    run_eval(items, cfg.run_dir / "best.safetensors", None, tmp_path / "first", baseline=False)
    shipped = export(cfg.run_dir, tmp_path / "first" / "eval.json", tmp_path / "weights", "a test machine",
                     "A closing note.")
    before = (tmp_path / "weights" / "README.md").read_text()
    run_eval([EvalItem("other", pair.dark, pair.ratio, pair.target, sony_colour())], shipped, None,
             tmp_path / "again", baseline=False)
    refresh_evaluation(tmp_path / "weights", tmp_path / "again" / "eval.json")
    after = (tmp_path / "weights" / "README.md").read_text()
    assert "dark versions made with fixed seeds): other." in after and "): flat." in before
    assert after.split("## Evaluation")[0] == before.split("## Evaluation")[0]  # the training record
    assert after.split("this model only):")[1] == before.split("this model only):")[1]  # curve, notes, credits
    run_eval(items, cfg.run_dir / "last.safetensors", None, tmp_path / "other-weights", baseline=False)
    with pytest.raises(ValueError, match="not the shipped"):
        refresh_evaluation(tmp_path / "weights", tmp_path / "other-weights" / "eval.json")
    assert main(["export", "--eval-json", str(tmp_path / "other-weights" / "eval.json"), "--weights-dir",
                 str(tmp_path / "weights"), "--refresh-evaluation"]) == 2
    assert main(["export", "--eval-json", str(tmp_path / "again" / "eval.json")]) == 2  # nothing to ship from
    assert (tmp_path / "weights" / "README.md").read_text() == after


def test_the_card_names_the_finishing_steps_its_scores_include():
    """Evaluations from before a finishing step existed have no key for it: scored without it."""
    from lowlux.train.card import _anchoring

    every = {"anchor": True, "chroma_smoothing": True, "luma_smoothing": True}
    assert "as the pipeline runs it" in _anchoring(every, "linear-camera-wb")
    assert "with colour anchoring (`lowlux.anchor`) only" in _anchoring({"anchor": True}, "linear-camera-wb")
    assert "net's output alone" in _anchoring({"anchor": False}, "linear-camera-wb")
    assert _anchoring(every, "srgb") == ""


def test_the_model_card_says_when_the_shipped_weights_are_the_average(tmp_path):
    from lowlux.train.card import model_card
    from lowlux.train.evaluate import EvalItem, run_eval
    from lowlux.train.unprocess import sony_colour

    def average_wins(model):
        return {"psnr": 25.0 if any(p.grad is not None for p in model.parameters()) else 26.0, "ssim": 0.5}

    cfg = config(tmp_path, steps=2, eval_every=2, ema=0.99)
    train(cfg, [FixedSource(fixed_pair())], [1.0], eval_fn=average_wins)
    pair = fixed_pair()
    run_eval([EvalItem("flat", pair.dark, pair.ratio, pair.target, sony_colour())],
             cfg.run_dir / "best.safetensors", None, tmp_path / "eval", baseline=False)
    card = model_card(cfg.run_dir, tmp_path / "eval" / "eval.json", "a test machine")
    assert "moving average of the weights (decay 0.99 per step)" in card
    assert "the shipped ones are the average" in card
    assert "| 2 | 25.00 | 0.5000 | 0.00 | 26.00, 0.5000 |" in card


def test_the_model_card_tells_an_lr_drop_at_step_0_from_the_default_half_way(tmp_path):
    from lowlux.train.card import model_card
    from lowlux.train.evaluate import EvalItem, run_eval
    from lowlux.train.unprocess import sony_colour

    cfg = config(tmp_path, steps=4, eval_every=2, lr_drop_at=0)  # a stage resumed at the small lr throughout
    train(cfg, [FixedSource(fixed_pair())], [1.0], eval_fn=lambda m: {"psnr": 20.0, "ssim": 0.5})
    pair = fixed_pair()
    run_eval([EvalItem("flat", pair.dark, pair.ratio, pair.target, sony_colour())],
             cfg.run_dir / "best.safetensors", None, tmp_path / "eval", baseline=False)
    card = model_card(cfg.run_dir, tmp_path / "eval" / "eval.json", "a test machine")
    assert "1e-05 from step\n  0, loss" in card


def test_a_new_run_can_start_from_shipped_weights(tmp_path):
    first = config(tmp_path / "a", steps=3)
    train(first, [FixedSource(fixed_pair())], [1.0])
    second = config(tmp_path / "b", steps=1, lr=0.0, lr_after=0.0,
                    init_weights=str(first.run_dir / "last.safetensors"))
    train(second, [FixedSource(fixed_pair())], [1.0])  # lr 0: the weights pass through unchanged
    a, b = checkpoint_model(first.run_dir / "checkpoint.pt"), checkpoint_model(second.run_dir / "checkpoint.pt")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_the_linear_loss_scores_the_rendered_picture():
    import torch

    from lowlux import curves
    from lowlux.train.loss import RestorationLoss

    out, target = torch.rand(2, 3, 32, 32) * 0.05, torch.rand(2, 3, 32, 32) * 0.05
    eye, one = torch.eye(3).expand(2, 3, 3), torch.ones(2)
    rendered, _ = RestorationLoss(1.0, 0.0, render=True, camera_weight=0.0)(out, target, eye, one)
    plain, _ = RestorationLoss(1.0, 0.0)(curves.encode(out), curves.encode(target))
    assert torch.allclose(rendered, plain)  # an identity colour stage: the tone curve alone
    assert float(rendered) > 3 * float(RestorationLoss(1.0, 0.0)(out, target)[0])  # shadows weigh more


def test_the_rendered_loss_weighs_errors_as_each_cameras_matrix_amplifies_them():
    import torch

    from lowlux.train.loss import RestorationLoss

    target = torch.full((2, 3, 32, 32), 0.2)
    out = target.clone()
    out[:, 0] += 0.01  # the same error in camera red for both examples
    saturating = torch.tensor([[1.9, -0.7, -0.2], [-0.3, 1.6, -0.3], [0.0, -0.5, 1.5]])
    mild = torch.eye(3)
    loss = RestorationLoss(1.0, 0.0, render=True, camera_weight=0.0)
    strong, _ = loss(out[:1], target[:1], saturating[None], torch.ones(1))
    weak, _ = loss(out[:1], target[:1], mild[None], torch.ones(1))
    assert float(strong) > 2 * float(weak)
    with pytest.raises(ValueError, match="colour matrix"):
        loss(out, target)


def test_the_rendered_loss_keeps_a_gradient_where_the_render_clips():
    import torch

    from lowlux.train.loss import RestorationLoss

    out = torch.full((1, 3, 16, 16), 0.9, requires_grad=True)
    target = torch.full((1, 3, 16, 16), 0.95)
    clipping = torch.eye(3)[None] * 3  # every channel of the render saturates at 1
    RestorationLoss(1.0, 0.0, render=True, camera_weight=0.2)(out, target, clipping, torch.ones(1))[0].backward()
    assert float(out.grad.abs().sum()) > 0
    out.grad = None
    RestorationLoss(1.0, 0.0, render=True, camera_weight=0.0)(out, target, clipping, torch.ones(1))[0].backward()
    assert float(out.grad.abs().sum()) == 0


def test_the_colour_term_weighs_a_shift_of_flat_colour_more_than_noise_of_the_same_size():
    from lowlux.train.loss import RestorationLoss

    torch.manual_seed(0)
    target = torch.full((1, 3, 32, 32), 0.4)
    shifted = target + torch.tensor([0.05, -0.05, 0.05]).view(1, 3, 1, 1)  # every pixel a little magenta
    noisy = target + 0.05 * torch.sign(torch.randn(1, 3, 32, 32))  # the same error per pixel, no mean shift
    plain = RestorationLoss(1.0, 0.0)
    colour = RestorationLoss(1.0, 0.0, colour_weight=1.0)
    assert torch.isclose(plain(shifted, target)[0], plain(noisy, target)[0], rtol=0.05)
    assert float(colour(shifted, target)[0]) > 1.5 * float(colour(noisy, target)[0])
    assert colour(shifted, target)[1]["colour_l1"] > 0


def test_the_model_card_states_a_linear_runs_whole_loss():
    from lowlux.train.card import _loss

    linear = {"l1_weight": 0.8, "msssim_weight": 0.2, "output_space": "linear-camera-wb", "camera_weight": 0.2,
              "colour_weight": 1.0}
    assert _loss(linear) == ("0.8 L1 + 0.2 (1 - MS-SSIM) on the rendered picture + 0.2 L1 in camera RGB "
                             "(tone curve) + 1 L1 of 8 px cell means")


def test_the_model_card_says_whether_its_scores_include_colour_anchoring():
    from lowlux.model import LINEAR_CAMERA_WB, SRGB
    from lowlux.train.card import _anchoring

    assert "with colour anchoring" in _anchoring({"anchor": True}, LINEAR_CAMERA_WB)
    assert "the net's output alone" in _anchoring({"anchor": False}, LINEAR_CAMERA_WB)
    assert "the net's output alone" in _anchoring({}, LINEAR_CAMERA_WB)  # evaluated before anchoring existed
    assert _anchoring({"anchor": True}, SRGB) == ""  # the paper's mode is never anchored


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: a cuda run is allowed here")
@pytest.mark.parametrize("device, reason", [
    ("cuda", "no CUDA GPU is available to torch"),
    ("gpu", "Expected one of"),
])
def test_training_on_a_device_torch_cannot_use_is_refused_before_any_data_is_read(tmp_path, caplog, device, reason):
    from lowlux.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--source", f"clean={photos}", "--device", device,
                 "--steps", "1", "--eval-every", "0"]) == 2
    assert f"--device {device}:" in caplog.text and reason in caplog.text
    assert not (tmp_path / "run").exists()


def test_auto_trains_on_the_cpu_without_a_gpu_and_says_so_in_the_run_config(tmp_path):
    import json

    cfg = config(tmp_path, steps=3, device="auto")
    train(cfg, [FixedSource(fixed_pair())], [1.0])
    assert json.loads((cfg.run_dir / "config.json").read_text())["device"] == "auto"
    assert len(losses(cfg.run_dir)) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_trained_on_the_gpu_resumes_on_the_cpu(tmp_path):
    gpu = config(tmp_path, steps=4, device="cuda", eval_every=2)
    train(gpu, [FixedSource(fixed_pair())], [1.0], eval_fn=lambda net: {"psnr": 1.0, "ssim": 0.5})
    cpu = config(tmp_path, steps=6, device="cpu")
    train(cpu, [FixedSource(fixed_pair())], [1.0], resume=True)
    assert len(losses(cpu.run_dir)) == 6
    assert load_model(cpu.run_dir / "last.safetensors") is not None


def test_the_compiled_loss_is_the_same_loss_in_value_and_gradient():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 64, 64) * 0.7
    out = (target + 0.05 * torch.randn_like(target) - 0.01).requires_grad_()
    saturating = torch.tensor([[1.6, -0.4, -0.2], [-0.2, 1.5, -0.3], [0.0, -0.5, 1.5]])
    cam_to_rgb, gain = saturating.expand(2, 3, 3).contiguous(), torch.tensor([1.0, 1.3])
    whole = dict(render=True, camera_weight=0.2, colour_weight=1.0)  # every term of a linear net's loss

    eager_total, eager_parts = RestorationLoss(**whole)(out, target, cam_to_rgb, gain)
    eager_grad, = torch.autograd.grad(eager_total, out)
    compiled_total, compiled_parts = RestorationLoss(**whole, compile=True)(out, target, cam_to_rgb, gain)
    compiled_grad, = torch.autograd.grad(compiled_total, out)

    assert set(compiled_parts) == {"camera_l1", "l1", "colour_l1", "msssim"} == set(eager_parts)
    assert compiled_parts == pytest.approx(eager_parts, rel=1e-5)
    assert float(compiled_total.detach()) == pytest.approx(float(eager_total.detach()), rel=1e-5)
    assert torch.allclose(compiled_grad, eager_grad, rtol=1e-3, atol=1e-3 * float(eager_grad.abs().max()))


def test_a_crop_smaller_than_the_ssim_window_is_refused_before_any_work():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        RestorationLoss(compile=True)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_a_loss_the_compiler_cannot_compile_runs_eagerly_with_a_warning(monkeypatch, caplog):
    def no_compiler(fn):
        def compiled(*args):
            raise RuntimeError("C++ compile error: g++ not found")
        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    total, parts = RestorationLoss(compile=True)(x, y)
    assert float(total) == pytest.approx(float(RestorationLoss()(x, y)[0]))
    assert "could not compile the loss (RuntimeError: C++ compile error: g++ not found)" in caplog.text
    caplog.clear()
    loss = RestorationLoss(compile=True)
    loss(x, y), loss(x, y)
    assert caplog.text.count("could not compile") == 1  # said once, then eager for the rest of the run


def test_an_eager_loss_raises_its_own_error_without_blaming_the_compiler(caplog):
    with pytest.raises(RuntimeError):
        RestorationLoss()(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 30))
    assert "could not compile" not in caplog.text


def test_a_runs_record_names_the_shared_data_relative_to_the_repository_not_by_this_machines_path():
    from lowlux.train.cli import REPO, SHARED_DATA, recorded_path

    assert recorded_path(SHARED_DATA / "clean") == "../shared/data/clean"  # a kept run names no machine
    assert recorded_path(REPO / "runs" / "x") == "runs/x"
    assert recorded_path("/elsewhere/my photos") == "/elsewhere/my photos"  # a user's own folder, as given


@pytest.mark.parametrize("has_bf16, bf16, device, warned", [
    (False, True, "cpu", True),    # emulated: slower than float32, so the user is told
    (True, True, "cpu", False),    # AMX or AVX-512 BF16: what --bf16 is for
    (False, False, "cpu", False),  # float32 asked for
    (False, True, "cuda", False),  # a GPU's bf16 is its own
])
def test_bf16_training_on_a_cpu_that_would_emulate_it_is_warned_about(monkeypatch, caplog, has_bf16, bf16, device,
                                                                       warned):
    from lowlux.backends import choice
    from lowlux.train.cli import _warn_emulated_bf16

    monkeypatch.setattr(choice, "cpu_has_bf16", lambda: has_bf16)
    _warn_emulated_bf16(bf16, device)
    assert ("no bf16 instructions" in caplog.text) == warned

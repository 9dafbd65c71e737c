"""Ship a run's best weights as the default weights, with a model card made from measured numbers.

The card is generated, not written by hand, so every number in it comes from the run's logs
(``config.json``, ``log.csv``, ``eval.csv``) and an ``eval.json`` written by ``lowlux eval``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from ..model import LINEAR_CAMERA_WB, SRGB
from ..weights import read_metadata
from .evaluate import chart_table, markdown_table

CREDITS = """Photographs (unprocessed into raws for training; every 6th of each folder held out for evaluation):
Kodak test images (Kodak, released for unrestricted use); McMaster colour test set (research data set);
CLIC 2025 validation and test sets (photographs from Unsplash, Unsplash License; credit: Unsplash and the
CLIC challenge); GB82 image set by Gianni Rosato (CC0 1.0); Cloudinary Image Dataset CID22 (CC BY-SA 4.0;
credit: Cloudinary, CID22). Real raws: a Canon EOS 550D colour-chart DNG (tinydng project, MIT; evaluation
only) and four GoPro DNGs (GoPro's gpr project, Apache-2.0 or MIT)."""

NOISE = {
    SRGB: "the Sony α7S II physics-based noise model of Wei et al. (CVPR 2020)",
    LINEAR_CAMERA_WB: ("the noise of many cameras: the Sony α7S II calibration of Wei et al.'s model, the five "
                       "cameras of the ELD release (Wei et al., CVPR 2020; MIT) and darktable's Poisson-Gaussian "
                       "profiles from ISO 800 up (read at training time where darktable is installed, not copied)"),
}
TARGETS = {
    SRGB: "targets rendered the way SID rendered its ground truth (LibRaw, camera WB, no auto-brightness)",
    LINEAR_CAMERA_WB: ("inputs white-balanced with the shot's multipliers, targets in linear white-balanced camera "
                       "RGB (LibRaw's AHD demosaic of the clean raw; for photographs, unprocessed through real "
                       "cameras' colour matrices), scored after each example's own colour stage on lowlux's tone "
                       "curve; colour then comes from each raw's own matrices (`lowlux.colour`)"),
}


def _loss(config: dict) -> str:
    """The loss as the run's configuration states it."""
    text = f"{config['l1_weight']:g} L1 + {config['msssim_weight']:g} (1 - MS-SSIM)"
    if config.get("output_space", SRGB) == LINEAR_CAMERA_WB:
        text += (f" on the rendered picture + {config.get('camera_weight', 0):g} L1 in camera RGB (tone curve)")
    if config.get("colour_weight"):
        text += f" + {config['colour_weight']:g} L1 of 8 px cell means"
    return text


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _curve_table(eval_rows: list[dict[str, str]], every: int, best_step: str = "") -> str:
    """Every ``every``-th evaluation, the last one and the shipped (best) one."""
    averaged = any(r.get("ema_psnr") for r in eval_rows)
    chart = any(r.get("chart_de00") for r in eval_rows)
    head = ("| step | eval PSNR (dB) | eval SSIM | hours |" + (" chart ΔE00 |" if chart else "")
            + (" averaged weights: PSNR, SSIM |" if averaged else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    picked = [r for i, r in enumerate(eval_rows)
              if i % every == 0 or i == len(eval_rows) - 1 or r["step"] == best_step]
    for r in picked:
        line = f"| {r['step']} | {float(r['psnr']):.2f} | {float(r['ssim']):.4f} | {float(r['wall_s']) / 3600:.2f} |"
        if chart:
            line += f" {float(r['chart_de00']):.2f} |" if r.get("chart_de00") else " |"
        if averaged:
            line += f" {float(r['ema_psnr']):.2f}, {float(r['ema_ssim']):.4f} |" if r.get("ema_psnr") else " |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _source(spec: str) -> str:
    """'raw=/some/where/data/raw@1' -> '`raw` (data/raw, weight 1)': no machine paths in the card."""
    kind, _, rest = spec.partition("=")
    path, _, weight = rest.rpartition("@")
    p = Path(path)
    return f"`{kind}` ({p.parent.name}/{p.name}, weight {weight})"


def _which(meta: dict[str, str], config: dict) -> str:
    """Which weights were shipped when the run also kept a moving average of them."""
    if not config.get("ema"):
        return ""
    kind = meta.get("weights", "trained")
    return (f"; the run kept a moving average of the weights (decay {config['ema']:g} per step) beside them, "
            f"and the shipped ones are the {'average' if kind.startswith('ema') else 'trained weights'}")


def _chart_section(results: dict) -> str:
    """The virtual-camera ColorChecker table, when the evaluation ran it."""
    if not results.get("chart"):
        return ""
    return ("ColorChecker through real cameras' matrices (mean CIEDE2000 over the 24 patches, lower is better; "
            "`lowlux.train.chart`):\n\n" + chart_table(results) + "\n")


def _anchoring(results: dict, space: str) -> str:
    """Which of the pipeline's finishing steps "ours" was scored with (evaluations from before a step
    existed have no key for it: scored without it)."""
    if space == SRGB:
        return ""
    names = {"anchor": "colour anchoring (`lowlux.anchor`)",
             "chroma_smoothing": "chroma smoothing (`lowlux.smoothing`)"}
    steps = [name for key, name in names.items() if results.get(key)]
    extra = " and the opt-in brightness smoothing" if results.get("luma_smoothing") else ""
    if len(steps) == len(names):
        return f"\"ours\" as the pipeline runs it, with {' and '.join(steps)}{extra} (README).\n\n"
    if steps:
        return (f"\"ours\" with {steps[0]}{extra} only; by default the pipeline runs both of "
                f"{' and '.join(names.values())} (README, \"Colour anchoring\" and \"Fine smoothing\").\n\n")
    return ("\"ours\" is the net's output alone; the pipeline anchors its colour to the raw and smooths it "
            "(README, \"Colour anchoring\" and \"Fine smoothing\").\n\n")


EVALUATION_HEADING = "## Evaluation (`lowlux eval`)"
CURVE_HEADING = "Eval PSNR / SSIM against training steps (GT exposure ratio, this model only):"


def _evaluation_section(results: dict, space: str) -> str:
    """The card's evaluation tables, from its heading down to the training curve's."""
    items = ", ".join(i["name"] for i in results["items"])
    return f"""{EVALUATION_HEADING}

Fixed evaluation set ({len(results['items'])} images, dark versions made with fixed seeds): {items}.
Mean over images; "authors" is their released SID-Sony checkpoint (evaluation only, non-commercial),
"baseline" is {results.get('baseline', 'LibRaw + non-local means')}.

{markdown_table(results)}
{_chart_section(results)}{_anchoring(results, space)}"""


def _same_file(a: Path, b: Path) -> bool:
    import hashlib

    return all(p.is_file() for p in (a, b)) and hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(
        b.read_bytes()).digest()


def refresh_evaluation(weights_dir: Path, eval_json: Path) -> Path:
    """Rewrite the shipped card's evaluation tables from a new ``eval.json`` of the same weights (the
    pipeline around the net changed, the weights did not); the training record and notes stay."""
    card, weights = weights_dir / "README.md", weights_dir / "lowlux-default.safetensors"
    results = json.loads(eval_json.read_text())
    scored = Path(results.get("weights", {}).get("ours") or "")
    if not _same_file(scored, weights):
        raise ValueError(f"{eval_json}: it scored {scored or 'no weights of ours'}, not the shipped {weights}")
    text = card.read_text()
    start, end = text.find(EVALUATION_HEADING), text.find(CURVE_HEADING)
    if start < 0 or end < start:
        raise ValueError(f"{card}: no generated evaluation section to refresh")
    space = read_metadata(weights).get("output_space", SRGB)
    card.write_text(text[:start] + _evaluation_section(results, space) + text[end:])
    return card


def model_card(run_dir: Path, eval_json: Path, hardware: str, notes: str = "") -> str:
    config = json.loads((run_dir / "config.json").read_text())
    meta = read_metadata(run_dir / "best.safetensors")
    log_rows, eval_rows = _rows(run_dir / "log.csv"), _rows(run_dir / "eval.csv")
    results = json.loads(eval_json.read_text())
    sec = sorted(float(r["sec_per_step"]) for r in log_rows)
    median_sec = sec[len(sec) // 2] if sec else float("nan")
    hours = float(eval_rows[-1]["wall_s"]) / 3600 if eval_rows else 0.0
    last_step = log_rows[-1]["step"] if log_rows else 0
    space = meta.get("output_space", config.get("output_space", SRGB))
    return f"""# lowlux default weights

`lowlux-default.safetensors`: the restoration net of Lamba & Mitra (CVPR 2021) trained by lowlux's
own pipeline (`lowlux train`), weight norm folded. Licence: the project's (MIT); no SID data and
none of the authors' weights were used to make it.

## Training

- Output space: `{space}` (in the weights' metadata).
- Data: {', '.join(_source(s) for s in config['source_names'])}. Real raws made dark (exposure ratio
  100-300 plus {NOISE[space]}) and photographs unprocessed into raws (Brooks et al., CVPR 2019);
  {TARGETS[space]}. The evaluation images are held out (`lowlux.train.split`).
- Steps: {meta.get('steps', '?')} (best eval PSNR) of {last_step} run so far{_which(meta, config)}.
- Batch {config['batch']}, {config['crop']} px crops, Adam lr {config['lr']:g}, {config['lr_after']:g} from step
  {config['steps'] // 2 if config['lr_drop_at'] is None else config['lr_drop_at']}, loss {_loss(config)}, seed {config['seed']},
  {config['threads']} intra-op thread(s).
- Hardware: {hardware}. Median {median_sec:.2f} s per step; {hours:.1f} h of wall time to the last evaluation.

{_evaluation_section(results, space)}{CURVE_HEADING}

{_curve_table(eval_rows, max(1, len(eval_rows) // 15), meta.get('steps', ''))}
{notes}

## Data credits

{CREDITS}
"""


def export(run_dir: Path, eval_json: Path, weights_dir: Path, hardware: str, notes: str = "") -> Path:
    """Copy the run's best weights to ``weights_dir/lowlux-default.safetensors`` and write the card."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / "lowlux-default.safetensors"
    shutil.copyfile(run_dir / "best.safetensors", target)
    (weights_dir / "README.md").write_text(model_card(run_dir, eval_json, hardware, notes))
    return target


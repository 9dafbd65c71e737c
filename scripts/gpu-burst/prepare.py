"""Fill .burst/ with what a borrowed GPU machine needs to train (photographs, noise, starting weights)
and to run the file -> TIFF/DNG bench (the pipeline's wheels).

A borrowed machine gets the working tree and what a call carries (64 MiB in all), not ../shared.
The training photographs go as JPEG (quality 95, no chroma subsampling): 42 MiB instead of 166 MiB
of PNG. Held-out photographs keep their names as 8 x 8 placeholders, so that the split (every 6th
file of a folder, by name) holds out exactly the same photographs there; training never reads them.
The machine has torch, numpy and Pillow but cannot reach a package index: ``--wheels`` downloads the
rest of the pipeline's packages, at the versions installed here, built for its Python (6 MiB).

    python scripts/gpu-burst/prepare.py --init runs/colour-render/last.safetensors
    python scripts/gpu-burst/prepare.py --checkpoint runs/gpu-burst2/checkpoint.pt --wheels   # resume, and bench files
    python scripts/gpu-burst/prepare.py --checkpoint weights/training/colour-photo/checkpoint.pt  # the kept run
    python scripts/gpu-burst/prepare.py --wheels                                              # the file bench alone
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "worker"))

from lowlux.train.split import PHOTO_SUFFIXES, photo_is_held_out  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
CARRY_LIMIT_MIB = 63  # one call carries 64 MiB with the working tree; a MiB to spare
PIPELINE_PACKAGES = ("rawpy", "tifffile", "tifftools", "pyexiv2", "pyzmq", "psutil")
"""What the file -> TIFF/DNG path imports beyond what the GPU machine has (torch, numpy, Pillow, tqdm,
safetensors: its training ran with them)."""
DEVICE_PYTHON = "3.12"  # the borrowed machine's (runs/gpu-burst2/machine.txt)


def photos(src: Path, dst: Path) -> int:
    """Training photographs as JPEG, held-out ones as placeholders; returns how many were written."""
    count = 0
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in PHOTO_SUFFIXES:
                continue
            out = dst / folder.name / f"{path.stem}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            held = photo_is_held_out(path)
            image = Image.new("RGB", (8, 8)) if held else Image.open(path).convert("RGB")
            image.save(out, quality=95, subsampling=0)
            count += not held
    return count


def working_tree_files(repo: Path = REPO) -> list[str]:
    """What a call carries besides ``.burst``: the tracked files and the untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (repo / name).is_file()]


def mib(paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2**20


def in_working_tree(path: Path, repo: Path = REPO) -> str | None:
    """``path`` relative to the repository when a call carries it anyway (tracked, or untracked and not
    ignored): the kept training run (weights/training/) need not be carried twice."""
    try:
        relative = path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return None
    return relative if relative in set(working_tree_files(repo)) else None


def wheel_command(dst: Path, packages: tuple[str, ...] = PIPELINE_PACKAGES, python: str = DEVICE_PYTHON) -> list[str]:
    """``pip download`` of ``packages``, pinned to the versions installed here, as binary wheels for an
    x86-64 Linux machine running ``python`` (no dependencies: the machine has numpy)."""
    pins = [f"{name}=={version(name)}" for name in packages]
    platforms = [arg for tag in ("manylinux2014_x86_64", "manylinux_2_28_x86_64") for arg in ("--platform", tag)]
    return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python, *platforms, "--dest", str(dst), *pins]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", type=Path, help="weights a new burst run starts from")
    start.add_argument("--checkpoint", type=Path, help="a burst run's checkpoint.pt to resume")
    p.add_argument("--wheels", action="store_true", help="also carry the pipeline's wheels (the file bench, E2E=)")
    p.add_argument("--python", default=DEVICE_PYTHON, help="the GPU machine's Python (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPO / ".burst")
    args = p.parse_args()
    if not (args.init or args.checkpoint or args.wheels):
        p.error("nothing to prepare: give --init or --checkpoint (training), --wheels (the file bench), or both")
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "run").mkdir(parents=True)
    n = 0
    if args.init or args.checkpoint:
        n = photos(SHARED / "clean", args.out / "photos")
        shutil.copytree(SHARED / "noise" / "eld", args.out / "eld")
    if args.init:
        shutil.copy(args.init, args.out / "init.safetensors")
    elif args.checkpoint:
        carried = in_working_tree(args.checkpoint)
        if carried:  # burst.sh copies it into the run there
            (args.out / "run" / "checkpoint-from").write_text(carried + "\n")
        else:
            shutil.copy(args.checkpoint, args.out / "run" / "checkpoint.pt")
    if args.wheels:
        subprocess.run(wheel_command(args.out / "wheels", python=args.python), check=True)
    burst = mib(f for f in args.out.rglob("*") if f.is_file())
    tree = mib(REPO / name for name in working_tree_files())
    print(f"{args.out}: {n} training photographs, {len(list(args.out.glob('wheels/*.whl')))} wheels, "
          f"{burst:.1f} MiB, with the working tree's {tree:.1f} MiB {burst + tree:.1f} MiB")
    if burst + tree > CARRY_LIMIT_MIB:
        print(f"over {CARRY_LIMIT_MIB} MiB: it will not fit in one call's 64 MiB; prepare the training and the file "
              "bench (--wheels) for two calls", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

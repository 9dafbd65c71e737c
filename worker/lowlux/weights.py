"""Loading and saving the net's weights.

Two formats are read:

* lowlux weights: a safetensors file of the *folded* state dict in our own layer names, with the
  metadata (format version, training steps, ...) in the safetensors header;
* the authors' released checkpoint: a torch pickle ``{'model': state_dict}`` whose convs carry
  old-style weight norm (``weight_g``/``weight_v``). It is read with ``weights_only=True`` so no
  code in the file can run.

Both end up as a plain state dict for :class:`~lowlux.model.LowLightNet`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from .atomic import replacing
from .errors import WeightsError
from .model import SRGB, LowLightNet

log = logging.getLogger(__name__)

FORMAT = "lowlux-net-v1"
DEFAULT_WEIGHTS_NAME = "lowlux-default.safetensors"

# Authors' module prefix -> ours. Dense layers have their conv at index 0 (first layer, no
# activation before it) or 1 (after an activation module), hence the alternation.
_AUTHORS_PREFIXES: list[tuple[str, str]] = [
    (r"conv32x\.0\.0", "hse.reduce.0"),
    (r"conv32x\.1\.0", "hse.reduce.1"),
    (r"RDB(\d)\.dense_layers\.(\d+)\.conv\.[01]", r"hse.rdb\1.dense.\2.conv"),
    (r"RDB(\d)\.conv_1x1\.0", r"hse.rdb\1.fuse"),
    (r"rdball\.0", "hse.fuse"),
    (r"conv_rdb8x\.0", "hse.expand"),
    (r"resblock8x\.conv1\.0", "mse.conv1"),
    (r"resblock8x\.conv2\.0", "mse.conv2"),
    (r"conv32_8_cat\.0\.0", "fb1.reduce"),
    (r"conv32_8_cat\.1\.0", "fb1.expand"),
    (r"conv2x\.0", "lse.conv"),
    (r"conv_2_8_32\.0", "fb2.conv"),
]


def _rename_authors_key(key: str) -> tuple[str, str]:
    """'RDB1.dense_layers.1.conv.1.weight_v' -> ('hse.rdb1.dense.1.conv', 'weight_v')."""
    module, _, param = key.rpartition(".")
    for pattern, replacement in _AUTHORS_PREFIXES:
        if re.fullmatch(pattern, module):
            return re.sub(pattern, replacement, module), param
    raise WeightsError(f"unexpected key {key!r}: not the authors' checkpoint layout")


def convert_authors_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold the authors' weight-normed state dict into ours (w = g * v / ||v||, per out channel)."""
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        module, param = _rename_authors_key(key)
        grouped.setdefault(module, {})[param] = value
    out: dict[str, Tensor] = {}
    for module, params in grouped.items():
        if "weight_v" in params and "weight_g" in params:
            out[f"{module}.weight"] = torch._weight_norm(params["weight_v"], params["weight_g"], 0)
        elif "weight" in params:
            out[f"{module}.weight"] = params["weight"]
        else:
            raise WeightsError(f"layer {module} has no weight in the checkpoint")
        if "bias" in params:
            out[f"{module}.bias"] = params["bias"]
    return out


def _load_torch_checkpoint(path: Path) -> dict[str, Tensor]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise WeightsError(f"{path}: not a readable torch checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(blob, dict) and "model" in blob and isinstance(blob["model"], dict):
        state = blob["model"]
    elif isinstance(blob, dict) and all(isinstance(v, Tensor) for v in blob.values()):
        state = blob
    else:
        raise WeightsError(f"{path}: checkpoint holds no state dict")
    if any(k.endswith("weight_v") for k in state) and any(k.startswith("conv32x") for k in state):
        return convert_authors_state(state)
    return state


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_state(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file of either format into a folded state dict in our layer names."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        state = _load_torch_checkpoint(path)
    return strip_weight_norm_keys(state)


def strip_weight_norm_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold parametrised weight-norm keys (``parametrizations.weight.original0/1``) if present."""
    if not any(".parametrizations.weight." in k for k in state):
        return dict(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".parametrizations.weight.original0"):
            module = key.removesuffix(".parametrizations.weight.original0")
            v = state[f"{module}.parametrizations.weight.original1"]
            out[f"{module}.weight"] = torch._weight_norm(v, value, 0)
        elif key.endswith(".parametrizations.weight.original1"):
            continue
        else:
            out[key] = value
    return out


def output_space(path: str | Path) -> str:
    """What a weights file's net outputs (metadata ``output_space``); files without it, the authors'
    checkpoint included, are the paper's sRGB nets."""
    return read_metadata(path).get("output_space", SRGB)


def load_model(path: str | Path) -> LowLightNet:
    """A ready-to-run net (eval mode, folded weights) from a weights file, in its declared output space."""
    state = load_state(path)
    try:
        model = LowLightNet(output_space(path))
    except ValueError as exc:
        raise WeightsError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the net ({exc})") from exc
    return model.eval()


def save_weights(model: LowLightNet, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save folded weights as safetensors (atomically); the model itself is left untouched.

    Folding works on the state dict, not on a deep copy of the model: a copy of weight-norm
    parametrised convs cannot be folded.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in strip_weight_norm_keys(model.state_dict()).items()}
    path = Path(path)
    meta = {"format": FORMAT, "output_space": getattr(model, "output_space", SRGB), **(metadata or {})}
    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of a lowlux weights file (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def file_digest(path: str | Path) -> str:
    """Short content hash, used to name caches derived from a weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def default_weights_path() -> Path | None:
    """The shipped default weights, if this install has them.

    Looked up inside the package (wheel installs) and in the repository's ``weights/`` folder
    (editable installs from a checkout).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights" / DEFAULT_WEIGHTS_NAME, here.parents[1] / "weights" / DEFAULT_WEIGHTS_NAME):
        if candidate.is_file():
            return candidate
    return None

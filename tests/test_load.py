"""A bounded load test: 4 concurrent clients x 25 files (10 % bad) per round against one worker process.

Every good file must produce its TIFF, every bad one a clear error naming it, the worker must be alive
at the end, and its memory must not grow from round to round (bounded queues, forgotten jobs).
"""

from __future__ import annotations

import threading
from pathlib import Path

import tifffile

from conftest import sha256
from lowlux.client import Client
from workerkit import ready, runtime, serve_process  # noqa: F401

CLIENTS, FILES, BAD_EVERY, ROUNDS = 4, 25, 10, 3
MiB = 1 << 20


def make_inputs(make_dng, tmp_path: Path) -> list[list[Path]]:
    """Per client: 25 files, every tenth one broken in a different way."""
    good = make_dng("seed.dng", height=64, width=96).read_bytes()
    per_client = []
    for c in range(CLIENTS):
        folder = tmp_path / f"client{c}"
        folder.mkdir()
        files = []
        for i in range(FILES):
            path = folder / f"f{i:02d}.dng"
            if i % BAD_EVERY == BAD_EVERY - 1:
                path.write_bytes(good[: len(good) // (2 + c)] if c % 2 else b"not a raw file")
            else:
                path.write_bytes(good)
            files.append(path)
        per_client.append(files)
    return per_client


def run_round(endpoint: str, inputs: list[list[Path]], out: Path) -> dict[int, list[dict]]:
    results: dict[int, list[dict]] = {}
    errors: list[BaseException] = []

    def one_client(c: int) -> None:
        try:
            with Client(endpoint, name=f"load{c}", timeout=10) as client:
                job = client.submit(inputs[c], {"out_dir": str(out / f"client{c}")})
                results[c] = client.wait(job)
        except BaseException as exc:  # surfaced below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    return results


def test_four_clients_with_bad_files_over_several_rounds(runtime, tiny_weights, make_dng, tmp_path):
    endpoint = f"ipc://{runtime / 'load.sock'}"
    inputs = make_inputs(make_dng, tmp_path)
    hashes = {p: sha256(p) for files in inputs for p in files}
    rss = []
    with serve_process(endpoint, tiny_weights, "--encode-threads", "2") as proc:
        ready(endpoint, proc=proc)
        for r in range(ROUNDS):
            out = tmp_path / f"round{r}"
            results = run_round(endpoint, inputs, out)
            for c, entries in results.items():
                assert len(entries) == FILES
                for entry, source in zip(entries, inputs[c]):
                    bad = int(source.stem[1:]) % BAD_EVERY == BAD_EVERY - 1
                    assert entry["source"] == str(source)
                    if bad:
                        assert entry["state"] == "failed" and entry["error"].startswith(str(source)), entry
                    else:
                        assert entry["state"] == "done", entry
                        assert tifffile.imread(entry["outputs"][0]).shape == (64, 96, 3)
            tiffs = sorted((out).rglob("*.tif"))
            assert len(tiffs) == CLIENTS * (FILES - FILES // BAD_EVERY)
            assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left
            with Client(endpoint) as c:
                health = c.health()
            assert health["queued_files"] == 0 and health["running_files"] == 0
            rss.append(health["rss"])
        assert proc.poll() is None  # alive after all rounds
        with Client(endpoint) as c:
            assert c.ping()["ready"]
    assert {p: sha256(p) for p in hashes} == hashes
    # memory stays flat once warm: the last round may not need noticeably more than the first
    assert rss[-1] <= rss[0] * 1.10 + 24 * MiB, [r // MiB for r in rss]


def test_weights_declare_their_output_space_and_load_into_it(tmp_path):
    from lowlux.model import LINEAR_CAMERA_WB, LowLightNet
    from lowlux.weights import load_model, output_space, save_weights

    path = save_weights(LowLightNet(LINEAR_CAMERA_WB), tmp_path / "w.safetensors")
    assert output_space(path) == LINEAR_CAMERA_WB
    assert load_model(path).output_space == LINEAR_CAMERA_WB
    paper = save_weights(LowLightNet(), tmp_path / "p.safetensors")
    assert load_model(paper).output_space == "srgb"


def test_weights_with_an_unknown_output_space_are_refused_by_name(tmp_path):
    import pytest
    from safetensors.torch import save_file

    from lowlux.errors import WeightsError
    from lowlux.model import LowLightNet
    from lowlux.weights import load_model

    path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in LowLightNet().state_dict().items()}, str(path),
              metadata={"output_space": "xyz"})
    with pytest.raises(WeightsError, match="odd.safetensors"):
        load_model(path)

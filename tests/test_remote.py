"""The remote (CURVE) mode's defences and naming: what one remote client can and cannot do to the
worker and to the other clients, and that its results come back under the names local mode gives."""

from __future__ import annotations

import pytest

from lowlux.client import Client
from workerkit import curve_setup, endpoint, engine, free_port, runtime, serving  # noqa: F401


@pytest.fixture
def remote(engine, endpoint, curve_setup):
    """An in-process worker with a CURVE listener on loopback; yields (listen endpoint, keys, server)."""
    server_dir, keys, _ = curve_setup
    listen = f"tcp://127.0.0.1:{free_port()}"

    def start(**config):
        return serving(engine, endpoint, listen=listen, keys_dir=server_dir, **config)

    return listen, keys, start


def test_fetched_results_are_named_after_the_clients_own_source_names(remote, make_dng, tmp_path):
    listen, keys, start = remote
    raws = [make_dng(name, seed=i) for i, name in enumerate(("夜.dng", "朝.dng", "sp ace.dng"))]
    out = tmp_path / "fetched"
    with start():
        with Client(listen, keys=keys, timeout=10) as client:
            results = client.wait(client.submit(raws), out_dir=out)
            bracket = client.wait(client.submit(raws[:1], {"brightness": [0.3, 0.6]}), out_dir=out)
        with Client(listen, keys=keys, timeout=10) as other:  # a second process knows no options: the
            job = other.submit(raws[2:])                      # worker's names follow the same rule
            assert other.status(job) and other.wait(job, out_dir=out / "w", overwrite=True)
    assert [e["state"] for e in results] == ["done"] * 3
    assert [e["outputs"] for e in results] == [[str(out / "夜_lowlux.tif")], [str(out / "朝_lowlux.tif")],
                                               [str(out / "sp ace_lowlux.tif")]]
    assert bracket[0]["outputs"] == [str(out / "夜_lowlux_m0.3.tif"), str(out / "夜_lowlux_m0.6.tif")]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["w", "夜_lowlux.tif", "朝_lowlux.tif", "sp ace_lowlux.tif", "夜_lowlux_m0.3.tif", "夜_lowlux_m0.6.tif"])
    assert [p.name for p in (out / "w").iterdir()] == ["sp ace_lowlux.tif"]


def test_one_raw_over_the_upload_limit_is_refused_by_name_and_the_rest_are_sent(remote, make_dng):
    listen, keys, start = remote
    small = [make_dng(f"small{i}.dng", seed=i) for i in range(2)]
    big = make_dng("big.dng", height=1024, width=768)  # 1.5 MB: over what the socket itself lets through
    with start(max_upload_bytes=64 * 1024):
        with Client(listen, keys=keys, timeout=5, retries=1) as client:
            results = client.wait(client.submit([small[0], big, small[1]]))
    assert [e["state"] for e in results] == ["done", "failed", "done"]
    error = results[1]["error"]
    assert error.count(str(big)) == 1 and "upload limit" in error and "64 KiB" in error, error
    assert not big.with_name("big_lowlux.tif").exists() and small[1].with_name("small1_lowlux.tif").exists()

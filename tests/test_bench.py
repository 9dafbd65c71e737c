"""`lowlux bench` runs and reports every row against the eager reference (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from lowlux.bench import count_macs
from lowlux.cli import main


def test_bench_writes_a_row_per_configuration_with_the_reference_first(tmp_path, tiny_weights, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "64x96", "--runs", "2", "--json", str(out), "--weights", str(tiny_weights),
                 "--no-accuracy"]) == 0
    rows = json.loads(out.read_text())
    peaks = [r for r in rows if r["backend"] == "peak"]
    rows = [r for r in rows if r["backend"] != "peak"]
    assert rows[0]["reference"] is True and rows[0]["dtype"] == "float32"
    # the machine's convolution peak at each precision, and each net row's share of it
    assert peaks and all(p["extra"]["gmac_per_s"] > 0 and p["size"] == "1024x1024" for p in peaks)
    assert {p["dtype"] for p in peaks} == {r["dtype"] for r in rows if r["backend"] != "e2e"}
    assert all(r["extra"]["peak_fraction"] > 0 for r in rows if r["backend"] != "e2e")
    for row in rows:
        assert row["size"] == "64x96"
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["peak_rss_mb"] > 0
    net_rows = [r for r in rows[1:] if r["backend"] != "e2e"]
    assert all(r["max_abs_diff"] is not None and r["speedup"] > 0 for r in net_rows)
    assert rows[0]["photo_max_abs_diff"] is None  # the reference is what the others are compared with
    # On a photograph too, fp32 rows match the eager net (random weights: large activations, so
    # summation order shows at 1e-5) and reduced precision rows deviate by far more. The floor is
    # fixed, ten times the fp32 bound, whatever the hardware's summation order: with these weights
    # rounding the photograph alone to fp16 (11-bit mantissa) moves the output by 5e-3, to bf16 by
    # 5e-2, and fp16 / bf16 autocast by 3e-2 / 2e-1.
    fp32 = [r["photo_max_abs_diff"] for r in net_rows if r["dtype"] == "float32"]
    reduced = [r["photo_max_abs_diff"] for r in net_rows if r["dtype"] != "float32"]
    assert fp32 and max(fp32) <= 1e-4
    assert all(d > 1e-3 for d in reduced)
    e2e, = (r for r in rows if r["backend"] == "e2e")
    # One file at a time and the batch in processes of their own; the row's peak is the larger.
    assert e2e["peak_rss_mb"] == max(e2e["extra"]["one_file_peak_rss_mb"], e2e["extra"]["batch_peak_rss_mb"]) > 0
    for profile in (e2e["extra"]["profile"], e2e["extra"]["batch_profile"]):  # the stages, one file and batched
        assert {"decode (LibRaw)", "net", "quantise (uint16)", "encode (TIFF)", "metadata"} <= set(profile)
    assert sum(1 for r in rows if "(default)" in r["name"]) <= 1
    printed = capsys.readouterr().out
    assert "eager fp32 (reference)" in printed
    assert "file -> DNG (end to end) 64x96: skipped, a linear DNG needs linear weights; these output srgb" in printed


def test_the_linear_dng_gets_its_own_end_to_end_rows_and_stages(tmp_path, linear_weights):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "64x96", "--runs", "2", "--json", str(out), "--weights", str(linear_weights),
                 "--no-accuracy", "--no-peak", "--only", "none", "--batch-files", "5"]) == 0
    e2e = {r["name"]: r for r in json.loads(out.read_text()) if r["backend"] == "e2e"}
    assert set(e2e) == {"file -> TIFF (end to end)", "file -> DNG (end to end)"}
    assert {r["extra"]["batch_files"] for r in e2e.values()} == {5}
    dng = e2e["file -> DNG (end to end)"]
    assert dng["extra"]["output_space"] == "linear-camera-wb" and dng["median_s"] > 0
    for profile in (dng["extra"]["profile"], dng["extra"]["batch_profile"]):
        assert {"decode (LibRaw)", "net", "quantise (uint16)", "encode (DNG)", "preview (DNG)"} <= set(profile)
        assert "colour stage" not in profile  # camera-native linear: no sRGB rendering of the image itself
    assert "colour stage" in e2e["file -> TIFF (end to end)"]["extra"]["profile"]


def test_mac_count_matches_the_papers_60_gmacs_at_4k():
    # Paper Table 1: 59.8 GMACs for a Sony alpha 7S II frame (4256 x 2848).
    assert abs(count_macs(2848, 4256) / 1e9 - 59.8) < 0.5


def test_on_a_gpu_fp16_runs_with_and_without_encoder_streams_and_cuda_graphs_against_an_eager_reference(monkeypatch):
    # Only the plan is checked here (no GPU needed): the rows a GPU machine would run.
    import argparse

    import torch

    from lowlux import bench, engine

    monkeypatch.setattr(engine, "resolve_device", lambda device: torch.device("cuda"))
    configs = bench.default_configs(argparse.Namespace(device="cuda", only=None))
    reference = configs[0]
    assert reference.reference and reference.dtype == "float32" and not reference.cuda_graphs
    fp16 = {(c.concurrent, c.cuda_graphs) for c in configs if c.dtype == "float16"}
    assert fp16 == {(False, True), (True, True), (False, False), (True, False)}
    assert all(c.backend == "torch" for c in configs)  # the exported runtimes are CPU-only


def test_on_a_gpu_bf16_runs_and_the_torch_compile_rows_come_last_at_the_smaller_sizes(monkeypatch):
    # The plan only (no GPU needed): compiling takes longest, so a run cut short loses those rows alone.
    import argparse

    import torch

    from lowlux import bench, engine

    monkeypatch.setattr(engine, "resolve_device", lambda device: torch.device("cuda"))
    configs = bench.default_configs(argparse.Namespace(device="cuda", only=None))
    names = [c.name for c in configs]
    bf16, = (c for c in configs if c.dtype == "bfloat16")
    assert bf16.name == "torch bf16 autocast" and bf16.cuda_graphs and not bf16.compile
    assert names[-2:] == ["torch fp16, torch.compile", "torch fp32, torch.compile"]
    assert names.index("torch bf16 autocast") < len(names) - 2
    compiled = configs[-2:]
    assert [(c.dtype, c.cuda_graphs, c.large) for c in compiled] == [("float16", True, False), ("float32", True, False)]
    assert all(c.compile for c in compiled) and not any(c.compile for c in configs[:-2])
    assert not any(c.runs_at((2848 * 2, 4256 * 2)) for c in compiled) and all(c.runs_at((2848, 4256)) for c in compiled)
    assert sum(1 for c in configs if "(default)" in c.name) == 1 and "(default)" not in "".join(names[-2:])
    only = bench.default_configs(argparse.Namespace(device="cuda", only="bf16,torch.compile"))
    assert [c.name for c in only] == ["eager fp32 (reference)", "torch bf16 autocast", *names[-2:]]


def test_the_cpu_plan_compiles_nothing():
    import argparse

    from lowlux import bench

    assert not any(c.compile for c in bench.default_configs(argparse.Namespace(device="cpu", only=None)))


def test_a_configuration_that_fails_costs_its_row_only_and_the_exit_status(tmp_path, tiny_weights, monkeypatch, capsys):
    from lowlux.bench import child

    real = child.run_child

    def flaky(kind, payload, timeout=None):
        if kind == "net" and payload["config"]["name"] == "torch channels_last":
            raise RuntimeError("bench child failed (net torch channels_last):\nRuntimeError: out of memory")
        return real(kind, payload, timeout)

    monkeypatch.setattr(child, "run_child", flaky)
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", "--sizes", "64x96", "--runs", "2", "--no-e2e", "--no-peak", "--only", "channels_last,concurrent",
            "--json", str(out), "--markdown", str(md), "--weights", str(tiny_weights)]
    assert main(args) == 1
    names = [r["name"] for r in json.loads(out.read_text())]
    assert names == ["eager fp32 (reference)", "torch concurrent encoders"]
    assert "torch channels_last at 64x96: RuntimeError: out of memory" in md.read_text()
    assert "FAILED" in capsys.readouterr().out


def test_a_row_past_the_row_limit_is_given_up_and_the_reference_is_never_limited(tmp_path, tiny_weights, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--sizes", "64x96", "--runs", "1", "--no-e2e", "--no-peak", "--only", "channels_last",
            "--row-timeout", "0.01", "--json", str(out), "--weights", str(tiny_weights)]
    assert main(args) == 1
    assert [r["name"] for r in json.loads(out.read_text())] == ["eager fp32 (reference)"]
    assert "ran past the row limit of 0.01 s" in capsys.readouterr().out


def test_a_run_cut_short_keeps_every_row_it_finished(tmp_path, tiny_weights, monkeypatch):
    import pytest

    from lowlux.bench import child

    real = child.run_child

    class Stopped(BaseException):
        """An outside limit (SIGTERM, a lease's end) stopping the run between rows."""

    def cut(kind, payload, timeout=None):
        if payload["config"]["name"] == "torch concurrent encoders":
            raise Stopped
        return real(kind, payload, timeout)

    monkeypatch.setattr(child, "run_child", cut)
    out = tmp_path / "bench.json"
    with pytest.raises(Stopped):
        main(["bench", "--sizes", "64x96", "--runs", "1", "--no-e2e", "--no-peak", "--only",
              "channels_last,concurrent", "--json", str(out), "--weights", str(tiny_weights)])
    assert [r["name"] for r in json.loads(out.read_text())] == ["eager fp32 (reference)", "torch channels_last"]
    assert not list(tmp_path.glob("*.tmp"))


def test_the_accuracy_rule_figures_and_verdict():
    from types import SimpleNamespace

    import numpy as np

    from lowlux.bench.accuracy import RULE, rule_figures

    rng = np.random.default_rng(0)
    items = [SimpleNamespace(target=rng.random((64, 64, 3), dtype=np.float32)) for _ in range(2)]
    reference = [np.clip(it.target + rng.normal(0, 0.05, it.target.shape).astype(np.float32), 0, 1) for it in items]
    same = rule_figures(reference, [r.copy() for r in reference], items, [])
    assert same["psnr_db"] == same["ssim"] == same["max_abs_diff"] == same["levels_8bit"] == 0
    assert not same["passes"]  # no chart, no verdict
    chart = SimpleNamespace(delta_e=lambda srgb: np.array([float(srgb.mean())]))

    def nudged(image, levels):  # one pixel moved by ``levels`` of 255
        out = image.copy()
        out[3, 4, 1] = out[3, 4, 1] + np.float32(levels / 255) if out[3, 4, 1] < 0.5 else out[3, 4, 1] - np.float32(levels / 255)
        return out

    ok = rule_figures(reference + [reference[0]], [nudged(r, 1.5) for r in reference] + [reference[0]],
                      items, [chart])
    assert ok["levels_8bit"] <= 2 and ok["max_diff_255"] < 1.6 and ok["delta_e00"] == 0 and ok["passes"]
    bad = rule_figures(reference + [reference[0]], [nudged(r, 2.5) for r in reference] + [reference[0]],
                       items, [chart])
    assert bad["max_diff_255"] > RULE["levels_8bit"] and not bad["passes"]


def test_the_accuracy_rule_is_measured_on_each_evaluation_group_apart(monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from lowlux.bench import accuracy, engines

    rng = np.random.default_rng(1)
    data = {g: [SimpleNamespace(target=rng.random((32, 32, 3), dtype=np.float32)) for _ in range(2)]
            for g in accuracy.GROUPS}
    chart = SimpleNamespace(target=np.full((8, 8, 3), 0.5, np.float32), delta_e=lambda srgb: np.array([0.0]))
    monkeypatch.setattr(accuracy, "eval_data", lambda raw, clean, group: (data[group], [chart], f"2 items ({group})"))

    class FakeEngine:
        def __init__(self, config):
            self.dtype = config.dtype

        def describe(self):
            return {"backend": f"fake ({self.dtype})"}

        def close(self):
            pass

    def restore_all(engine, every, mode):  # reduced precision moves one pixel by 3 levels, in the new group only
        out = [it.target * np.float32(0.9) + np.float32(0.05) for it in every]  # a finite PSNR
        if engine.dtype != "float32" and every[0] is data["new"][0]:
            out[0][0, 0, 0] += 3 / 255
        return out

    monkeypatch.setattr(engines, "make_engine", FakeEngine)
    monkeypatch.setattr(accuracy, "restore_all", restore_all)
    res = accuracy.measure_rule(None, "cpu", [("openvino", "bfloat16")])
    verdicts = {r["group"]: r["figures"]["passes"] for r in res["rows"]}
    assert verdicts == {"comparable": True, "new": False}
    assert "(comparable)" in res["note"] and "(new)" in res["note"]


def test_the_bench_refuses_an_unknown_evaluation_group_before_it_runs_anything(tmp_path, tiny_weights, capsys):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--sizes", "64x96", "--runs", "1", "--no-e2e", "--no-peak", "--json", str(out),
              "--accuracy-groups", "comparable,held", "--weights", str(tiny_weights)])
    assert exit.value.code == 2
    assert "unknown evaluation group(s) held (choose from comparable, new)" in capsys.readouterr().err
    assert not out.exists()


def test_without_the_evaluation_data_the_accuracy_rows_are_skipped_with_the_reason(tmp_path):
    from lowlux.bench.accuracy import measure_rule

    res = measure_rule(None, "cpu", [("torch", "bfloat16")], tmp_path / "no-raws", tmp_path / "no-photos")
    assert res["rows"] == [] and "skipped" in res["note"] and "no-raws" in res["note"]


def test_the_darktable_benchmark_says_what_is_missing_and_never_touches_the_users_raw(monkeypatch, tmp_path, capsys):
    from lowlux.bench import darktable

    monkeypatch.setattr(darktable.shutil, "which", lambda tool: None)
    assert main(["bench", "--darktable"]) == 2
    assert "darktable is not installed (apt-get install darktable)" in capsys.readouterr().err
    monkeypatch.setattr(darktable, "missing_tools", lambda: None)
    assert main(["bench", "--darktable", "--darktable-raw", str(tmp_path / "none.dng")]) == 2
    assert "none.dng: no such file" in capsys.readouterr().err


def test_the_darktable_drivers_strings_survive_any_path():
    from lowlux.bench.darktable import lua_string

    assert lua_string("a]]b") == "[=[a]]b]=]" and lua_string("plain") == "[[plain]]"


@pytest.mark.parametrize("flag, value, reason", [("--decode-threads", "0", "must be at least 1, got 0"),
                                                 ("--batch-files", "-2", "must be at least 1, got -2"),
                                                 ("--decode-threads", "two", "not a whole number: 'two'")])
def test_the_bench_refuses_a_count_below_one_before_it_runs_anything(tmp_path, capsys, flag, value, reason):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--sizes", "64x96", "--json", str(out), flag, value])
    assert exit.value.code == 2
    assert f"{flag}: {reason}" in capsys.readouterr().err
    assert not out.exists()

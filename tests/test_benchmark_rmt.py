"""benchmarks/rmt.py at tiny sizes: its pieces, its JSON and its printed tables (no timed assertions).

The package comparison needs the optional ``recurrent-memory-transformer-pytorch`` (the
``bench`` extra) and is skipped without it. Peaks of a few hundred KiB are noise on the
CPU, so the streaming test checks only that the ratio is the one computed from the rows;
the BPTT test uses a step whose kept activations (about 2 MiB a segment) stand well clear
of that noise.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

TINY = {"vocab_size": 64, "d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "segment_length": 32,
        "n_memory": 4}
TINY_ARGS = ["--vocab", "64", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--layers", "1",
             "--segment-length", "32", "--memory-tokens", "4"]


@pytest.fixture(scope="module")
def bench():
    # imported by its module name (benchmarks/ is a namespace package under the repository root), so that
    # peak_memory's fresh child processes can unpickle the script's workloads
    return importlib.import_module("benchmarks.rmt")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (peak_memory's children inherit it): tiny workloads on a shared CPU run several
    times faster than with two threads waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flops_table_matches_the_paper(bench):
    rows = {(r["model"], r["length"]): r for r in bench.flops_table()}
    assert len(rows) == len(bench.OPT_MODELS) * 3
    # the 1M-token paper: 295x (OPT-125M) and 29x (OPT-175B) at about 2M tokens; our count 280.5x and 27.9x
    assert rows["OPT-125M", 2_048_000]["ratio"] == pytest.approx(295, rel=0.06)
    assert rows["OPT-175B", 2_048_000]["ratio"] == pytest.approx(29, rel=0.06)
    for name in bench.OPT_MODELS:
        ratios = [rows[name, n]["ratio"] for n in bench.FLOP_LENGTHS]
        assert ratios == sorted(ratios) and ratios[0] > 1  # the saving grows with the length
        r = rows[name, 262_144]
        assert r["ratio"] == pytest.approx(r["full_flops"] / r["rmt_flops"])
    # RMT's cost is linear in whole segments: 8x the tokens, 8x the FLOPs
    assert rows["OPT-125M", 262_144]["rmt_flops"] == 8 * rows["OPT-125M", 32_768]["rmt_flops"]


def test_bptt_depths_and_line_fit(bench):
    assert bench.bptt_depths(8) == [0, 1, 2, 4, None]
    assert bench.bptt_depths(16) == [0, 1, 2, 4, 8, None]
    assert bench.bptt_depths(2) == [0, None] and bench.bptt_depths(1) == [0]
    a, b = bench.line_fit([1, 2, 3, 5], [7, 9, 11, 15])
    assert a == pytest.approx(5) and b == pytest.approx(2)


def test_workload_warms_up_on_two_segments_then_reads_everything(bench):
    cfg = bench.BenchConfig(**TINY)
    work = bench.Workload("rmt", 160, cfg, "cpu")
    warm, full = work(), work()
    assert warm["tokens"] == 64 and full["tokens"] == 160  # 2 segments of 32, then 5
    assert math.isfinite(full["checksum"]) and full["memory_bytes"] == 4 * 16 * 4
    contrast = bench.Workload("full", 96, cfg, "cpu")
    assert contrast()["tokens"] == 64 and contrast()["tokens"] == 96
    with pytest.raises(ValueError, match="kind"):
        bench.Workload("sparse", 96, cfg, "cpu")


def test_full_attention_run_is_one_segment_without_memory(bench):
    out = bench.full_attention_run(48, vocab_size=64, d_model=16, n_heads=2, d_ff=32, n_layers=1)
    assert out["tokens"] == 48 and out["seconds"] >= 0


def test_bptt_peaks_grow_with_depth(bench, capsys):
    bcfg = bench.BpttConfig(segment_length=64, n_memory=4, batch=8, vocab_size=32, d_model=64, n_heads=2,
                            d_ff=128, n_layers=1)
    result = bench.bptt_benchmark(bcfg, 4, "cpu", depths=[0, None])
    first, last = result["rows"]
    assert (first["bptt_depth"], first["kept_segments"]) == (0, 1)
    assert (last["bptt_depth"], last["kept_segments"]) == (None, 4)
    # measured: 3.3 and 9.9 MiB; four segments' activations against one, asserted with a wide margin
    assert last["peak_bytes"] > first["peak_bytes"] + 2 * 2**20
    assert last["ratio_to_depth0"] > 1.5 and result["fit_bytes_per_segment"] > 0
    assert not first["grad_reaches_memory"] and last["grad_reaches_memory"]
    assert first["loss"] == pytest.approx(last["loss"])  # the depth changes the gradient, not the loss
    printed = capsys.readouterr().out
    assert "x k=0" in printed and "MiB x (k + 1)" in printed and "all" in printed


def test_command_line_stream_flops_and_skipped_package(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "package_available", lambda: None)
    out = tmp_path / "rmt.json"
    assert bench.main(["--stream", "--flops", "--package", "--lengths", "96", "32", *TINY_ARGS,
                       "--full-budget-gib", "0.0001", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"device", "torch", "config", "stream", "full_attention", "flops", "package", "load_at_start",
            "load_at_end"} <= set(result)
    assert result["parts"] == ["stream", "flops", "package"] and result["sizes"] == "small"
    assert result["config"]["segment_length"] == 32 and result["config"]["n_memory"] == 4
    stream = result["stream"]
    assert [r["length"] for r in stream["rows"]] == [32, 96]  # sorted: the ratio is longest / shortest
    assert [r["segments"] for r in stream["rows"]] == [1, 3]
    for r in stream["rows"]:
        assert r["peak_bytes"] >= 0 and r["tokens_per_s"] > 0
    first, last = stream["rows"][0]["peak_bytes"], stream["rows"][-1]["peak_bytes"]
    assert stream["ratio"] == pytest.approx(last / max(first, 1))
    assert stream["goal_met"] == (stream["ratio"] <= 1.1) and stream["memory_state_bytes"] == 4 * 16 * 4
    full = result["full_attention"]
    assert full["rows"] and full["rows"][0]["length"] == 32 and full["budget_gib"] == 0.0001
    assert "peak(96) / peak(32) = " in printed and "full attention" in printed
    assert "OPT-175B" in printed and "295x" in printed
    assert "not installed" in printed and "pip install" in printed
    assert result["package"] == {"skipped": bench.skip_reason()}


def test_command_line_rejects_bad_sizes(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--flops", "--lengths", "0"])
    assert stop.value.code == 2 and "--lengths" in capsys.readouterr().err


def test_package_comparison_skipped_cleanly_without_the_package(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "package_available", lambda: None)
    row = bench.package_benchmark(bench.BenchConfig(**TINY), "cpu", 64, 2, 1)
    assert row == {"skipped": bench.skip_reason()}
    printed = capsys.readouterr().out
    assert "not installed" in printed and "recurrent-memory-transformer-pytorch" in printed


def test_their_model_has_our_sizes(bench):
    pytest.importorskip("recurrent_memory_transformer_pytorch", reason="the optional bench extra is not installed")
    cfg = bench.BenchConfig()  # the benchmark's own configuration
    theirs = cfg.theirs()
    assert len(theirs.layers) == cfg.n_layers and theirs.token_emb.weight.shape == (256, 128)
    assert theirs.memory_tokens.shape == (16, 128) and theirs.seq_len == 512
    attn, ff = theirs.layers[0][0].branch, theirs.layers[0][1].branch
    assert attn.to_q.out_features == 128 and attn.heads == 4  # 4 heads x dim_head 32
    assert ff[1].out_features == 2 * 341 and ff[4].in_features == 341  # GEGLU of ff_mult 4
    assert not theirs.use_xl_memories and theirs.emb_gradient_frac == 1.0
    assert not attn.attend.use_flash  # explicit softmax, as ours
    assert "0.999x our multiply-adds" in bench.differences(cfg)[1]


def test_package_comparison_structure(bench, capsys):
    pytest.importorskip("recurrent_memory_transformer_pytorch", reason="the optional bench extra is not installed")
    row = bench.package_benchmark(bench.BenchConfig(**TINY), "cpu", length=96, train_segments=2, repeats=1)
    for part, tokens in (("forward", 96), ("train", 64)):
        assert row[part]["tokens"] == tokens
        rates = row[part]["tokens_per_s"]
        assert rates["ours"] > 0 and rates["theirs"] > 0
        assert row[part]["ratio"] == pytest.approx(rates["ours"] / rates["theirs"])
    # untrained on random tokens: about ln 64 = 4.16 nats (tolerance 3)
    assert all(math.isfinite(v) and abs(v - math.log(64)) < 3 for v in row["train"]["loss"].values())
    assert len(row["differences"]) >= 8
    printed = capsys.readouterr().out
    assert "ours/theirs" in printed and "where the two models differ" in printed

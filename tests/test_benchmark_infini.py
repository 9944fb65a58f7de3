"""benchmarks/infini.py at tiny sizes: its pieces, its JSON and its printed table (no timed assertions).

The package comparison needs the optional ``infini-transformer-pytorch`` (the ``bench``
extra) and is skipped without it.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

TINY = dict(vocab_size=64, d_model=16, n_heads=2, d_ff=32, n_layers=1, segment_length=32)
TINY_ARGS = ["--vocab", "64", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--layers", "1",
             "--segment-length", "32"]


@pytest.fixture(scope="module")
def bench():
    # imported by its module name (benchmarks/ is a namespace package under the repository root), so that
    # peak_memory's fresh child processes can unpickle the script's workloads
    return importlib.import_module("benchmarks.infini")


def test_segments_are_made_one_at_a_time(bench):
    parts = bench.segments(100, 32, 64, seed=3)
    assert not isinstance(parts, (list, tuple, torch.Tensor))  # a generator: the input is never one tensor
    shapes = [tuple(p.shape) for p in parts]
    assert shapes == [(1, 32), (1, 32), (1, 32), (1, 4)]
    again = torch.cat(list(bench.segments(100, 32, 64, seed=3)), dim=1)
    assert again.dtype == torch.int64 and 0 <= int(again.min()) and int(again.max()) < 64
    assert torch.equal(again, torch.cat(list(bench.segments(100, 32, 64, seed=3)), dim=1))  # reproducible


def test_workload_warms_up_on_two_segments_then_reads_everything(bench):
    cfg = bench.BenchConfig(**TINY)
    torch.manual_seed(0)
    work = bench.Workload(cfg.ours().eval(), 200, cfg, "cpu")
    warm, full = work(), work()
    assert warm["tokens_per_s"] * warm["seconds"] == pytest.approx(64)  # 2 segments of 32
    assert full["tokens_per_s"] * full["seconds"] == pytest.approx(200)
    # untrained on random tokens: the NLL is a few nats, finite (tolerance: ln 64 = 4.16 +- 3)
    assert math.isfinite(full["nll"]) and abs(full["nll"] - math.log(64)) < 3


def test_full_attention_contrast_model(bench):
    cfg = bench.BenchConfig(**TINY)
    out = bench.full_tokens(bench.FullAttentionLM(cfg).eval(), 48, vocab_size=64)
    assert set(out) == {"seconds", "tokens_per_s", "nll"} and math.isfinite(out["nll"])


def test_command_line_stream_json_and_table(bench, tmp_path, capsys):
    out = tmp_path / "infini.json"
    assert bench.main(["--stream", "--lengths", "160", "64", *TINY_ARGS, "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"device", "torch", "config", "stream", "load_at_start", "load_at_end"} <= set(result)
    assert result["config"]["segment_length"] == 32 and result["config"]["n_layers"] == 1
    stream = result["stream"]
    assert [r["length"] for r in stream["rows"]] == [64, 160]  # sorted: the ratio is longest / shortest
    for r in stream["rows"]:
        assert r["peak_bytes"] >= 0 and r["tokens_per_s"] > 0 and math.isfinite(r["nll"])
    first, last = stream["rows"][0]["peak_bytes"], stream["rows"][-1]["peak_bytes"]
    assert stream["ratio"] == pytest.approx(last / max(first, 1))
    assert stream["goal"] == 1.1 and stream["goal_met"] == (stream["ratio"] <= 1.1)
    assert stream["memory_state_bytes"] == 1 * 2 * (8 * 8 + 8) * 4  # layers x heads x (M + z) float32
    assert "peak(160) / peak(64) = " in printed and "goal <= 1.1" in printed
    assert "tokens/s" in printed and "peak MiB" in printed


def test_command_line_needs_a_part(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main([])
    assert stop.value.code == 2 and "--stream" in capsys.readouterr().err


def test_package_comparison_skipped_cleanly_without_the_package(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "package_available", lambda: None)
    assert bench.package_benchmark(bench.BenchConfig(**TINY), "cpu", 64, 2, 1) == {}
    assert "not installed" in capsys.readouterr().out


def test_their_model_has_our_sizes(bench):
    pytest.importorskip("infini_transformer_pytorch", reason="the optional bench extra is not installed")
    cfg = bench.BenchConfig(gate_init=1.5)  # the benchmark's own configuration
    theirs = cfg.theirs()
    assert len(theirs.layers) == cfg.n_layers and theirs.token_emb.weight.shape == (256, 256)
    attn, ff = theirs.layers[0]
    assert attn.to_qkv.out_features == 3 * cfg.d_model  # 4 heads x dim_head 64
    assert ff.proj_in.out_features == 2 * 682 and ff.proj_out.in_features == 682  # GEGLU of ff_mult 4
    assert torch.equal(attn.fastweight_mem.head_gates, torch.full((4,), -1.5))  # same mix, mirrored gate
    assert not attn.fastweight_mem.use_mem_delta_rule
    assert bench.BenchConfig(rule="delta").theirs().layers[0][0].fastweight_mem.use_mem_delta_rule
    assert "0.999x our multiply-adds" in bench.differences(cfg)[1]


def test_package_comparison_structure(bench, capsys):
    pytest.importorskip("infini_transformer_pytorch", reason="the optional bench extra is not installed")
    row = bench.package_benchmark(bench.BenchConfig(**TINY), "cpu", length=96, train_segments=2, repeats=1)
    assert row["package_version"].startswith("0.")
    for part, tokens in (("forward", 96), ("train", 64)):
        assert row[part]["tokens"] == tokens
        rates = row[part]["tokens_per_s"]
        assert rates["ours"] > 0 and rates["theirs"] > 0
        assert row[part]["ratio"] == pytest.approx(rates["ours"] / rates["theirs"])
    assert all(math.isfinite(v) for v in row["train"]["loss"].values())
    assert len(row["differences"]) >= 5
    printed = capsys.readouterr().out
    assert "ours/theirs" in printed and "where the two models differ" in printed

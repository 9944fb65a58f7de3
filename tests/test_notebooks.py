"""Every book and solution notebook, executed with papermill (profile ``smoke``), and
the results it produced checked: not only that it ran.

Tolerances on measured slopes are wide on purpose: CI runs on two noisy CPU cores
with small lengths. They still separate the hypotheses that matter (time ~ L^2 for
both implementations; memory ~ L^2 for the reference and ~ L for the fused kernel):
a linear law gives slope 1, a quadratic one 2.
"""

from __future__ import annotations

import pytest

from nbhelpers import cell_errors, glued_value, load_script, read_glued


def glued_results(built_book, stem: str) -> dict:
    """Every value a book page glued in this build, after checking that no cell failed."""
    nb = built_book.notebook(stem)
    assert cell_errors(nb) == []
    glued = read_glued(nb)
    return {name: glued_value(glued, name) for name in glued}


@pytest.fixture(scope="module")
def ch1(built_book):
    return glued_results(built_book, "01-attention-bottleneck")


def test_ch1_reference_equals_sdpa(ch1):
    assert ch1["naive_vs_sdpa_diff"] < 1e-12


def test_ch1_time_is_quadratic_for_both(ch1):
    # Clocks on a shared 2-core machine are noisy, and the reference's fitted slope rises
    # above 2 where its score matrix leaves the caches (2.97 seen at 4096-8192 tokens):
    # the bounds only separate "grows like L^2" from "grows like L" (slope 1).
    assert 1.5 <= ch1["slope_time_naive"] <= 3.5
    assert 1.3 <= ch1["slope_time_sdpa"] <= 3.0
    assert ch1["time_ratio_longest"] > 1.0  # the fused kernel is faster


def test_ch1_memory_quadratic_for_naive_linear_for_sdpa(ch1):
    assert 1.6 <= ch1["slope_mem_naive"] <= 2.3
    assert 1.5 <= ch1["slope_mem_naive_bwd"] <= 2.3
    # The fused kernel's small buffers come in allocator-sized steps: its line is uneven
    # (1.0-1.25 seen on the CI machine), still far from the reference's 2.
    assert 0.6 <= ch1["slope_mem_sdpa"] <= 1.5
    assert 0.6 <= ch1["slope_mem_sdpa_bwd"] <= 1.5
    assert ch1["mem_ratio_longest"] > 4


def test_ch1_paper_arithmetic_and_cost_model(ch1):
    assert ch1["paper_bytes_gib"] == 16.0
    # The reference holds scores and weights at once: between 1.5 and 4 score matrices.
    assert 1.5 <= ch1["measured_over_model"] <= 4.0
    assert ch1["max_len_16gib"] > ch1["max_len_16gib_real"]
    # The calculator: 16 GiB / (8 heads * 2 bytes) = 2**30 pairs = 32768**2.
    assert ch1["fits_16gib_8h_bf16"] == 32768
    assert ch1["fits_80gib_8h_bf16"] ** 2 * 16 <= 80 * 2**30 < (ch1["fits_80gib_8h_bf16"] + 1) ** 2 * 16


def test_ch1_saved_activations(ch1):
    assert 0.9 <= ch1["depth_slope"] <= 1.05  # linear in depth
    assert ch1["bytes_per_dff_per_token"] == 8.0  # two float32 per hidden unit and token
    assert 0 < ch1["attn_share"] < 1


@pytest.fixture(scope="module")
def ch2(built_book):
    return glued_results(built_book, "02-lsh-attention")


def test_ch2_collisions_follow_one_minus_theta_over_pi(ch2):
    # The notebook's own tolerance: four standard errors of a proportion at p = 1/2.
    assert ch2["collision_max_dev"] <= ch2["collision_tolerance"]
    # More buckets: a more selective hash (fewer collisions at the same angle).
    assert ch2["collision_30deg_16"] < ch2["collision_30deg_2"]


def test_ch2_sorting_concentrates_attention_in_the_band(ch2):
    assert ch2["band_mass"] > 1.5 * ch2["band_share"]


def test_ch2_recall_grows_with_rounds(ch2):
    assert ch2["recall_1"] < ch2["recall_4"] <= ch2["recall_8"] + 0.02
    assert ch2["recall_8"] > 0.8


def test_ch2_values_are_causal_keys_move_chunks(ch2):
    assert ch2["value_frac"] == 0.0  # no earlier output reads a later value
    assert ch2["key_frac"] > 0.0  # a later key can regroup earlier keys (the paper's design)


def test_ch2_memory_linear_for_lsh_quadratic_for_naive(ch2):
    # Fixed costs (weights, thread buffers) pull LSH's slope below 1 at short lengths
    # (0.57 seen at 2048-4096); what matters is that it is far from the reference's 2.
    assert 0.5 <= ch2["slope_mem_lsh_bwd"] <= 1.4
    assert 0.5 <= ch2["slope_mem_lsh_fwd"] <= 1.4
    assert ch2["slope_mem_naive_bwd"] >= 1.5
    assert ch2["mem_ratio_naive_lsh"] > 1.0


def test_ch2_duplication_table(ch2):
    # The shipped checkpoints, evaluated afresh (accuracy in %). Measured on 256
    # sequences: 99.4-100 on the diagonal; the smoke profile evaluates 64.
    assert ch2["dup_full_full"] > 95
    for m in ("LSH-1", "LSH-2", "LSH-4"):
        assert ch2[f"dup_{m}_{m}"] > 90, m
        assert ch2[f"dup_{m}_LSH-8"] >= ch2[f"dup_{m}_LSH-1"] - 1, m  # more rounds never hurt much
    assert 0 < ch2["dup_window_share"] < 1


@pytest.fixture(scope="module")
def executed_solutions(tmp_path_factory):
    execute = load_script("execute_notebooks")
    from nbhelpers import REPO

    paths = sorted(REPO.glob("solutions/*/*.ipynb"))
    assert paths, "no solution notebooks found"
    out = tmp_path_factory.mktemp("solutions")
    return execute.execute(paths, out, profile="smoke", device="cpu", progress=False, cell_timeout=900)


def test_solution_notebooks_run_and_pass_their_own_tests(executed_solutions):
    for path in executed_solutions:
        assert cell_errors(path) == [], path

"""Every book and solution notebook, executed with papermill (profile ``smoke``), and
the results it produced checked: not only that it ran.

Tolerances on measured slopes are wide on purpose: CI runs on two noisy CPU cores
with small lengths. They still separate the hypotheses that matter (time ~ L^2 for
both implementations; memory ~ L^2 for the reference and ~ L for the fused kernel):
a linear law gives slope 1, a quadratic one 2.
"""

from __future__ import annotations

import re

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
def ch3(built_book):
    return glued_results(built_book, "03-reversible-layers")


def test_ch3_inverse_and_gradients_are_exact_in_float64(ch3):
    # Float64 rounding through a few layers is ~1e-16 (3.7e-16 and 2.3e-16 measured); 1e-12
    # leaves four orders of magnitude and still fails for any real mistake (a wrong sign,
    # a missing term or a different LSH pattern gives 1e-3 or more).
    assert ch3["inv_err_f64"] < 1e-12
    assert ch3["inv_change"] > 0.1  # the stack did change its input: the check is not vacuous
    assert ch3["grad_diff_reuse"] < 1e-10


def test_ch3_saved_bytes_constant_for_reversible_linear_for_the_others(ch3):
    rev, ordinary, ckpt = ch3["saved_rev_mib"], ch3["saved_ord_mib"], ch3["saved_ckpt_mib"]
    # Counted bytes, not a noisy measurement: the reversible stack keeps at most its own two
    # output halves at every depth (0 counted: it holds them outside autograd's saved tensors).
    assert ch3["saved_rev_spread"] == 0
    assert rev[0] <= ch3["halves_mib"]
    # Linear in depth: the increments per added layer agree (exactly for checkpointing: the
    # inputs of each block; within 2 % for the ordinary stack, whose layers do not all save
    # exactly the same bytes: 30.33/60.63/90.75 MiB measured at 2, 4, 6 layers).
    depths = ch3["depths"]
    assert len(depths) >= 3, "the smoke profile needs three depths to test linearity"
    per_ord = ch3["saved_ord_per_layer_mib"]
    assert per_ord > 0
    assert ch3["saved_ckpt_per_layer_mib"] == pytest.approx(ch3["halves_mib"], rel=1e-9)
    for i in range(1, len(depths)):  # bytes per added layer between consecutive depths
        layers = depths[i] - depths[i - 1]
        assert (ordinary[i] - ordinary[i - 1]) / layers == pytest.approx(per_ord, rel=0.02), depths[i]
        assert (ckpt[i] - ckpt[i - 1]) / layers == pytest.approx(ch3["halves_mib"], rel=1e-9), depths[i]
    # What an ordinary block saves is many times its inputs (7.6x measured).
    assert ch3["ord_over_ckpt_saved"] > 4
    assert ch3["bucket_bytes_per_token_layer"] <= 16  # a small integer per head and round (2 x 2 here)


def test_ch3_reversible_peak_grows_only_by_parameters_and_gradients(ch3):
    params = ch3["param_grad_per_layer_mib"]
    rev = ch3["peak_per_layer_reversible_mib"]
    ordinary = ch3["peak_per_layer_ordinary_mib"]
    # Peak RSS per added layer, fitted over the depths: 1.49 MiB measured against 1.38 MiB of
    # float32 weights and gradients (5.6 vs 5.5 with d_model 256). 1.5x plus 0.5 MiB covers
    # page-sized noise of the resident-set counter, and still fails a stack that kept each
    # block's inputs as checkpointing does (2 MiB per layer at 2048 tokens, d_model 128).
    assert rev <= 1.5 * params + 0.5
    # Ordinary adds its saved activations (15 MiB per layer at 2048 tokens): 10.6x measured.
    assert ordinary > 4 * rev
    assert ordinary >= 0.9 * ch3["saved_ord_per_layer_mib"]  # the peak holds what autograd saved
    assert ch3["peak_per_layer_checkpoint_mib"] < ordinary
    assert ch3["peak_ratio_ordinary"] > ch3["peak_ratio_checkpoint"] > 1.0
    assert ch3["peak_ratio_reversible"] < ch3["peak_ratio_ordinary"]


def test_ch3_recomputation_must_replay_random_state_and_buckets(ch3):
    # As implemented: float64 rounding only (2e-16 measured) with and without dropout.
    assert ch3["whatif_reuse"] < 1e-10
    assert ch3["whatif_reuse_dropout"] < 1e-10
    # Without the recorded random state, dropout masks differ and, with re-hashing, so do the
    # rotations: errors of 0.16-0.19 of the largest gradient entry measured; 1e-3 is far
    # above rounding and far below what a different function gives.
    assert ch3["whatif_no_rng_dropout"] > 1e-3
    assert ch3["whatif_no_rng_rehash"] > 1e-3
    # Recorded buckets make LSH independent of the rotations drawn in the recomputation.
    assert ch3["whatif_no_rng"] < 1e-10
    # One bucket id moved per layer (4 of 16,384): 1.4e-2 measured, 1e13 times float64 rounding.
    assert ch3["moved_tokens"] >= 1
    assert ch3["whatif_moved"] > 1e-5
    # The flip rate of the hash is proportional to the perturbation (1.27 per unit measured).
    assert 0.1 < ch3["flip_per_eps"] < 10


def test_ch3_float32_drifts_more_than_float64(ch3):
    # Measured: float32 2.4e-7 and float64 5.5e-16 after 8 blocks; each near its own
    # machine epsilon times a small factor. The bounds separate the two precisions by orders
    # of magnitude and catch a reconstruction that is wrong (error of order 1).
    assert ch3["drift64_last"] < 1e-12
    assert 1e-8 < ch3["drift32_last"] < 1e-4
    assert ch3["drift32_last"] > 1e3 * ch3["drift64_last"]
    assert ch3["drift32_last"] >= ch3["drift32_first"]  # the error accumulates over blocks
    # The reversible float32 gradient stays near float32 rounding (1.85e-7 vs 1.73e-7 for the
    # ordinary stack measured): within 100x of it, far from a wrong gradient (1e-3 and up).
    assert ch3["grad_err_rev32"] < 100 * max(ch3["grad_err_ord32"], 1e-7)


def test_ch3_time_measurements_are_present(ch3):
    # Clocks on the shared CI machine are too noisy for ratio bounds (speed claims live in
    # the book's text, written from the numbers); check only that each mode was timed.
    for name in ("reversible", "ordinary", "checkpoint"):
        assert ch3[f"time_{name}_s"] > 0
    assert ch3["time_ratio_predicted"] > 1.0


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


# ---------------------------------------------------------------- assignment 4's solution
def _printed(notebook, cell_id: str) -> str:
    """What the cell with id ``cell_id`` printed in an executed notebook."""
    from nbhelpers import load_notebook

    cell = next(c for c in load_notebook(notebook)["cells"] if c.get("id") == cell_id)
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.fixture(scope="module")
def solution_04(executed_solutions):
    path = next(p for p in executed_solutions if p.name == "04-chunking.ipynb")
    assert cell_errors(path) == [], path
    return path


def test_solution_04_assembled_pieces_match_autograd(solution_04):
    # Float64 rounding only (7e-14 and 4e-17 measured); the cells say "they agree" below 1e-9.
    for cell in ("assemble_ff", "assemble_loss"):
        assert "(they agree)" in _printed(solution_04, cell), _printed(solution_04, cell)
    # The chunked layer keeps nothing but its input; the chunked loss far less than the N x vocab log-probabilities.
    kept = re.search(r"kept for backward: ([\d,]+) KiB by the plain layer .*?, ([\d,]+) KiB by yours",
                     _printed(solution_04, "assemble_ff"))
    assert kept and int(kept[1].replace(",", "")) > 0 and int(kept[2].replace(",", "")) == 0, kept
    kept = re.search(r"kept for backward: ([\d,]+) KiB by F.cross_entropy .*?, ([\d,]+) KiB by yours",
                     _printed(solution_04, "assemble_loss"), re.S)
    assert kept and int(kept[2].replace(",", "")) * 50 < int(kept[1].replace(",", "")), kept


def test_solution_04_ablation_table(solution_04):
    """The smoke profile's table: exact kept bytes, each stage's saving, and the note for the skipped peaks."""
    text = _printed(solution_04, "measure")
    header = re.match(r"(\d+) tokens, d_model \d+, d_ff \d+, (\d+) layers, (\d+) heads, vocabulary (\d+), .*"
                      r"plain attention: '(\w+)'", text)
    assert header, text
    length, layers, heads, vocab = (int(header[i]) for i in range(1, 5))
    assert length == 512, text
    kept = {m[1]: float(m[2]) for m in re.finditer(r"^\s*(plain|\+LSH|\+reversible|\+chunking)\s+([\d.]+)", text, re.M)}
    assert set(kept) == {"plain", "+LSH", "+reversible", "+chunking"}, text
    # Counted bytes, not a noisy measurement (smoke, plain attention "naive": 13.49, 4.93, 1.02 and 0.53 MiB).
    matrix_mib = length * length * 4 / 2**20  # one head's L x L scores, float32
    if header[5] == "naive":  # the plain model keeps at least one L x L matrix per head and layer: LSH removes it
        assert kept["plain"] - kept["+LSH"] >= 0.9 * layers * heads * matrix_mib, text
    else:  # fused attention keeps no L x L matrix: LSH keeps about as much
        assert 0.8 * kept["plain"] < kept["+LSH"] < 1.2 * kept["plain"], text
    # The reversible stack drops every layer's activations (a fifth is left); chunking then drops the
    # loss's log-probabilities (length x vocabulary float32).
    assert kept["+reversible"] < 0.35 * kept["+LSH"], text
    assert kept["+chunking"] < kept["+reversible"] - 0.9 * length * vocab * 4 / 2**20, text
    assert "peak memory: skipped (PEAK_MEMORY is False)" in text, text


@pytest.fixture(scope="module")
def ch4(built_book):
    return glued_results(built_book, "04-chunking")


def test_ch4_chunking_keeps_nothing_but_is_the_same_function(ch4):
    # Counted bytes, not measurements: the chunked feed-forward keeps nothing of its own
    # (its input belongs to the caller), the chunked loss one log-sum-exp per position.
    assert ch4["ff_saved_chunked_mib"] == 0
    assert ch4["ff_saved_mib"] >= 2 * ch4["ff_hidden_mib"] * 0.99  # the hidden layer before and after GELU
    assert ch4["ce_saved_chunked_mib"] < ch4["ce_logits_mib"] / 100
    assert ch4["ce_saved_mib"] >= ch4["ce_logits_mib"]
    # float64: a few ulps (chunking splits sums over positions only)
    assert ch4["ff_diff"] < 1e-12 and ch4["ce_diff"] < 1e-12
    # one head at a time keeps only the shared normalised input
    assert ch4["heads_saved_ratio"] > 2


def test_ch4_lsh_leaks_local_does_not(ch4):
    assert ch4["leak_local"] < 1e-12
    assert ch4["leak_lsh"] > 1e-9 and ch4["leak_lsh_share"] > 0


def test_ch4_ablation_each_technique_lowers_the_peak(ch4):
    stages = ("plain", "lsh", "reversible", "chunking")
    peaks = [ch4[f"abl_peak_{s}_mib"] for s in stages]
    longest = [ch4[f"abl_longest_{s}"] for s in stages]
    # Each stage removes a term: its peak at the fixed length is lower than the previous
    # stage's (5 % slack for the resident-set measurement's noise).
    for a, b in zip(peaks, peaks[1:]):
        assert b < 1.05 * a, peaks
    assert peaks[0] > 1.5 * peaks[-1], peaks
    # ... and the longest length in the budget never shrinks; the full model's is longer than plain's.
    for a, b in zip(longest, longest[1:]):
        assert b >= a, longest
    assert longest[-1] > longest[0], longest


def test_ch4_memory_linear_in_length_flat_in_depth(ch4):
    # The cost model: the peak is linear in length (log-log slope near 1 once the fixed
    # costs are small next to it) and does not grow with depth beyond the new layers'
    # weights, gradients and Adam moments.
    # (The log-log slope is below 1 at the smoke profile's short lengths, where the
    # weights and Adam's moments are a large share; the fitted line is the model.)
    assert 0.8 <= ch4["step_vs_fit"] <= 1.25  # the longer step lands on the fitted line
    assert ch4["per_token_kib"] > 0
    # attention one head at a time lowers the peak of the whole step
    assert ch4["all_heads_peak_mib"] > ch4["depth_peak_mib"]
    assert ch4["depth_growth_mib"] <= ch4["depth_param_mib"] + 0.15 * ch4["per_token_kib"] * ch4["depth_length"] / 1024
    assert ch4["step_seconds"] > 0


def test_ch4_text_models_measured_again(ch4):
    # The shipped checkpoints, evaluated in this build on the validation text: far below a
    # uniform guess (8 bits), close to what training recorded (different windows: 0.3 bits).
    for name in ("full_1k", "lsh_1k", "lsh_4k"):
        assert ch4[f"bpc_{name}"] < 5, name
        assert abs(ch4[f"bpc_{name}"] - ch4[f"bpc_recorded_{name}"]) < 0.3, name
    assert ch4["sample_chars"] > 0



# ---------------------------------------------------------------- assignment 5's solution
@pytest.fixture(scope="module")
def solution_05(executed_solutions):
    path = next(p for p in executed_solutions if p.name == "05-infini-attention.ipynb")
    assert cell_errors(path) == [], path
    return path


def test_solution_05_layer_from_the_students_pieces_matches_the_library(solution_05):
    text = _printed(solution_05, "assemble")
    assert text.count("(they agree)") == 2, text  # the linear and the delta rule
    # a repeated binding: linear tends to v, the printed delta rule to v / 2
    last = re.findall(r"the linear rule returns ([\d.]+) v, the delta rule ([\d.]+) v", _printed(solution_05, "rules_demo"))
    assert last and float(last[-1][0]) > 0.9 and abs(float(last[-1][1]) - 0.5) < 0.02, last


def test_solution_05_passkey_table_for_both_rules(solution_05):
    text = _printed(solution_05, "passkey_curve")
    assert "linear rule:" in text and "delta rule:" in text, text
    rows = re.findall(r"^\s+(\d+)\s+\d+\s+\d+\s+.*?(\d+)$", text, re.M)
    assert len(rows) >= 4 and all(0 <= int(mean) <= 100 for _, mean in rows), text

@pytest.fixture(scope="module")
def ch5(built_book):
    return glued_results(built_book, "05-infini-attention")


def test_ch5_memory_identities(ch5):
    # float64: segment-wise retrieval is block-causal linear attention; a closed gate is
    # local attention (a few ulps of reordered sums)
    assert ch5["identity_diff"] < 1e-12
    assert ch5["closed_gate_diff"] < 1e-12
    assert ch5["paper_memory_mib"] < 10 < ch5["paper_kv_gib"]


def test_ch5_recall_and_the_delta_rules_half(ch5):
    # one stored pair comes back (cosine 1 up to EPS); many pairs blur
    assert ch5["cap_small_linear"] > 0.999
    assert ch5["cap_large_linear"] < ch5["cap_small_linear"] - 0.1
    assert 0 < ch5["cap_large_delta"] < 1
    # a repeated binding: the linear rule's answer tends to v, the printed delta rule's to v / 2
    assert ch5["share_linear"] > 0.9
    assert abs(ch5["share_delta"] - 0.5) < 0.02


def test_ch5_streaming_memory_is_flat(ch5):
    # the goal: peak(longest) / peak(shortest) <= 1.1 while reading 8x or more tokens
    assert ch5["stream_last"] >= 8 * ch5["stream_first"]
    assert ch5["stream_ratio"] <= 1.1
    assert ch5["stream_kv_last_mib"] > 4 * ch5["stream_peak_last_mib"]  # what full attention would keep
    assert ch5["stream_tokens_per_s"] > 0


def test_ch5_passkey_and_gates_measured(ch5):
    for rule in ("linear", "delta"):
        values = [v for k, v in ch5.items() if k.startswith(f"pk_{rule}_")]
        assert values and all(0 <= v <= 1 for v in values)
        assert 0 <= ch5[f"train_acc_{rule}"] <= 1
    # Adam moves beta by about gate_lr per step: 1e-5 x 1500 steps keeps sigmoid(beta) within
    # ~0.004 of one half (0.02 leaves room); at 1e-2 the gates are free to move, and did.
    assert ch5["gate_spread_gate-lr-small"] < 0.02
    assert ch5["gate_spread_gate-lr-large"] > ch5["gate_spread_gate-lr-small"]


def test_ch5_passkey_through_the_memory_at_the_training_length(ch5):
    # The shipped models retrieve keys that only the memory reaches at the training
    # length (0.9-1.0 recorded at training time; 8 passkeys per cell in the smoke build)
    assert ch5["pk_mem_linear_1x"] > 0.5 and ch5["pk_mem_delta_1x"] > 0.5


# ---------------------------------------------------------------- assignment 6's solution
@pytest.fixture(scope="module")
def solution_06(executed_solutions):
    path = next(p for p in executed_solutions if p.name == "06-recurrent-memory.ipynb")
    assert cell_errors(path) == [], path
    return path


def test_solution_06_bptt_reach_and_flops_from_the_students_functions(solution_06):
    # A loss on the last of six segments reaches the last k + 1 of them (all with None).
    picture = _printed(solution_06, "bptt_demo")
    rows = {k: marks.split() for k, marks in re.findall(r"^\s*(\d+|None)\s+([.#](?: [.#])*)\s*$", picture, re.M)}
    assert set(rows) == {"0", "1", "2", "5", "None"}, picture
    for k, marks in rows.items():
        reached = [i for i, mark in enumerate(marks) if mark == "#"]
        assert reached == list(range(6) if k == "None" else range(max(0, 5 - int(k)), 6)), (k, picture)
    # Exact integers that agree with the library for all nine OPT models; the ratio falls with the model's
    # width (paper: 295x for OPT-125M, 29x for OPT-175B; 281x and 28x here, with segments of 512 and 10 memory tokens).
    table = _printed(solution_06, "flops_table")
    ratios = {m[1]: int(m[2]) for m in re.finditer(r"^\s*(OPT-\S+)\s.*?(\d+)x  yes$", table, re.M)}
    assert len(ratios) == 9, table
    assert 250 <= ratios["OPT-125M"] <= 310 and 20 <= ratios["OPT-175B"] <= 40, ratios
    assert list(ratios.values()) == sorted(ratios.values(), reverse=True), ratios


def test_solution_06_curriculum_learns_where_plain_training_does_not(solution_06):
    text = _printed(solution_06, "curriculum")
    max_segments = int(re.search(r"ASK v after (\d+) segments", text)[1])
    runs = {m[1]: {"steps": int(m[2]), "final": float(m[5]), "reached": m[6]} for m in re.finditer(
        r"^\s*(curriculum|no curriculum)\s+(\d+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)\s+(\S.*)$", text, re.M)}
    assert set(runs) == {"curriculum", "no curriculum"}, text
    # The curriculum adds every segment up to the training length and passes the 0.9 threshold there
    # (smoke, 3 segments: 1.00 after 150 steps; defaults, 6 segments: 1.00 after 300 steps).
    reached = dict(pair.split(":") for pair in runs["curriculum"]["reached"].split())
    assert sorted(int(n) for n in reached) == list(range(1, max_segments + 1)), text
    assert runs["curriculum"]["final"] >= 0.9, text
    # Without it the model trains on the full length from the start and stays far from the threshold
    # (0.09 after 200 steps at 3 segments; 0.17 after 1,500 at 6; chance 0.10).
    assert runs["no curriculum"]["final"] < 0.5, text
    lengths = re.search(r"^\s*segments((?:\s+\d+\*?)+)\s*$", text, re.M)[1].split()
    by_length = {m[1]: [float(x) for x in m[2].split()] for m in re.finditer(
        r"^\s*(curriculum|no curriculum)((?:\s+[\d.]+)+)\s*$", text, re.M)}
    assert len(lengths) == 2 * max_segments and all(len(v) == len(lengths) for v in by_length.values()), text
    at_max = max_segments - 1
    assert by_length["curriculum"][at_max] >= 0.8 > by_length["no curriculum"][at_max] + 0.3, text


@pytest.fixture(scope="module")
def ch6(built_book):
    return glued_results(built_book, "06-recurrent-memory")


def test_ch6_backbone_mask_and_written_memory(ch6):
    # float64: one segment without memory is the backbone (the same operations in the same order)
    assert ch6["backbone_diff"] < 1e-12
    # a masked key gets weight exactly 0, so earlier predictions cannot move at all; the leaky
    # mask lets a later token reach them through the read memory
    assert ch6["causal_ours"] == 0.0
    assert ch6["causal_leaky"] > 1e-6
    assert ch6["memory_moves"] > 1e-3


def test_ch6_bptt_depth_sets_how_far_gradients_reach(ch6):
    # six segments, loss on the last: k = 0, 1, 2 reach 1, 2, 3 segments; no bound reaches all six
    assert [ch6["reach_0"], ch6["reach_1"], ch6["reach_2"], ch6["reach_all"]] == [1, 2, 3, 6]


def test_ch6_curriculum_against_none(ch6):
    # The curriculum reaches the last stage and answers (runs here: 1.00 after 200 steps); trained on
    # all segments from the start the same model stays far below it (chance is 0.1; measured at 6
    # segments: 0.08 after 400 steps, 0.17 after 1500; at 4 segments 0.78 after 600, so how far
    # below depends on the length: the smoke profile keeps 6)
    assert ch6["stage_memorize_curriculum"] == ch6["max_segments"]
    assert ch6["acc_memorize_curriculum"] >= 0.9
    assert ch6["acc_memorize_no_curriculum"] <= ch6["acc_memorize_curriculum"] - 0.3
    assert ch6["stage_detect_curriculum"] == ch6["max_segments"]
    # the encoder variant (memory prepended once, answers blanked) learns memorize too (1.00 here)
    assert ch6["acc_memorize_encoder_curriculum"] >= 0.9


def test_ch6_extrapolation_falls_later_for_longer_training(ch6):
    trained = sorted({int(k.split("_")[2]) for k in ch6 if k.startswith("ex_hold_")})
    assert len(trained) >= 2
    for n in trained:
        assert ch6[f"ex_{n}_1x"] >= 0.9  # right at the training length
        assert ch6[f"ex_{n}_16x"] < ch6[f"ex_{n}_1x"] - 0.3  # our small models do not hold 16x
    # the longest-trained model holds >= 0.9 at least as far (in segments) as the shortest-trained
    assert ch6[f"ex_hold_{trained[-1]}"] > ch6[f"ex_hold_{trained[0]}"]


def test_ch6_bptt_memory_grows_with_depth_and_full_depth_learns(ch6):
    depths = sorted(int(k.split("_")[2]) for k in ch6 if k.startswith("bptt_peak_"))
    peaks = [ch6[f"bptt_peak_{k}_mib"] for k in depths]
    # one more segment's activations per unit of depth (about 24 MiB in this step): strictly rising
    assert all(b > a + 5 for a, b in zip(peaks, peaks[1:]))
    assert ch6[f"bptt_acc_{depths[-1]}"] >= 0.9
    assert all(0 <= ch6[f"bptt_acc_{k}"] <= 1 for k in depths)


def test_ch6_streaming_memory_is_flat(ch6):
    assert ch6["stream_last"] >= 8 * ch6["stream_first"]
    assert ch6["stream_ratio"] <= 1.1
    assert ch6["stream_tokens_per_s"] > 0


def test_ch6_flops_reproduce_the_papers_arithmetic(ch6):
    # paper: 295x (OPT-125M) and 29x (OPT-175B) at about 2M tokens; our count is 4-5 % lower
    # (the paper does not publish its counting convention); memory tokens cost a little
    assert abs(ch6["flops_125m"] / 295 - 1) < 0.06
    assert abs(ch6["flops_175b"] / 29 - 1) < 0.06
    assert ch6["flops_125m_nomem"] > ch6["flops_125m"]


# --- chapter 7
@pytest.fixture(scope="module")
def ch7(built_book):
    return glued_results(built_book, "07-capstone")


def test_ch7_models_have_matched_parameter_counts(ch7):
    assert ch7["params_spread_pct"] < 0.5
    assert 50_000 < ch7["params_sdpa"] < 200_000


def test_ch7_memory_laws_side_by_side(ch7):
    # naive attention stores every score: memory ~ L^2 (fitted 1.9 over 1K-2K-4K here); the fused
    # kernel and LSH are linear; reading segment by segment is flat (0.01-0.05 here)
    assert ch7["mem_slope_naive_fwd"] > 1.6
    assert ch7["mem_slope_sdpa_fwd"] < 1.2
    assert ch7["mem_slope_infini_fwd"] < 0.2 and ch7["mem_slope_rmt_fwd"] < 0.2
    for method in ("sdpa", "lsh", "reformer", "infini", "rmt"):  # training keeps activations per token
        assert 0.6 < ch7[f"mem_slope_{method}_train"] < 1.3, method
    # the budget stops naive attention first, in both modes (smoke: 384 MiB; naive reads 4K in ~540 MiB)
    for mode in ("fwd", "train"):
        assert ch7[f"longest_naive_{mode}"] < ch7[f"longest_sdpa_{mode}"]
        assert ch7[f"longest_infini_{mode}"] >= ch7[f"longest_sdpa_{mode}"]
    # side by side at one length: naive needs several times SDPA's memory for the same numbers
    assert ch7["m_ratio_naive_fwd"] > 3 and ch7["m_ratio_naive_train"] > 2
    # the Reformer's reversible layers and chunking keep less for backward than its LSH model
    assert ch7["m_ratio_reformer_train"] < ch7["m_ratio_lsh_train"]


def test_ch7_quality_at_and_beyond_the_training_length(ch7):
    top = ch7["max_multiple"]
    for method in ("sdpa", "lsh", "infini", "rmt"):
        # passkey at the training length (shipped models, 32 sequences in smoke)
        assert ch7[f"acc_passkey_{method}_1x"] >= 0.6, method
        # "none keeps its 1x passkey accuracy": the page says it, the numbers must show it
        assert ch7[f"acc_passkey_{method}_max"] <= ch7[f"acc_passkey_{method}_1x"] - 0.3, method
    # exact attention copies at the training length; a fixed memory cannot hold half the input
    assert ch7["acc_copy_sdpa_1x"] >= 0.9
    assert ch7["acc_copy_rmt_1x"] <= 0.1 and ch7["acc_copy_infini_1x"] <= 0.1
    assert top >= 4
    assert ch7["verdict_passkey"] in ("sdpa", "lsh", "infini", "rmt")

# --- assignment 7
# The solution of assignment 7 (the capstone), smoke profile: the sweep at 512 to 2,048 tokens, the accuracy
# table on passkey and copy (32 sequences per cell), the project measured on the grader's scenario.
@pytest.fixture(scope="module")
def solution_07(executed_solutions):
    path = next(p for p in executed_solutions if p.name == "07-capstone.ipynb")
    assert cell_errors(path) == [], path
    return path


def test_solution_07_exponents_and_longest_within_the_budget(solution_07):
    """The student's memory_exponent and longest_within on the sweep: about 2 for naive attention, about 1
    for SDPA, about 0 for Infini-attention and RMT reading, about 1 for them in training; only the two memory
    methods read to the end of the sweep within the project's 2 MiB."""
    text = _printed(solution_07, "sweep_summary")
    rows = {(m[1], m[2]): (m[3], float(m[4])) for m in re.finditer(
        r"^(\w+)\s+(forward\+backward|forward)\s+(none|[\d,]+\+?)\s+(-?[\d.]+)\s+[\d.]+ MiB$", text, re.M)}
    assert len(rows) == 10, text
    exponent = {pair: p for pair, (_, p) in rows.items()}
    # smoke: three lengths (512 to 2,048), where fixed costs still weigh: naive 1.8, sdpa 0.8, lsh 0.7, infini
    # and rmt about 0.1 reading; infini and rmt 1.0 training. Their reading peaks are under 1 MiB, where a fresh
    # process's peak moves by 0.1-0.3 MiB between runs: over a single doubling (the old 512 to 1,024 sweep) a
    # flat line once read 0.49, so the sweep spans two doublings.
    assert exponent[("naive", "forward")] > 1.5 and exponent[("naive", "forward+backward")] > 1.5, text
    for method in ("sdpa", "lsh"):
        assert 0.4 < exponent[(method, "forward")] < 1.3, text
    for method in ("infini", "rmt"):
        assert abs(exponent[(method, "forward")]) < 0.4, text
        assert exponent[(method, "forward+backward")] > 0.7, text
        assert rows[(method, "forward")][0].endswith("+"), text  # the end of the sweep, within the budget
    for method in ("naive", "sdpa", "lsh"):
        assert not rows[(method, "forward")][0].endswith("+"), text  # exact and LSH attention leave 2 MiB first
    assert all(rows[(m, "forward+backward")][0] == "none" for m in ("naive", "sdpa", "lsh", "infini", "rmt")), text


def test_solution_07_accuracy_table_and_baseline(solution_07):
    """Every shipped model answers most passkeys at its training length and fewer at 8x; exact attention on
    the last 128 tokens falls to about 128 / length."""
    text = _printed(solution_07, "quality_table")
    table = {(m[1], m[2]): [float(x) for x in m[3].split()] for m in re.finditer(
        r"^(passkey|associative|copy)\s+(sdpa|lsh|infini|rmt)((?:\s+[\d.]+)+)\s*$", text, re.M)}
    assert {task for task, _ in table} == {"passkey", "copy"} and len(table) == 8, text
    for method in ("sdpa", "lsh", "infini", "rmt"):
        one, *_, eight = table[("passkey", method)]
        assert one >= 0.8 and eight < one - 0.3, (method, text)
    assert table[("copy", "sdpa")][0] >= 0.8, text  # exact attention copies at its training length
    demo = _printed(solution_07, "baseline_demo")
    by_length = {int(m[1].replace(",", "")): (float(m[2]), float(m[3])) for m in re.finditer(
        r"^\s*([\d,]+)\s+([\d.]+|-)\s+([\d.]+)\s*$", demo, re.M) if m[2] != "-"}
    assert by_length[128][0] == by_length[128][1] >= 0.8, demo  # 128 tokens: the window is everything
    assert by_length[1024][1] <= 0.35, demo  # the last 128 of 1,024 tokens: about 1 in 8 (32 sequences)


def test_solution_07_choice_fits_the_budget_and_beats_the_baseline(solution_07):
    """The solution's CHOICE (Infini-attention on the last 512 tokens), measured as the grader measures it,
    with the student's windowed_accuracy: 0.73 MiB of 2 MiB; 0.258 against the baseline's 0.125 + 0.1."""
    text = _printed(solution_07, "your_numbers")
    base = re.search(r"baseline \(sdpa reading the last 128 tokens\): accuracy ([\d.]+); to beat it: ([\d.]+)", text)
    assert base and abs(float(base[1]) - 0.125) < 0.03 and abs(float(base[2]) - float(base[1]) - 0.1) < 1e-3, text
    peak = re.search(r"peak memory ([\d.]+) MiB: fits the budget of 2.0 MiB", text)
    assert peak and float(peak[1]) < 1.5, text
    accuracy = re.search(r"accuracy ([\d.]+): beats the baseline \+ margin", text)
    assert accuracy and float(accuracy[1]) >= float(base[2]), text

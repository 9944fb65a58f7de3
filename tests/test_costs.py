"""Tests for longctx_lib.costs: the cost model against the paper and against measurement."""

import pytest
import torch

from longctx_lib import costs
from longctx_lib.attention import scaled_dot_product_attention
from longctx_lib.measure import saved_tensor_bytes
from longctx_lib.transformer import Transformer


def test_paper_arithmetic_64k_scores_are_16_gib():
    # Reformer paper: Q K^T at 64K tokens in float32 is 16 GB per head and batch element.
    assert costs.score_matrix_bytes(1, 1, 65536) == 16 * 2**30


def test_paper_arithmetic_activations_2_gib():
    # 64K tokens x 1K dims x batch 8 = 0.5B floats = 2 GB per layer (in float32): the
    # b l d_model term of the Reformer's row of Table 3, made to dominate its LSH term
    # (1 head, 1 round, c = 1).
    elements = costs.table3_memory(
        "reformer", batch=8, length=65536, d_model=1024, d_ff=4096, n_heads=1, n_layers=1,
        n_rounds=1, chunk=1,
    )
    assert elements == 2**29
    assert elements * costs.bytes_per_element(torch.float32) == 2 * 2**30


def test_score_bytes_match_a_real_tensor():
    _, w = scaled_dot_product_attention(
        *(torch.randn(2, 3, 40, 8, dtype=torch.float16) for _ in range(3)), return_weights=True
    )
    assert costs.score_matrix_bytes(2, 3, 40, dtype=torch.float16) == w.numel() * w.element_size()


def test_flops_and_budget():
    assert costs.attention_flops(1, 1, 10, 4) == 4 * 10 * 10 * 4
    assert costs.attention_flops(2, 3, 10, 4, key_length=5) == 4 * 2 * 3 * 10 * 5 * 4
    for budget in [0, 3, 4, 100, 2**30, 123456789]:
        length = costs.max_length_for_budget(budget, heads=2)
        assert length * length * 2 * 4 <= budget < (length + 1) ** 2 * 2 * 4


def test_table3_orders_the_models():
    kw = dict(batch=1, length=2**20, d_model=1024, d_ff=4096, n_heads=8, n_layers=12, n_rounds=4)
    m = {name: costs.table3_memory(name, **kw) for name in costs.TABLE3_MODELS}
    assert m["transformer"] == 12 * m["reversible"]
    assert m["reformer"] < m["lsh_transformer"] < m["transformer"]
    assert m["chunked_reversible"] <= m["reversible"]
    # At 64K tokens and 4 rounds, n_r * c = 4 * 128^2 = 65536 = l: LSH's attention term
    # equals full attention's. LSH only pays off beyond that length (or with fewer rounds).
    kw.update(length=65536)
    assert costs.table3_memory("lsh_transformer", **kw) == costs.table3_memory("transformer", **kw)


def test_activation_model_predicts_measured_growth():
    """Doubling depth doubles the per-layer term; growing d_ff adds about 2 b l delta bytes.

    The model gives leading terms only; a real block keeps a small multiple of each
    (here: both the pre- and the post-GELU hidden).
    """
    torch.manual_seed(0)
    x = torch.randn(1, 64, 32)

    def saved(d_ff, n_layers, length=64):
        model = Transformer(32, 4, d_ff, n_layers)
        return saved_tensor_bytes(model, x[:, :length])

    per_layer = saved(128, 2) - saved(128, 1)
    assert saved(128, 5) - saved(128, 1) == 4 * per_layer  # exactly linear in depth
    d_ff_increment = saved(256, 1) - saved(128, 1)
    model_increment = costs.transformer_activation_bytes(
        batch=1, length=64, d_ff=256, n_heads=4, n_layers=1
    ) - costs.transformer_activation_bytes(batch=1, length=64, d_ff=128, n_heads=4, n_layers=1)
    # Exactly two float32 numbers per hidden unit and token: the GELU keeps its input,
    # the second Linear keeps the GELU's output.
    assert d_ff_increment == 2 * model_increment


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: costs.score_matrix_bytes(0, 1, 1), "batch"),
        (lambda: costs.score_matrix_bytes(1, 1, 2.5), "length"),
        (lambda: costs.attention_flops(1, 1, 1, -3), "head_dim"),
        (lambda: costs.max_length_for_budget(-1), "budget_bytes"),
        (lambda: costs.table3_memory("flash", batch=1, length=1, d_model=1, d_ff=1, n_heads=1, n_layers=1), "model"),
        (lambda: costs.bytes_per_element("float32"), "dtype"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()

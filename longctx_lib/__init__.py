"""longctx_lib: the tested implementations behind the course *Long Context from Scratch*.

One module per idea, each introduced by a chapter of the book:

- :mod:`longctx_lib.device` - ``device="auto"`` picks CUDA, then MPS, then the CPU (ch. 1)
- :mod:`longctx_lib.attention` - reference and fused scaled dot-product attention (ch. 1)
- :mod:`longctx_lib.costs` - FLOPs and bytes: the cost model, the Reformer's Table 3 (ch. 1)
- :mod:`longctx_lib.measure` - time, peak memory, bytes saved for backward (ch. 1)
- :mod:`longctx_lib.transformer` - a plain pre-LN transformer, the baseline (ch. 1)
- :mod:`longctx_lib.lsh` - LSH attention: hash, sort, chunk, multi-round (ch. 2)
- :mod:`longctx_lib.tasks` - synthetic long-context tasks, made on the fly (ch. 2 onwards)
- :mod:`longctx_lib.duplication` - the Reformer's duplication experiment (Table 2) at toy scale (ch. 2)
- :mod:`longctx_lib.reversible` - reversible residual layers, memory flat in depth (ch. 3)
- :mod:`longctx_lib.chunking` - chunked feed-forward and chunked loss (ch. 4)
- :mod:`longctx_lib.reformer` - the assembled Reformer language model (ch. 4)
- :mod:`longctx_lib.text` - real text without a download: the standard library's source (ch. 4)
- :mod:`longctx_lib.charlm` - character-level training in bits per character (ch. 4)
- :mod:`longctx_lib.infini` - Infini-attention: compressive memory, learned gate, streaming (ch. 5)
- :mod:`longctx_lib.passkey` - passkey retrieval with Infini-attention: linear vs delta memory, the gate's learning rate (ch. 5)
- :mod:`longctx_lib.rmt` - the Recurrent Memory Transformer: memory tokens, BPTT depth, curriculum, FLOPs (ch. 6)
- :mod:`longctx_lib.bench` - every method side by side: time, memory and quality on the same workloads (ch. 7;
  not imported here: ``from longctx_lib import bench``, or ``python -m longctx_lib.bench``)
- :mod:`longctx_lib.grading` - tamper-resistant autograding for the assignments (not imported here)
"""

from . import (
    attention,
    charlm,
    chunking,
    costs,
    device,
    duplication,
    infini,
    lsh,
    measure,
    passkey,
    reformer,
    reversible,
    rmt,
    tasks,
    text,
    transformer,
)
from .attention import MultiHeadAttention, scaled_dot_product_attention
from .device import resolve_device
from .lsh import LSHSelfAttention, hash_vectors, lsh_attention
from .reversible import ReversibleBlock, ReversibleSequence

__version__ = "0.1.0"

__all__ = [
    "attention",
    "costs",
    "device",
    "measure",
    "transformer",
    "lsh",
    "tasks",
    "duplication",
    "reversible",
    "chunking",
    "reformer",
    "text",
    "charlm",
    "infini",
    "passkey",
    "rmt",
    "MultiHeadAttention",
    "LSHSelfAttention",
    "ReversibleBlock",
    "ReversibleSequence",
    "hash_vectors",
    "lsh_attention",
    "scaled_dot_product_attention",
    "resolve_device",
    "__version__",
]

"""FlexLoRA (Bai et al., NeurIPS 2024): SVD redistribution to heterogeneous client ranks.

The server forms D = sum_k p_k s B_k A_k from the clients' (zero-padded) factors and factorizes it
as `svd` does (top-r SVD, `symmetric`); each client then trains the truncation of the global to
its own rank r_k, i.e. the top r_k singular components (federation.client_ranks).
"""
from __future__ import annotations

from fedlora.methods.base import MethodPreset, register

PRESET = MethodPreset(
    name="flexlora",
    server="symmetric",
    takes_client_ranks=True,
    summary="factorize(sum p_k s B_k A_k, symmetric); client k trains the top r_k components",
    aggregates="products",
    label="FlexLoRA",
)
register(PRESET)

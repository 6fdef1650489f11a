"""Projectors from the recommender's vector space into the LLM's token-embedding space.

A config string picks the projector, as in LLaVA's ``build_vision_projector``:
``mlp2x_gelu`` (the paper's Linear(d_rec -> H/2), GELU, Linear(H/2 -> H)), ``linear`` or ``identity``.
"""

from __future__ import annotations

from torch import nn

PROJECTORS = ("mlp2x_gelu", "linear", "identity")


def build_projector(kind: str, d_in: int, d_out: int) -> nn.Module:
    """Projector ``kind`` mapping (..., d_in) to (..., d_out)."""
    if kind == "mlp2x_gelu":
        hidden = max(1, d_out // 2)
        return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "identity":
        if d_in != d_out:
            raise ValueError(
                f"projector 'identity' needs the recommender's dimension ({d_in}) to equal the LLM hidden size "
                f"({d_out}); use aligner.projector=linear or mlp2x_gelu"
            )
        return nn.Identity()
    raise ValueError(f"unknown projector {kind!r}; choose one of {', '.join(PROJECTORS)}")

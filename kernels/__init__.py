"""The gated embedding lookup: ``out[b, f] = weight[field_offsets[f] + ids[b, f]] * gate``.

One op that every model's front end calls, so the gate multiply exists in exactly one place.
"""
from .op import gated_embedding

__all__ = ["gated_embedding"]

"""The op families whose rules read every spelling (module, functional, ATen) through one view."""
from __future__ import annotations

from .conv import conv_rules
from .embedding import embedding_rules
from .indexing import indexing_rules
from .linear import linear_rules
from .norms import norm_rules


def family_rules() -> dict:
    """Every spelling of convolution, linear, normalisation, embedding and indexing -> its family's rule."""
    return {**conv_rules(), **linear_rules(), **norm_rules(), **embedding_rules(), **indexing_rules()}

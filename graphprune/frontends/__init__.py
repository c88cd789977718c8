"""Frontends: turn a model and example inputs into an FX GraphModule whose nodes carry recorded values.

`graphprune.trace` is the torch.fx frontend (modules with a rule stay whole);
`torch_export.export_graph` is the torch.export frontend (every op spelled in Core ATen).
"""
from .dynamic_batch import export_program
from .torch_export import export_graph, exported_graph, flat_inputs

__all__ = ["export_graph", "export_program", "exported_graph", "flat_inputs"]

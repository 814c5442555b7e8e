"""`lightfmp export`: a finished run as an ONNX model plus everything a serving system needs.

DIR/model.onnx            one input per kept field, output `probability` [batch]; numeric bucketizing and OOV
                          clamping happen inside the graph
DIR/feature_schema.json   the serving contract (also in the model's metadata_props, key `lightfmp.feature_schema`)
DIR/vocab/<field>.json    raw value string -> id, per categorical / multi-hot field (hashed fields have none: their
                          `hash` entry in feature_schema.json gives the rule, and they need --inputs ids)
DIR/triton/<name>/...     a Triton model repository entry (onnxruntime_onnx)

Every export is validated (checker, graph inputs, ONNX Runtime vs PyTorch on the run's test rows, batch 1 vs large
batch, test AUC vs the run's); a failed check fails the export and leaves DIR untouched.

Modules, one job each: `contract` (the typed feature_schema.json, load / save / file checks), `bundle` (an export
read back for serving, and its ONNX Runtime sessions), `feeds` (graph inputs from rows or sampled), `graph` (the
ONNX build), `validate` (checks against the run), `exporter` (`export_run`, which ties them together and writes the
Triton entry).
"""
from .contract import METADATA_KEY, InputSpec, ServingContract, input_spec, load_contract
from .exporter import export_run
from .feeds import feeds_from_frame
from .graph import DEFAULT_OPSET

__all__ = ["export_run", "input_spec", "feeds_from_frame", "load_contract", "ServingContract", "InputSpec",
           "DEFAULT_OPSET", "METADATA_KEY"]

"""The ONNX graph: the per-field serving module, its TorchScript export, and the graph surgery after it
(fp16 embedding tables, LabelEncoder for raw string inputs), saving (external data past 2 GiB) and the checker."""
from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import LightFMPError
from ..schema import FIRST_ID, OOV_ID, PAD_ID, FeatureSchema
from .contract import EXTERNAL_DATA_FILE, MODEL_FILE, OUTPUT_NAME, InputSpec

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 20
ML_OPSET = 3  # ai.onnx.ml version paired with ONNX opset 17 (LabelEncoder with string keys)
# protobuf cannot serialise a message over 2 GiB; leave headroom for the graph itself
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2
TABLES = ("model.embedding.weight", "model.embedding.linear")
_ONNX_TYPES = {"int64": 7, "float32": 1, "string": 8}


class ServingModule(nn.Module):
    """Per-field inputs -> probability: the transforms `FeatureSchema.encode` applies, then the model.

    Categorical / multi-hot ids outside [0, vocab_size) become the OOV id; numeric values are bucketized here
    (comparisons in float32, the serving input dtype) and NaN becomes the OOV id."""

    def __init__(self, model: nn.Module, schema: FeatureSchema):
        super().__init__()
        self.model = model
        self.kinds = [f.kind for f in schema.fields]
        self.sizes = [f.vocab_size for f in schema.fields]
        for i, f in enumerate(schema.fields):
            if f.kind == "numeric":
                self.register_buffer(f"edges{i}", torch.tensor(f.boundaries or [], dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cols = []
        for i, (kind, x) in enumerate(zip(self.kinds, inputs)):
            if kind == "numeric":
                edges = getattr(self, f"edges{i}")
                if edges.numel():
                    ids = (x.unsqueeze(1) >= edges.unsqueeze(0)).long().sum(1) + FIRST_ID
                else:
                    ids = torch.full_like(x, FIRST_ID, dtype=torch.long)
                ids = torch.where(torch.isnan(x), torch.full_like(ids, OOV_ID), ids)
                cols.append(ids.unsqueeze(1))
            else:
                x = x.long()
                ok = (x >= 0) & (x < self.sizes[i])
                x = torch.where(ok, x, torch.full_like(x, OOV_ID))
                cols.append(x if kind == "multi_hot" else x.unsqueeze(1))
        return torch.sigmoid(self.model(torch.cat(cols, 1)))


def serving_module(model: nn.Module, schema: FeatureSchema, table_dtype: str = "fp32") -> ServingModule:
    """The module to export (eval mode). fp16: a copy whose tables went through float16 and back, which is what
    the fp16 graph computes (Gather in fp16, then an exact Cast to float32)."""
    if table_dtype == "fp16":
        model = copy.deepcopy(model)
        with torch.no_grad():
            for p in (model.embedding.weight, model.embedding.linear):
                if p is not None:
                    p.copy_(p.half().float())
    return ServingModule(model, schema).eval()


def torch_inputs(feeds: dict[str, np.ndarray], schema: FeatureSchema) -> tuple[torch.Tensor, ...]:
    """The serving module's arguments for id feeds, in field order."""
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[f.name])) for f in schema.fields)


def build_graph(module: ServingModule, kept: FeatureSchema, example_feeds: dict, opset: int, work: Path,
                table_dtype: str, raw: bool):
    """The exported model proto: TorchScript export, then fp16 tables and raw-input LabelEncoders as asked.
    `work` is a scratch directory (removed afterwards)."""
    proto = _torch_export(module, kept, example_feeds, opset, work)
    if table_dtype == "fp16":  # the tables by their own names, before a field's name can take one
        _tables_to_fp16(proto)
    _rename_inputs(proto.graph, {_placeholder(i): f.name for i, f in enumerate(kept.fields)})
    if raw:
        _add_label_encoders(proto, kept)
    return proto


def _torch_export(module: ServingModule, kept: FeatureSchema, feeds: dict, opset: int, work: Path):
    import onnx
    # the exporter takes placeholder names, renamed to the fields' afterwards (`build_graph`): it refuses names such
    # as '123' and renames an input '0' after one of its own values, while ONNX allows any unique name
    names = [_placeholder(i) for i in range(len(kept.fields))]
    example = tuple(t[:2] for t in torch_inputs(feeds, kept))
    dynamic = {n: {0: "batch"} for n in names + [OUTPUT_NAME]}
    work.mkdir()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in torch >= 2.9 but still the most predictable for this graph
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(work / MODEL_FILE), dynamo=False, opset_version=opset,
                              input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                              do_constant_folding=True)
        proto = onnx.load(str(work / MODEL_FILE), load_external_data=True)
    except LightFMPError:
        raise
    except Exception as e:  # the exporter raises many types; the first line names the op
        raise LightFMPError(f"torch.onnx.export failed at opset {opset}: {str(e).splitlines()[0]}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return proto


def _tables_to_fp16(proto) -> None:
    """Store the embedding tables in float16: Gather reads fp16 rows, a Cast right after restores float32."""
    from onnx import TensorProto, helper, numpy_helper
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    for table in TABLES:
        if table not in inits:
            continue
        users = [n for n in nodes if table in n.input]
        if any(n.op_type != "Gather" or n.input[0] != table for n in users):
            raise LightFMPError(f"--dtype fp16: table {table} has a reader other than Gather; cannot convert")
        arr = numpy_helper.to_array(inits[table]).astype(np.float16)
        inits[table].CopyFrom(numpy_helper.from_array(arr, table))
        for n in users:
            out = n.output[0]
            n.output[0] = out + "_fp16"
            nodes.insert(nodes.index(n) + 1,
                         helper.make_node("Cast", [n.output[0]], [out], to=TensorProto.FLOAT, name=n.name + "_cast"))
    del g.node[:]
    g.node.extend(nodes)
    _drop_value_info(g)


def _placeholder(i: int) -> str:
    return f"lightfmp_input_{i}"


def _rename_inputs(g, names: dict[str, str]) -> None:
    """Rename the graph inputs `names` (old -> new) everywhere they are read; a value of the graph's own that
    already bears a new name is renamed first (a suffix of underscores), so every name stays unique."""
    taken = {i.name for i in g.input} | {o.name for o in g.output} | {t.name for t in g.initializer} \
        | {v for n in g.node for v in list(n.input) + list(n.output)}
    inputs = set(names)
    clash = {}
    for new in names.values():
        if new in taken and new not in inputs:
            fresh = new + "_"
            while fresh in taken or fresh in names.values():
                fresh += "_"
            taken.add(fresh)
            clash[new] = fresh
    mapping = {**clash, **names}
    for n in g.node:
        for seq in (n.input, n.output):
            for k, v in enumerate(seq):
                if v in mapping:
                    seq[k] = mapping[v]
    for seq in (g.input, g.output, g.value_info):
        for v in seq:
            v.name = mapping.get(v.name, v.name)
    for t in g.initializer:
        t.name = mapping.get(t.name, t.name)


def _add_label_encoders(proto, kept: FeatureSchema) -> None:
    """Raw-input mode: string inputs go through ai.onnx.ml LabelEncoder (vocab -> id, anything else -> OOV;
    for multi-hot also "" -> padding) into the id graph."""
    from onnx import TensorProto, helper
    g = proto.graph
    used = {v for n in g.node for v in list(n.input) + list(n.output)} | {i.name for i in g.input}
    new_nodes = []
    for inp in g.input:
        f = next((f for f in kept.fields if f.name == inp.name), None)
        if f is None or f.kind == "numeric":
            continue
        ids = inp.name + "__ids"
        while ids in used:
            ids += "_"
        used.add(ids)
        for n in g.node:
            for k, v in enumerate(n.input):
                if v == inp.name:
                    n.input[k] = ids
        mapping = f.token_ids()
        mapping[""] = PAD_ID if f.kind == "multi_hot" else OOV_ID
        new_nodes.append(helper.make_node("LabelEncoder", [inp.name], [ids], name=f"vocab_{len(new_nodes)}",
                                          domain="ai.onnx.ml", keys_strings=list(mapping),
                                          values_int64s=list(mapping.values()), default_int64=OOV_ID))
        inp.type.tensor_type.elem_type = TensorProto.STRING
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "ai.onnx.ml" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    _drop_value_info(g)


def _drop_value_info(g) -> None:
    # stale intermediate shapes/types would fail full_check after surgery; shape inference recomputes them
    del g.value_info[:]


def save_model(proto, path: Path) -> bool:
    """Save; tables over the protobuf limit go to external data. Returns whether external data was used."""
    import onnx
    from onnx import numpy_helper
    size = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    external = size > EXTERNAL_DATA_THRESHOLD
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return external


def check_graph(path: Path, specs: list[InputSpec]) -> None:
    """onnx.checker (full), then graph inputs exactly the contract's (names, order, dtypes, shapes) and the one
    output. The TorchScript exporter silently drops inputs that do not reach the output."""
    import onnx
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise LightFMPError(f"exported model fails onnx.checker: {str(e).splitlines()[0]}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    got = [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in graph.input]
    want = [(s.name, _ONNX_TYPES[s.dtype], [d if isinstance(d, int) else None for d in s.shape]) for s in specs]
    if got != want:
        raise LightFMPError(f"exported graph inputs {[g[0] for g in got]} differ from the kept fields "
                            f"{[s.name for s in specs]} (names, dtypes or shapes)")
    outs = [o.name for o in graph.output]
    if outs != [OUTPUT_NAME]:
        raise LightFMPError(f"exported graph outputs {outs}, expected ['{OUTPUT_NAME}']")


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


__all__ = ["ServingModule", "serving_module", "torch_inputs", "build_graph", "save_model", "check_graph",
           "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "EXTERNAL_DATA_THRESHOLD"]

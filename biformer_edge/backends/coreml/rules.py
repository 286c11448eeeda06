"""What a Core ML program must hold, torch-free: the names that mark a router's ops, coremltools kept quiet, and the
structural checks of an ``.mlpackage`` read from its spec (they run on Linux, where Core ML cannot predict).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections import Counter
from pathlib import Path

from ...contract import INPUT_NAME, MLPACKAGE, ROUTER_MODULE, routing_names
from ...errors import UserError
from . import COREML

MAX_RANK = 5                                  # Core ML's tensor rank limit: BRA keeps every tensor at rank <= 5
GATHER_OPS = ("gather", "gather_along_axis", "gather_nd")
ROUTER_SCOPE_SEP = "__"                       # '<router module path, dots as _>__<torch.export node name>'
_ROUTER_OP_NAME = re.compile(rf"(?:^|_){ROUTER_MODULE}{ROUTER_SCOPE_SEP}")   # the scope ends with the router's name

# MIL proto DataType names -> short names used in reports
_DTYPES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "BFLOAT16": "bf16", "INT8": "int8",
           "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "INT64": "int64",
           "BOOL": "bool", "STRING": "string"}


@contextlib.contextmanager
def quiet_coremltools():
    """coremltools reports through Python warnings, ``logging``, tqdm bars on stderr and its native libraries
    ("Failed to load _MLModelProxy" off macOS): keep all of it off the user's stderr while it converts."""
    from ...console import captured_native_stderr
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), captured_native_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)



def _coremltools():
    try:
        with quiet_coremltools():
            import coremltools as ct
    except ImportError:
        raise UserError(f"coremltools is not installed: {COREML.install_hint}") from None
    return ct


# --------------------------------------------------------------------------------------------------------- router


def router_scope(module_path: str) -> str:
    """The op-name prefix of the router at ``module_path`` (relative to the model): 'backbone.stages.0.0.attn.router'
    -> 'backbone_stages_0_0_attn_router__'."""
    return re.sub(r"\W", "_", module_path) + ROUTER_SCOPE_SEP


def is_router_op(name: str) -> bool:
    """Whether a MIL op (or torch.export node) named ``name`` runs inside a BRA router (``attn.router``)."""
    return bool(_ROUTER_OP_NAME.search(name))



def router_op_names(mlmodel) -> list[str]:
    """Names of the non-const ops of an ML Program that run inside a BRA router (:func:`is_router_op`)."""
    spec = mlmodel.get_spec()
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    return sorted({_op_name(op) for op in _walk_ops(block) if op.type != "const" and is_router_op(_op_name(op))})



# ------------------------------------------------------------------------------------------------------- inspect


def _package_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".mlpackage" and (path / MLPACKAGE).exists():
        path = path / MLPACKAGE
    if not path.exists():
        raise UserError(f"no Core ML package at {path}: export one with 'biformer-export --target coreml'")
    return path


def _value_type(vt) -> tuple[str | None, int | None, tuple | None]:
    """(dtype, rank, shape) of a MIL proto ValueType; dims that are not constants become None."""
    from coremltools.proto import MIL_pb2

    if vt.WhichOneof("type") != "tensorType":
        return None, None, None
    tt = vt.tensorType
    dtype = _DTYPES.get(MIL_pb2.DataType.Name(tt.dataType), MIL_pb2.DataType.Name(tt.dataType).lower())
    shape = tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in tt.dimensions)
    return dtype, int(tt.rank), shape


def _walk_ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def _op_name(op) -> str:
    """A MIL proto op's name (its 'name' attribute, else its first output's)."""
    if "name" in op.attributes and op.attributes["name"].immediateValue.tensor.strings.values:
        return op.attributes["name"].immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else ""


def inspect_mlpackage(path: str | Path) -> dict:
    """Structural facts of an ``.mlpackage`` read from its spec (works on Linux): op histogram of the main function,
    topk/gather presence, max tensor rank over all op outputs, input/output names and shapes, dtype of each topk
    input, and the ops named as router ops (:func:`is_router_op`) with the dtypes they compute in."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(_package_path(path)))
    if spec.WhichOneof("Type") != "mlProgram":
        raise UserError(f"{path} is not an ML Program (found {spec.WhichOneof('Type')})")
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    types: dict[str, tuple] = {}
    for inp in function.inputs:
        types[inp.name] = _value_type(inp.type)
    histogram: Counter = Counter()
    router_ops: Counter = Counter()
    max_rank, topk_inputs, router_dtypes = 0, [], set()
    for op in _walk_ops(block):
        histogram[op.type] += 1
        for out in op.outputs:
            types[out.name] = _value_type(out.type)
            if types[out.name][1] is not None:
                max_rank = max(max_rank, types[out.name][1])
        if op.type != "const" and is_router_op(_op_name(op)):
            router_ops[op.type] += 1
            router_dtypes.add(types[op.outputs[0].name][0])
    for op in _walk_ops(block):
        if op.type == "topk":
            args = op.inputs["x"].arguments
            name = args[0].name if args and args[0].WhichOneof("binding") == "name" else None
            topk_inputs.append(types.get(name, (None,))[0])
    inputs = {inp.name: types[inp.name][2] for inp in function.inputs}
    outputs = {name: types.get(name, (None, None, None))[2] for name in block.outputs}
    return {
        "spec_version": int(spec.specificationVersion),
        "opset": function.opset,
        "ops": dict(sorted(histogram.items())),
        "has_topk": histogram["topk"] > 0,
        "has_gather": any(histogram[g] for g in GATHER_OPS),
        "max_rank": max_rank,
        "inputs": inputs,
        "outputs": outputs,
        "topk_input_dtypes": topk_inputs,
        "router_ops": dict(sorted(router_ops.items())),       # non-const ops named as router ops
        "router_dtypes": sorted(d for d in router_dtypes if d),  # dtypes of their (first) outputs
    }


def check_mlpackage(path: str | Path, expected_outputs, expected_input: tuple | None = None) -> list[str]:
    """Problems found in an ``.mlpackage`` (empty list: none). ``expected_outputs``: output names, or a dict
    name -> shape (None: any shape). Checks: topk and a gather op present (one topk per routing output), every
    tensor of rank <= 5, input named ``images`` (of ``expected_input`` shape if given), outputs named and shaped
    as expected."""
    facts = inspect_mlpackage(path)
    expected = dict(expected_outputs) if isinstance(expected_outputs, dict) else {n: None for n in expected_outputs}
    problems = []
    if not facts["has_topk"]:
        problems.append("no topk op: the BRA routing was lost in conversion")
    if not facts["has_gather"]:
        problems.append("no gather op: the BRA region gather was lost in conversion")
    n_routing = len(routing_names(expected))
    if facts["ops"].get("topk", 0) < n_routing:
        problems.append(f"{facts['ops'].get('topk', 0)} topk ops for {n_routing} routing outputs")
    if facts["max_rank"] > MAX_RANK:
        problems.append(f"a tensor of rank {facts['max_rank']} (Core ML allows at most {MAX_RANK})")
    if list(facts["inputs"]) != [INPUT_NAME]:
        problems.append(f"inputs are {list(facts['inputs'])}, expected ['{INPUT_NAME}']")
    elif expected_input is not None and facts["inputs"][INPUT_NAME] != tuple(expected_input):
        problems.append(f"input shape {facts['inputs'][INPUT_NAME]}, expected {tuple(expected_input)}")
    missing = [n for n in expected if n not in facts["outputs"]]
    extra = [n for n in facts["outputs"] if n not in expected]
    if missing:
        problems.append(f"missing outputs {missing}")
    if extra:
        problems.append(f"unexpected outputs {extra}")
    for name, shape in expected.items():
        if shape is not None and name in facts["outputs"] and facts["outputs"][name] != tuple(shape):
            problems.append(f"output {name} has shape {facts['outputs'][name]}, expected {tuple(shape)}")
    return problems

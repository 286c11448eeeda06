"""Facts about our exported ONNX graphs (the export-clean BRA): TopK with a constant k and sorted=1, no
Expand / GatherElements (the official formulation's export has both, so these checks can fail), rank <= 5 after
shape inference, onnxruntime equal to PyTorch, and routing outputs equal to PyTorch's top-k indices."""
import copy
from collections import Counter

import numpy as np
import pytest
import torch

from biformer_edge.backends.onnx.export import export_onnx
from biformer_edge.backends.onnx.session import OnnxSession
from biformer_edge.models import create_model
from biformer_edge.models.routing import bra_blocks, run_torch
from tests.official_bra import use_official_bra

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxsim")
numpy_helper = onnx.numpy_helper

CASES = {"seg_demo_128": ("biformer_seg_demo", 128), "tiny_224": ("biformer_tiny", 224)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(case, official=False, fp16=False): the case's model (random weights, seed 0), or its
    official-formulation copy, exported once per module at opset 17 (FP32, or FP16 with the router kept FP32), with
    its shape-inferred graph."""
    cache = {}
    root = tmp_path_factory.mktemp("onnx-graph")

    def get(case: str, official: bool = False, fp16: bool = False) -> dict:
        if (case, official, fp16) not in cache:
            name, size = CASES[case]
            torch.manual_seed(0)
            model = create_model(name, pretrained=False)
            if official:
                model = use_official_bra(copy.deepcopy(model))
            path = root / f"{case}{'-official' if official else ''}{'-fp16' if fp16 else ''}.onnx"
            proto = export_onnx(copy.deepcopy(model) if fp16 else model, path, (1, 3, size, size), opset=17,
                                fp16=fp16)
            cache[case, official, fp16] = {"model": model, "proto": proto, "path": path, "size": size,
                                           "inferred": onnx.shape_inference.infer_shapes(proto)}
        return cache[case, official, fp16]
    return get


def constant_values(graph) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next(a for a in node.attribute if a.name == "value")
            values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def ops(proto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def all_tensor_ranks(inferred) -> dict[str, int]:
    g = inferred.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*g.input, *g.value_info, *g.output]}
    ranks.update({t.name: len(t.dims) for t in g.initializer})
    return ranks


@pytest.mark.parametrize("case", CASES)
def test_topk_has_constant_k_and_is_sorted(exported, case):
    art = exported(case)
    graph = art["proto"].graph
    consts = constant_values(graph)
    topks = [n for n in graph.node if n.op_type == "TopK"]
    assert len(topks) == len(bra_blocks(art["model"])) > 0
    ks = []
    for node in topks:
        assert node.input[1] in consts, f"{node.name}: K comes from {node.input[1]}, not an initializer/Constant"
        ks.append(int(consts[node.input[1]].reshape(-1)[0]))
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs.get("sorted", 1) == 1 and attrs.get("largest", 1) == 1, node.name
    assert Counter(ks) == Counter(b.topk for b in bra_blocks(art["model"]))


@pytest.mark.parametrize("case", CASES)
def test_no_expand_and_no_gather_elements(exported, case):
    counts = ops(exported(case)["proto"])
    assert counts["Expand"] == 0 and counts["GatherElements"] == 0, counts
    assert counts["Gather"] >= counts["TopK"]  # one flat-index region gather per BRA block


def test_official_formulation_export_has_expand_and_gather_elements(exported):
    """The checks above can fail: the official expand+gather BRA exports exactly what they forbid."""
    official = exported("seg_demo_128", official=True)
    counts = ops(official["proto"])
    assert counts["Expand"] > 0 and counts["GatherElements"] > 0, counts
    assert max(all_tensor_ranks(official["inferred"]).values()) > 5


@pytest.mark.parametrize("case", CASES)
def test_every_tensor_has_rank_at_most_5(exported, case):
    ranks = all_tensor_ranks(exported(case)["inferred"])
    too_big = {k: r for k, r in ranks.items() if r > 5}
    assert not too_big, too_big
    # shape inference resolved every intermediate (static shapes, no Shape/Gather chains left unresolved)
    assert len(exported(case)["inferred"].graph.value_info) > 0


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_equals_pytorch_logits_and_routing(exported, case):
    art = exported(case)
    size = art["size"]
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    ref = run_torch(art["model"], x)
    got = OnnxSession(art["path"], threads=2, providers=["CPUExecutionProvider"]).run(x)
    assert got.logits.shape == ref.logits.shape
    assert np.abs(got.logits - ref.logits).max() <= 1e-4
    assert len(got.routing) == len(ref.routing) == len(bra_blocks(art["model"]))
    for i, (a, b) in enumerate(zip(got.routing, ref.routing)):
        assert a.shape == b.shape, i
        assert np.array_equal(a, b), f"routing_{i}: {np.mean(a != b):.1%} of indices differ"


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES)
def test_router_ops_are_named_under_router(exported, case, fp16):
    """Every TopK, the affinity MatMul feeding it and the q/k region ReduceMeans before that carry the module scope of
    their block's ``attn.router`` ('.../attn/router/TopK'): the name that tools exclude the FP32 router island by. So
    does every other node between the q/k slices (attn's own) and TopK, those onnxsim merges included."""
    art = exported(case, fp16=fp16)
    graph = art["proto"].graph
    producer = {out: node for node in graph.node for out in node.output}
    topks = [n for n in graph.node if n.op_type == "TopK"]
    assert len(topks) == len(bra_blocks(art["model"])) > 0
    pools = []
    for topk in topks:
        scope = topk.name.rsplit("/", 1)[0]
        assert scope.endswith("/attn/router"), topk.name
        matmul = producer[topk.input[0]]
        assert matmul.op_type == "MatMul" and matmul.name.startswith(scope + "/"), matmul.name
        seen, stack = set(), list(matmul.input)
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen or node.op_type == "Slice":  # the q/k split is attn's, not the router's
                continue
            seen.add(id(node))
            if node.op_type == "Constant":   # onnxsim shares equal constants (the scale) between blocks
                assert "/attn/router/" in node.name, node.name
                continue
            assert node.name.startswith(scope + "/"), f"{node.op_type} '{node.name}' feeds {topk.name}"
            if node.op_type == "ReduceMean":
                pools.append(node.name)
            stack.extend(node.input)
    # onnxsim drops the pooling of one-token regions (seg_demo at 128: stage 3), so not every block has its two
    assert pools and len(pools) % 2 == 0, pools
    if fp16:   # the island starts with Casts up to FP32, named under the router too
        assert any(n.op_type == "Cast" and "/attn/router/" in n.name for n in graph.node)

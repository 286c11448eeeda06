"""The layout-lean BRA formulation (biformer_edge.models.bra): the same function as the previous formulation
(tests/legacy_bra.py) and the official code (outputs, routing, affinities, the gradients QAT's routing term takes),
and the layout it promises in the exported graph: the k-fold gathered keys/values go straight into the matmuls."""
import copy

import numpy as np
import onnx
import pytest
import torch

from biformer_edge.backends.onnx.export import export_onnx
from biformer_edge.models.bra import AttentionLePE, BiLevelRoutingAttention
from tests.legacy_bra import use_legacy_formulation
from tests.official_bra import use_official_bra


def random_bra(dim, heads, n_win, topk, qk_dim=None):
    torch.manual_seed(0)
    module = BiLevelRoutingAttention(dim, heads, n_win, qk_dim=qk_dim, topk=topk).eval()
    with torch.no_grad():  # non-zero biases so padded tokens matter as in the official auto-pad
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module


@pytest.mark.parametrize("H,W,n_win,topk,dim,heads,qk_dim,batch", [
    (14, 14, 7, 16, 256, 8, None, 1),   # BiFormer-T stage 3: 16 of 49 regions, 8 heads
    (28, 28, 7, 4, 128, 4, None, 2),    # stage 2, batch 2: per-image offsets in the (region, head) index
    (16, 16, 8, 4, 32, 4, None, 1),     # as many heads as tokens per region (4 and 2x2)
    (30, 45, 8, 4, 64, 2, 96, 2),       # qk_dim != dim (q/k and v heads of other widths), auto-pad
    (9, 20, 4, 3, 32, 1, None, 1),      # one head, odd sizes
])
def test_lean_equals_legacy_and_official(H, W, n_win, topk, dim, heads, qk_dim, batch):
    lean = random_bra(dim, heads, n_win, topk, qk_dim)
    legacy = use_legacy_formulation(copy.deepcopy(lean))
    official = use_official_bra(copy.deepcopy(lean))
    for module in (lean, legacy, official):
        module.record_routing = module.router.record = True
    x = torch.randn(batch, H, W, dim)
    with torch.no_grad():
        a, b, c = lean(x), legacy(x), official(x)
    assert a.shape == (batch, H, W, dim)
    assert (a - c).abs().max().item() <= 1e-5 and (a - b).abs().max().item() <= 1e-5
    assert torch.equal(lean.last_routing, official.last_routing) and torch.equal(lean.last_routing, legacy.last_routing)
    assert torch.equal(lean.router.last_affinity, legacy.router.last_affinity)   # the router pools the same sums


def test_stage4_attention_lean_equals_legacy():
    torch.manual_seed(0)
    attn = AttentionLePE(256).eval()
    legacy = use_legacy_formulation(copy.deepcopy(attn))
    x = torch.randn(2, 7, 7, 256)
    with torch.no_grad():
        assert (attn(x) - legacy(x)).abs().max().item() <= 1e-5


def test_routing_gradients_reach_qk_as_in_legacy():
    """QAT and RoutingMargin take a loss on the router's affinities: with ``routing_gradients`` it must reach the
    q/k projection exactly as in the legacy formulation; without, routing stays gradient-free (official detach)."""
    grads = {}
    for form in ("lean", "legacy"):
        module = random_bra(64, 2, 4, 4)
        if form == "legacy":
            use_legacy_formulation(module)
        module.router.record = module.routing_gradients = True
        module(torch.randn(1, 16, 16, 64, generator=torch.Generator().manual_seed(1)))
        module.router.last_affinity.square().sum().backward()
        grads[form] = module.qkv.qkv.weight.grad.clone()
        assert grads[form][:128].abs().sum() > 0            # q and k rows
        assert grads[form][128:].abs().sum() == 0           # v does not reach the router
        module.routing_gradients = False
        module(torch.randn(1, 16, 16, 64))
        assert module.router.last_affinity.grad_fn is None
    torch.testing.assert_close(grads["lean"], grads["legacy"], atol=1e-4, rtol=1e-4)


def graph_facts(proto) -> dict:
    """Per exported graph: its region gathers, what consumes each tensor, and the elements that Transpose, Split and
    Slice nodes copy (from ONNX shape inference; a k^T that a matmul fuses is no copy)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    consumers: dict[str, list] = {}
    for node in inferred.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    gathers = [n for n in inferred.graph.node if n.op_type == "Gather" and len(shapes.get(n.output[0], [])) == 3]

    def transposed_operand(node) -> bool:
        """k^T: a swap of the last two axes read only by MatMuls, which runtimes fuse (onnxruntime FusedMatMul
        transB, OpenVINO MatMul transpose_b) instead of copying."""
        perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
        swap = perm[:-2] == list(range(len(perm) - 2)) and perm[-2:] == [len(perm) - 1, len(perm) - 2]
        return swap and all(c.op_type == "MatMul" for c in consumers.get(node.output[0], []))
    moved = {op: sum(int(np.prod(shapes[out])) for n in inferred.graph.node if n.op_type == op
                     and not (op == "Transpose" and transposed_operand(n)) for out in n.output)
             for op in ("Transpose", "Split", "Slice")}
    return {"gathers": gathers, "consumers": consumers, "moved": moved}


@pytest.fixture(scope="module")
def stage3_graphs(tmp_path_factory):
    """BiFormer-T's stage-3 BRA (14x14, 8 heads, top-16 of 49 regions) exported in both formulations."""
    modules = {"lean": random_bra(256, 8, 7, 16)}
    modules["legacy"] = use_legacy_formulation(copy.deepcopy(modules["lean"]))
    root = tmp_path_factory.mktemp("lean")
    return {form: graph_facts(export_onnx(module, root / f"{form}.onnx", (1, 14, 14, 256), opset=17))
            for form, module in modules.items()}


def test_gathered_keys_values_reach_the_matmuls_without_layout_ops(stage3_graphs):
    facts = stage3_graphs["lean"]
    assert len(facts["gathers"]) == 2, "one gather of (region, head) rows for the keys, one for the values"
    for gather in facts["gathers"]:
        (reshape,) = facts["consumers"][gather.output[0]]
        assert reshape.op_type == "Reshape", reshape.op_type
        users = {n.op_type for n in facts["consumers"][reshape.output[0]]}
        assert users <= {"MatMul", "Transpose"}, users
        if "Transpose" in users:   # k^T: onnxruntime fuses it into the matmul (FusedMatMul transB), not a copy
            (transpose,) = [n for n in facts["consumers"][reshape.output[0]] if n.op_type == "Transpose"]
            assert {n.op_type for n in facts["consumers"][transpose.output[0]]} == {"MatMul"}


def test_lean_moves_far_fewer_elements_through_layout_ops(stage3_graphs):
    lean, legacy = stage3_graphs["lean"]["moved"], stage3_graphs["legacy"]["moved"]
    # legacy permutes and slices the 16-fold gathered keys and values; lean only the map-sized q/k/v and output
    assert legacy["Split"] + legacy["Slice"] > 0
    assert sum(lean.values()) * 4 < sum(legacy.values()), (lean, legacy)

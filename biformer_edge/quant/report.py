"""What an INT8 graph really is, checked and written down: the router-island verdict and the per-layer precision
report (``layer_precision.json`` / ``.md``) of the graph a backend wrote.

The backend reads its own graph into an :class:`~biformer_edge.contract.Int8Graph` (``backends.onnx.export.int8_graph``
for the Q/DQ ONNX, ``backends.openvino.export.int8_graph`` for the IR, which adds what the CPU plugin executed); this
module holds every export to the same rules: with ``--routing qar`` no quantizer reaches a TopK, and the report lists
every Conv / MatMul with the precision of its activation input and of its weight, its weight parameters, and whether it
belongs to a router.
"""
from __future__ import annotations

from pathlib import Path

from ..contract import LAYER_REPORT, LAYER_REPORT_MD, LAYER_REPORTS, Int8Graph
from ..errors import UserError


def summarize(rows: list[dict]) -> dict:
    weights = [r for r in rows if r["weight_params"]]
    total = sum(r["weight_params"] for r in weights)
    both = sum(r["weight_params"] for r in weights if r["input"] == "int8" and r["weight"] == "int8")
    return {"layers": len(rows), "int8_layers": sum(r["input"] == "int8" and r["weight"] == "int8" for r in rows),
            "weight_params": total, "int8_weight_params": both,
            "int8_weight_share": round(both / total, 6) if total else 0.0,
            "layers_by_input": {p: sum(r["input"] == p for r in rows) for p in sorted({r["input"] for r in rows})},
            "float_layers_with_weights": [r["layer"] for r in weights if not (r["input"] == r["weight"] == "int8")]}


def render_markdown(rows: list[dict], summary: dict) -> str:
    executed = any("executed" in r for r in rows)
    head = "| layer | op | input | weight | weight params | router |" + (" executed |" if executed else "")
    by_input = ", ".join(f"{p.upper()} {n}" for p, n in summary["layers_by_input"].items())
    lines = [f"# Layer precision ({summary['int8_layers']}/{summary['layers']} layers INT8 on both inputs, "
             f"{summary['int8_weight_share']:.2%} of weight parameters)", "", f"Layers by input precision: {by_input}.",
             "", head,
             "|---" * (7 if executed else 6) + "|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['op']} | {r['input']} | {r['weight']} | {r['weight_params']} | "
                     f"{'yes' if r['router'] else ''} |" + (f" {r.get('executed', '')} |" if executed else ""))
    return "\n".join(lines) + "\n"


def check_int8_graph(workdir: Path, graph: Int8Graph, routing: str, checks: dict) -> list[str]:
    """Hold an exported INT8 graph to the router island (``routing == "qar"``: no quantizer on any path into TopK;
    anything else is an internal error) and write its layer report into ``workdir``. Adds ``router_island`` and
    ``int8_layers`` to ``checks``; returns the report's file names."""
    from ..fileio import write_file, write_json

    q = graph.quantizer
    of, in_ = (f" of the {graph.graph}", f" in the {graph.graph}") if graph.graph else ("", "")
    if routing == "qar" and graph.into_topk:
        raise UserError(f"internal check failed: {q} reaches the router's TopK{in_} ({graph.into_topk[0]}); report "
                        f"it with --debug")
    topk = f"the {graph.topk} TopK{of}" if graph.topk is not None else "TopK"
    checks["router_island"] = {"ok": True, "summary": (
        f"no {q} on any path into {topk} (router FP32)" if routing == "qar" else
        f"--routing naive: {len(graph.into_topk)} {q} paths into {topk} (router quantized)")}
    summary = summarize(graph.rows)
    text = (f"{summary['int8_layers']}/{summary['layers']} layers INT8 on both inputs{in_}, "
            f"{summary['int8_weight_share']:.2%} of weight parameters")
    if graph.executed is not None:
        summary["executed"] = graph.executed
        text += (f"; executed in INT8 by the CPU plugin (hint {graph.executed['precision_hint']}): "
                 f"{graph.executed['int8_layers']}/{summary['layers']}")
    checks["int8_layers"] = {"ok": True, "summary": text}
    write_json(workdir / LAYER_REPORT, {"summary": summary, "layers": graph.rows})
    write_file(workdir / LAYER_REPORT_MD, render_markdown(graph.rows, summary) + "".join(graph.notes))
    return list(LAYER_REPORTS)

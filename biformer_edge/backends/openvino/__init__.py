"""OpenVINO: IR export (FP32; FP16 weights with every BRA router marked to stay FP32; INT8 from the Q/DQ ONNX) and a
CPU Session that always sets its inference precision explicitly. By side:

- :mod:`.rules` (torch-free): the precision hints, the router found by its module scope and marked with the
  ``DisablePrecisionConversion`` runtime attribute (written into the IR: the Python API cannot create it), the CPU
  plugin's capabilities, and the Snippets hazard.
- :mod:`.export`: ``ov.convert_model`` of the model (FP32/FP16) or of the Q/DQ ONNX (INT8: each Q/DQ pair becomes a
  FakeQuantize), and the INT8 facts of an IR (``int8_graph``: what the IR states and what the plugin executed).
- :mod:`.session` (torch-free): ``OpenVINOSession`` and what its compiled model executed (``runtime_layers``,
  ``executed_precision``).

What the code works around, measured (docs/parity.md "OpenVINO precision", docs/int8.md, docs/cpu_classes.md):

- Precision: the CPU plugin computes in bf16 by default on AVX512-BF16/AMX CPUs, and an ``f16`` hint in bf16 where
  its ``OPTIMIZATION_CAPABILITIES`` list BF16 but not FP16 (AMD Zen 4/5, Intel Cooper Lake). bf16 perturbs the
  features every router pools, so routing flips although the router island runs f32. The Session therefore always
  sets ``INFERENCE_PRECISION_HINT``; ``auto`` computes in f16 only where the CPU does so natively, else in f32, never
  in bf16; bf16 is asked for explicitly (``--ov-precision bf16``) and checked against ``[thresholds.bf16]``.
- Snippets: in OpenVINO 2026.4.1 the CPU plugin's Snippets MHA fusion miscomputes a BRA block with as many heads as
  tokens per region (a Transpose that keeps its shape); the Session compiles such IRs with ``SNIPPETS_MODE=DISABLE``,
  and code that deploys the IR with its own OpenVINO calls must set the same property.
- INT8 kernels without VNNI sum u8 x s8 pairs in saturating 16-bit lanes: ``--cpu portable`` (the default) bounds
  the weights to |q| <= 64 (:mod:`biformer_edge.cpu`); ``OpenVINOSession.executed`` names the kernels chosen.

This module is the descriptor :data:`OPENVINO`: it imports no runtime.
"""
from __future__ import annotations

from ...contract import IR_BIN, IR_XML
from ..base import Backend, CPUOptions

OPENVINO = Backend(
    "openvino", "openvino", package="openvino", install_hint="pip install 'biformer-edge[openvino]'", file=IR_XML,
    session="session.OpenVINOSession", aliases=("ov",), files=(IR_XML, IR_BIN), options=CPUOptions,
    hint_option="precision_hint")

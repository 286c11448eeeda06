"""The CPU class an INT8 artifact targets and the one this machine runs it on.

Why it matters: x86 INT8 kernels multiply unsigned 8-bit activations by signed 8-bit weights. With VNNI
(``vpdpbusd``: AVX-512 VNNI, AVX-VNNI) or AMX the products accumulate exactly in 32 bits. Without it (AVX2, AVX-512
without VNNI) oneDNN, which OpenVINO's CPU plugin runs, uses ``vpmaddubsw``: it adds each *pair* of u8 x s8
products into a **saturating 16-bit** lane before widening. Two products of 255 x 127 sum to 64770 > 32767, so large
activations meeting large weights are clipped. oneDNN documents this (its "Nuances of int8 computations") and
toolkits avoid it with a 7-bit weight range (NNCF's overflow fix, onnxruntime's ``reduce_range``).

Measured on an AVX2-only AMD EPYC (OpenVINO 2026.4.1): the random-weight test model's INT8 IR gave logits cosine
0.966 against FP32 with full 8-bit weights and 0.9986 with weights bounded to |q| <= 64, the same as the fake-quant
PyTorch model with those weights (0.9988). |q| <= 64 is the exact bound: 2 x 255 x 64 = 32640 <= 32767.

Classes (``--cpu`` of ``biformer-export``):

- ``avx2``: no 8-bit dot-product instruction (AVX2; also AVX-512 without VNNI, e.g. Skylake-SP): weights |q| <= 64.
- ``vnni``: AVX-512 VNNI or AVX-VNNI (Cascade Lake and later Xeons, Ice/Alder Lake and later, AMD Zen 4/5): full
  8-bit weights.
- ``amx``: Intel AMX (Sapphire Rapids and later): full 8-bit weights.
- ``portable`` (the default): runs accurately on every class, i.e. the ``avx2`` weight range.

This machine's class comes from the CPU's own feature flags (``/proc/cpuinfo``; numpy's CPUID reading elsewhere),
capped by ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` when set: oneDNN, and so OpenVINO's CPU plugin, honours that
cap (checked: ``ONEDNN_MAX_CPU_ISA=SSE41`` changes what OpenVINO compiles), which is how the tests run the AVX2 path
on a newer CPU. Imports no torch (the device side uses it).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from .errors import UserError

CPU_CLASSES = ("portable", "avx2", "vnni", "amx")
DEFAULT_CPU_CLASS = "portable"
# Largest |integer| an INT8 weight may take for each class: the pairwise u8 x s8 sum must fit int16 without VNNI.
WEIGHT_BOUND = {"portable": 64, "avx2": 64, "vnni": 127, "amx": 127}
FULL_WEIGHT_BOUND = 127
# oneDNN's ISA cap names (its ``dnnl::cpu_isa`` spellings) -> the class they allow at most.
_ISA_CAP_CLASS = {"sse41": "avx2", "avx": "avx2", "avx2": "avx2", "avx512_core": "avx2",
                  "avx2_vnni": "vnni", "avx2_vnni_2": "vnni", "avx512_core_vnni": "vnni", "avx512_core_bf16": "vnni",
                  "avx10_1_512": "vnni", "avx512_core_fp16": "vnni",
                  "avx10_1_512_amx": "amx", "avx512_core_amx": "amx", "avx10_1_512_amx_fp16": "amx",
                  "avx512_core_amx_fp16": "amx", "avx10_2_512": "vnni", "avx10_2_512_amx_2": "amx"}
_RANK = {"avx2": 0, "vnni": 1, "amx": 2}


def check_cpu_class(value) -> str:
    """``value`` if it names a CPU class, else a one-line UserError."""
    if value not in CPU_CLASSES:
        raise UserError(f"--cpu must be one of {', '.join(CPU_CLASSES)}, not '{value}'")
    return value


def weight_bound(cpu_class: str | None) -> int:
    """The |q| bound of INT8 weights made for ``cpu_class``; None (a GPU target) keeps the full range."""
    return FULL_WEIGHT_BOUND if cpu_class is None else WEIGHT_BOUND[check_cpu_class(cpu_class)]


def _flags() -> set[str]:
    """The CPU's feature flags in /proc/cpuinfo spelling (``avx2``, ``avx512_vnni``, ``avx_vnni``, ``amx_int8``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:  # other systems: numpy's own CPUID reading (it knows AVX512VNNI, not AVX-VNNI or AMX)
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        return set()
    names = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni"}
    return {flag for key, flag in names.items() if features.get(key)}


def isa_cap() -> str | None:
    """oneDNN's ISA cap from the environment (``ONEDNN_MAX_CPU_ISA`` wins over ``DNNL_MAX_CPU_ISA``), lower-case, or
    None (no cap, or ``ALL``/``DEFAULT``)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if not value or value.strip().lower() in ("all", "default"):
        return None
    return value.strip().lower()


def flags_class(flags: set[str]) -> str | None:
    """The class the flags allow: amx, vnni, avx2, or None for a CPU that is not x86 with AVX2."""
    if {"amx_int8", "amx_tile"} <= flags:
        return "amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    return None


def detect(flags: set[str] | None = None, cap: str | None = "env") -> dict:
    """This machine's INT8 CPU class: ``{"class": avx2|vnni|amx|None, "cpu_flags_class", "isa_cap", "name",
    "machine"}``. ``class`` is what the CPU's flags allow, lowered to what the ISA cap allows; None on a CPU that
    is not x86 with AVX2 (an ARM board: none of these rules apply)."""
    flags = _flags() if flags is None else flags
    cap = isa_cap() if cap == "env" else cap
    own = flags_class(flags)
    effective = own
    if own is not None and cap is not None:
        capped = _ISA_CAP_CLASS.get(cap)
        if capped is None:   # an ISA below AVX2 or unknown to us: the most restrictive class
            capped = "avx2"
        effective = min(own, capped, key=_RANK.__getitem__)
    return {"class": effective, "cpu_flags_class": own, "isa_cap": cap, "name": _cpu_name(),
            "machine": platform.machine()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def artifact_weight_bound(manifest: dict) -> int | None:
    """The |q| bound of an INT8 artifact's weights from its manifest (127 for INT8 artifacts made before the bound
    was recorded: they used the full range); None for float artifacts or a manifest that does not say."""
    if manifest.get("precision") != "int8":
        return None
    quant = manifest.get("quantization")
    bound = quant.get("weight_bound", FULL_WEIGHT_BOUND) if isinstance(quant, dict) else FULL_WEIGHT_BOUND
    return bound if type(bound) is int and 1 <= bound <= FULL_WEIGHT_BOUND else None


def saturation_note(manifest: dict, machine: dict) -> str | None:
    """One line when an INT8 artifact's weights can saturate on this machine (full 8-bit weights on an x86 CPU
    without VNNI/AMX), saying what to do; None when they cannot."""
    bound = artifact_weight_bound(manifest)
    if bound is None or machine.get("class") != "avx2" or bound <= WEIGHT_BOUND["avx2"]:
        return None
    quant = manifest.get("quantization") if isinstance(manifest.get("quantization"), dict) else {}
    made = quant.get("cpu_class") if isinstance(quant.get("cpu_class"), str) else "a VNNI/AMX CPU or a GPU"
    return (f"this artifact's INT8 weights use the full 8-bit range (|q| <= {bound}, made for {made}); this CPU has "
            f"no VNNI, where OpenVINO's INT8 kernels saturate their 16-bit pair sums: re-export with --cpu portable "
            f"to run here")


def int8_speed_note(machine: dict) -> str | None:
    """One line for an INT8 export on a CPU without VNNI: accurate, but about FP32's speed there (measured: README
    "INT8 on every x86 CPU": oneDNN's AVX2 INT8 inner product is slower than its FP32 one)."""
    if machine.get("class") != "avx2":
        return None
    return (f"note: this CPU ({describe(machine)}) has no VNNI: INT8 runs here at about FP32 speed or slower "
            f"(biformer-bench --precisions fp32,int8 compares them); the artifact is accurate here, and INT8 pays on "
            f"VNNI or AMX CPUs")


def class_phrase(info: dict) -> str:
    """The class of :func:`detect`'s ``info`` in words, e.g. 'avx2: no VNNI'."""
    what = {"avx2": "avx2: no VNNI", "vnni": "vnni", "amx": "amx", None: "no x86 INT8 class"}[info["class"]]
    capped = (f", capped by ONEDNN_MAX_CPU_ISA={info['isa_cap']} from {info['cpu_flags_class']}"
              if info.get("isa_cap") and info["class"] != info.get("cpu_flags_class") else "")
    return what + capped


def describe(info: dict) -> str:
    """One phrase naming the CPU and its class, e.g. 'AMD EPYC (avx2: no VNNI)'."""
    return f"{info['name']} ({class_phrase(info)})"

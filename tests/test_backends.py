"""The backend descriptors (``biformer_edge.backends.BACKENDS``) and what targets.py assembles from them: each fact
of a backend in one place (files, options with their defaults and checks, install hints, the parity hint), the export
and session modules loaded by name, biformer-export's target flags generated from the options dataclasses."""
import dataclasses
import sys
from pathlib import Path

import pytest

from biformer_edge import targets
from biformer_edge.backends import BACKENDS, PRECISIONS, Session
from biformer_edge.backends.base import options_of
from biformer_edge.backends.onnx import ONNX
from biformer_edge.backends.openvino import OPENVINO
from biformer_edge.backends.tensorrt import TENSORRT, TensorRTOptions
from biformer_edge.errors import UserError

PKG = Path(__file__).resolve().parent.parent / "biformer_edge"


def test_every_target_takes_options_its_backend_declares():
    for target in targets.TARGETS.values():
        backend = targets.backend_of(target)
        assert set(target.options) <= {o.name for o in backend.option_specs()}, target.name
        assert target.device_runtime in targets.RUNTIMES and target.files == backend.files


def test_sessions_and_export_modules_load_by_name():
    for backend in BACKENDS:
        assert issubclass(backend.session_class(), Session), backend.name
        if backend.files:
            module = backend.export_module()
            assert callable(module.export) and module.__name__.endswith(f".{backend.module}.export")
    for target in targets.TARGETS.values():
        if target.int8 == "qdq":   # the exporter reads the INT8 facts of the graph the backend wrote
            assert callable(targets.backend_module(target).int8_graph), target.name


def test_options_an_export_records():
    assert targets.check_options("jetson", "fp16", {"dla_core": None, "build": None}) == {"workspace_mib": 2048}
    assert targets.check_options("jetson", "int8", {"workspace_mib": 512}) == {"workspace_mib": 512}
    assert targets.check_options("openvino", "fp32", {}) == {}                  # --cpu changes INT8 only
    assert targets.check_options("onnx", "int8", {}) == {"cpu": "portable"}
    assert targets.check_options("coreml", "int8", {"weights_8bit": True}) == {"ios": 16, "weights_8bit": True}
    assert TensorRTOptions().workspace_mib == 2048 == TENSORRT.read_options({}).workspace_mib
    assert TENSORRT.read_options({"workspace_mib": 512, "cpu": "amx"}).workspace_mib == 512


@pytest.mark.parametrize("target, precision, given, message", [
    ("jetson", "fp16", {"workspace_mib": 10, "dla_core": 5}, "--workspace-mib must be a whole number of MiB >= 64"),
    ("jetson", "fp16", {"dla_core": 0}, "--dla-core: DLA is not offered for BiFormer"),   # docs/tensorrt.md#dla
    ("jetson", "int8", {"dla_core": 1}, "16 per core"),
    ("tensorrt", "fp16", {"dla_core": 0}, r"--dla-core does not apply to --target tensorrt \(its options: "
                                          r"--workspace-mib, --build\)"),
    ("onnx", "fp32", {"cpu": "vnni"}, "--cpu only changes INT8 exports"),
    ("onnx", "int8", {"cpu": "zen4"}, "--cpu must be one of portable, avx2, vnni, amx"),
    ("coreml", "fp16", {"ios": 15}, "--ios must be 16, 17 or 18, not 15"),
])
def test_option_checks(target, precision, given, message):
    with pytest.raises(UserError, match=message):
        targets.check_options(target, precision, given)


def test_target_flags_come_from_the_options_dataclasses():
    from biformer_edge.cli import export_parser
    flags = {spec.flag: (takers, spec) for spec, takers in targets.option_flags()}
    assert list(flags) == ["--dla-core", "--workspace-mib", "--build", "--deepstream", "--ios", "--weights-8bit",
                           "--cpu"]
    assert flags["--cpu"][0] == ("openvino", "onnx") and flags["--workspace-mib"][0] == ("jetson", "tensorrt")
    assert flags["--deepstream"][0] == ("jetson",)
    group = next(g for g in export_parser()._action_groups if g.title == "target options")
    helps = {a.option_strings[0]: a.help for a in group._group_actions}
    assert helps["--workspace-mib"] == "jetson/tensorrt: builder workspace"
    assert helps["--cpu"].startswith("openvino/onnx --int8: the x86 CPU class the INT8 weights are made for")
    declared = {f.name for f in dataclasses.fields(TensorRTOptions)}
    assert {"timing_cache", "tf32"} <= declared and "--timing-cache" not in helps   # no target takes them


def test_install_hints_are_the_descriptors():
    from biformer_edge.console import INSTALL_HINTS
    hints = targets.install_hints()
    assert hints["onnx"] == hints["onnxsim"] == hints["onnxruntime"] == ONNX.install_hint
    assert INSTALL_HINTS["openvino"] == OPENVINO.install_hint and "cuda-python" in INSTALL_HINTS["cuda"]
    assert "re-checking an artifact does not" in INSTALL_HINTS["torch"]   # the console's own, over the runtime's
    for backend in BACKENDS:
        if backend.file is None:
            continue
        for hint in backend.install_hints().values():
            spelled = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if hint in p.read_text()]
            assert spelled == [f"backends/{backend.module}/__init__.py"], (hint, spelled)


def test_runtime_availability_is_the_descriptors(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert targets.runtime_unavailable("coreml").startswith("Core ML runs only on macOS")
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert targets.runtime_unavailable("ov") == f"openvino is not installed ({OPENVINO.install_hint})"
    assert targets.unavailable_reason("tensorrt", PKG) == "no model.engine: build it on the device with " \
                                                          "./build_engine.sh"
    assert targets.unavailable_reason("openvino", PKG) == "no model.xml in the artifact"


def test_one_parity_hint_lookup():
    profile = targets.load_profile("openvino")
    assert [OPENVINO.parity_hint(profile, p) for p in PRECISIONS] == ["f32", "auto", "f32"]
    assert OPENVINO.parity_hint(profile, "fp16", "bf16") == "bf16"        # biformer-parity --ov-precision
    assert ONNX.parity_hint(targets.load_profile("onnx"), "fp16", "bf16") is None
    from biformer_edge.bench.plan import precision_hints
    assert precision_hints("openvino") == profile["parity"]["hint"] and precision_hints("onnxruntime") == {}


def test_options_dataclasses_declare_every_field_as_an_option():
    for backend in BACKENDS:
        if backend.options is not None:
            specs = options_of(backend.options)
            assert [s.name for s in specs] == [f.name for f in dataclasses.fields(backend.options)]
            assert all(s.help and set(s.precisions) <= set(PRECISIONS) for s in specs)
            assert all(s.only for s in specs if s.precisions != PRECISIONS)

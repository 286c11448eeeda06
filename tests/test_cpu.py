"""The CPU class rules (biformer_edge/cpu.py): what a machine's flags and oneDNN's ISA cap allow, and when an INT8
artifact's weights can saturate. Pure logic; what OpenVINO really executes under each class is tested in
test_openvino.py (natively and under ONEDNN_MAX_CPU_ISA=AVX2)."""
import pytest

from biformer_edge import cpu
from biformer_edge.errors import UserError

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
SKYLAKE_SP = AVX2 | {"avx512f", "avx512bw"}                   # AVX-512 without VNNI: still vpmaddubsw
ZEN4 = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16"}
ALDER_LAKE = AVX2 | {"avx_vnni"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16", "avx512_fp16"}


@pytest.mark.parametrize("flags,expected", [(AVX2, "avx2"), (SKYLAKE_SP, "avx2"), (ZEN4, "vnni"),
                                            (ALDER_LAKE, "vnni"), (SAPPHIRE_RAPIDS, "amx"), ({"neon"}, None),
                                            (set(), None)])
def test_class_from_flags(flags, expected):
    assert cpu.detect(flags, cap=None)["class"] == expected


@pytest.mark.parametrize("flags,cap,expected", [
    (SAPPHIRE_RAPIDS, "avx2", "avx2"), (SAPPHIRE_RAPIDS, "avx512_core_vnni", "vnni"),
    (SAPPHIRE_RAPIDS, "avx512_core_amx", "amx"), (ZEN4, "avx512_core_amx", "vnni"),   # a cap never raises the class
    (ZEN4, "avx512_core", "avx2"), (ZEN4, "sse41", "avx2"), (ZEN4, "something_new", "avx2"), (AVX2, "avx2", "avx2")])
def test_isa_cap_lowers_the_class(flags, cap, expected):
    info = cpu.detect(flags, cap=cap)
    assert info["class"] == expected and info["isa_cap"] == cap
    assert info["cpu_flags_class"] == cpu.flags_class(flags)


def test_isa_cap_from_the_environment(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert cpu.isa_cap() == "avx512_core_vnni"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")   # oneDNN reads its own name first
    assert cpu.isa_cap() == "avx2" and cpu.detect(ZEN4)["class"] == "avx2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    assert cpu.isa_cap() is None and cpu.detect(ZEN4)["class"] == "vnni"


def test_this_machine_has_a_class():
    info = cpu.detect()
    assert info["class"] in (None, "avx2", "vnni", "amx") and info["name"]
    assert cpu.describe(info).startswith(info["name"])


def test_weight_bounds_cannot_saturate_without_vnni():
    # vpmaddubsw adds two u8 x s8 products into a signed 16-bit lane
    assert 2 * 255 * cpu.weight_bound("avx2") <= 32767 < 2 * 255 * (cpu.weight_bound("avx2") + 1)
    assert cpu.weight_bound("portable") == cpu.weight_bound("avx2")
    assert cpu.weight_bound("vnni") == cpu.weight_bound("amx") == cpu.weight_bound(None) == 127   # None: a GPU target


@pytest.mark.parametrize("value", ["zen4", "", None, "AVX2", 3])
def test_bad_cpu_class_is_one_line(value):
    with pytest.raises(UserError, match="--cpu must be one of portable, avx2, vnni, amx"):
        cpu.check_cpu_class(value)


def int8(quantization):
    return {"precision": "int8", "quantization": quantization}


@pytest.mark.parametrize("manifest,machine,noted", [
    (int8({"cpu_class": "vnni", "weight_bound": 127}), "avx2", True),
    (int8({"cpu_class": None, "weight_bound": 127}), "avx2", True),      # a GPU target's artifact run on a CPU
    (int8({"toolkit": "x"}), "avx2", True),                              # made before the bound was recorded
    (int8({"cpu_class": "portable", "weight_bound": 64}), "avx2", False),
    (int8({"cpu_class": "vnni", "weight_bound": 127}), "vnni", False),
    (int8({"cpu_class": "vnni", "weight_bound": 127}), None, False),     # not x86: none of this applies
    ({"precision": "fp16", "quantization": None}, "avx2", False),
    (int8({"weight_bound": "127"}), "avx2", False),                      # tampered: no claim, no crash
    (int8({"weight_bound": 1e9}), "avx2", False),
    (int8(["not", "a", "dict"]), "avx2", True),
])
def test_saturation_note(manifest, machine, noted):
    note = cpu.saturation_note(manifest, {"class": machine})
    assert (note is not None) == noted
    if noted:
        assert "--cpu portable" in note and "\n" not in note

"""Target profiles build on one base (export/base.toml, through ``base = "<name>"``): each shared threshold and its
measurement note is written once, and a target's profile holds only what differs."""
import pytest
import tomllib

import biformer_edge.targets as targets
from biformer_edge.errors import UserError
from biformer_edge.profiles import HERE, profile_file


def raw(name: str) -> dict:
    with open(profile_file(name), "rb") as f:
        return tomllib.load(f)


def chain(name: str) -> list[dict]:
    """The raw profiles from ``name`` down to the one with no base."""
    out = [raw(name)]
    while "base" in out[-1]:
        out.append(raw(out[-1]["base"]))
    return out


def leaves(table: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(leaves(value, prefix + (key,)))
        elif prefix + (key,) != ("base",):
            out[prefix + (key,)] = value
    return out


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_a_profile_is_its_bases_overridden_by_its_own_values(target):
    profiles = chain(target)
    assert raw("base") is not None and "base" not in profiles[-1] and profile_file("base") == HERE / "base.toml"
    expected = {}
    for profile in reversed(profiles):   # base first: every value is the uppermost profile's that sets it
        expected.update(leaves(profile))
    merged = targets.load_profile(target)
    assert leaves(merged) == expected and "base" not in merged
    assert merged["thresholds"]["fp16"] == raw("base")["thresholds"]["fp16"]   # the one FP16 table, all targets


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_no_profile_repeats_what_its_base_says(target):
    profiles = chain(target)
    for upper, lower in zip(profiles, profiles[1:]):
        below = {}
        for profile in reversed(profiles[profiles.index(lower):]):
            below.update(leaves(profile))
        same = {path for path, value in leaves(upper).items() if below.get(path) == value}
        assert not same, same


def test_profiles_hold_no_description_and_the_bases_are_not_targets():
    for target in targets.TARGETS:   # the description is Target.description in targets.py
        assert "description" not in raw(target)["target"] and targets.TARGETS[target].description
    for name in ("base", "qdq"):
        assert "target" not in raw(name)
        with pytest.raises(UserError, match="unsupported target"):
            targets.load_profile(name)


def test_the_weight_only_int8_target_keeps_no_qar_thresholds():
    assert "int8_qar" not in targets.load_profile("coreml")["thresholds"]
    assert all("int8_qar" in targets.load_profile(t)["thresholds"] for t in targets.TARGETS if t != "coreml")


def use_profiles(monkeypatch, tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / f"{name}.toml").write_text(text)
    monkeypatch.setattr(targets, "profile_file", lambda name: tmp_path / f"{name}.toml")


def test_tables_merge_key_by_key(monkeypatch, tmp_path):
    use_profiles(monkeypatch, tmp_path, {
        "base": '[parity]\nsamples = 4\n[thresholds.fp32]\ncosine = 0.9\npixel = 0.8\n',
        "onnx": 'base = "base"\n[target]\nprecisions = ["fp32"]\n[thresholds.fp32]\npixel = 0.5\n'})
    assert targets.load_profile("onnx") == {"parity": {"samples": 4}, "target": {"precisions": ["fp32"]},
                                            "thresholds": {"fp32": {"cosine": 0.9, "pixel": 0.5}}}


@pytest.mark.parametrize("files, message", [
    ({"onnx": 'base = "mid"\n', "mid": 'base = "onnx"\n'},
     r"mid\.toml: base = 'onnx' closes a loop \(onnx -> mid -> onnx\)"),
    ({"onnx": 'base = "onnx"\n'}, r"onnx\.toml: base = 'onnx' closes a loop"),
    ({"onnx": 'base = "gone"\n'}, r"onnx\.toml builds on base 'gone', but there is no .*gone\.toml"),
    ({"onnx": 'base = "../x"\n'}, r"onnx\.toml: base = '\.\./x' is not a profile name"),
    ({"onnx": 'base = "mid"\n', "mid": "[x\n"}, r"mid\.toml is unreadable"),
])
def test_a_broken_base_chain_is_one_line_naming_the_file(monkeypatch, tmp_path, files, message):
    use_profiles(monkeypatch, tmp_path, files)
    with pytest.raises(UserError, match=message) as info:
        targets.load_profile("onnx")
    assert "\n" not in str(info.value)

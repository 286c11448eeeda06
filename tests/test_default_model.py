"""The default model's figures are generated, and stay measured on the weights that ship.

benchmarks/default_model.py rewrites generated blocks in docs/default_model.md and the README; each block is stamped
with the sha256 of the weights it was measured on. Replacing the shipped weights without regenerating the figures
fails here, which is what keeps the docs from going stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import default_model  # noqa: E402
import routing_margin_sweep  # noqa: E402


def test_every_section_has_exactly_one_block():
    for name, (_, path) in default_model.SECTIONS.items():
        text = path.read_text()
        assert text.count(f"<!-- default-model:{name} -->") == 1, (name, path)
        assert text.count(f"<!-- /default-model:{name} -->") == 1, (name, path)


def test_every_block_was_measured_on_the_shipped_weights():
    weights = default_model.sha12(default_model.WEIGHTS)
    stale = default_model.stale_blocks(weights)
    assert not stale, (f"these figures were not measured on the shipped weights {weights}: {stale}; "
                       f"run python benchmarks/default_model.py --only <name>")


def test_replace_block_rewrites_only_its_block(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("intro\n<!-- default-model:a -->\nold a\n<!-- /default-model:a -->\nmiddle\n"
                   "<!-- default-model:b -->\nold b\n<!-- /default-model:b -->\nend\n")
    default_model.replace_block(doc, "a", "new a\nsecond line\n")
    assert doc.read_text() == ("intro\n<!-- default-model:a -->\nnew a\nsecond line\n<!-- /default-model:a -->\n"
                               "middle\n<!-- default-model:b -->\nold b\n<!-- /default-model:b -->\nend\n")
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(SystemExit, match="has no block 'c'"):
        default_model.replace_block(doc, "c", "x")


def test_targets_are_checked_at_their_bounds():
    good = {"strict": (0.97, 0.97), "decisive": (0.999, 0.995), "regret": (0.001, 0.5), "pixel": (0.999, 0.99)}
    assert routing_margin_sweep.meets(good)
    assert not routing_margin_sweep.meets({**good, "miou_200": routing_margin_sweep.BASE_MIOU - 1e-4})
    assert routing_margin_sweep.meets({**good, "miou_200": routing_margin_sweep.BASE_MIOU})
    for key, worse in (("strict", (0.9699, 0.99)), ("decisive", (1.0, 0.9949)), ("regret", (0.0011, 0.0)),
                       ("pixel", (0.9989, 1.0))):
        assert not routing_margin_sweep.meets({**good, key: worse}), key
    drop = routing_margin_sweep.INT8_MIOU_DROP
    assert routing_margin_sweep.meets({**good, "miou_64": 0.78, "int8_miou_64": 0.78 - drop})
    assert not routing_margin_sweep.meets({**good, "miou_64": 0.78, "int8_miou_64": 0.78 - drop - 1e-4})


@pytest.mark.parametrize("text", ["0.05", "a:b", "0:0.3", "1:0.3", "0.05:-1", "nan:1", "0.05:1:0", "0.05:1:1.5",
                                  "0.05:1:2000:3"])
def test_sweep_refuses_bad_grid_points(text):
    with pytest.raises(argparse.ArgumentTypeError):
        routing_margin_sweep.parse_point(text)


def test_sweep_points_name_their_steps():
    assert routing_margin_sweep.parse_point("0.05:1") == (0.05, 1.0, None)
    assert routing_margin_sweep.parse_point("0.05:1:2000") == (0.05, 1.0, 2000)
    # a point trained for other steps is another point: its cached weights are never reused
    assert routing_margin_sweep.point_name(0.05, 1, 1000) != routing_margin_sweep.point_name(0.05, 1, 2000)


def test_target_lines_report_each_bound():
    rows = [{"variant": "int8-ptq-qar", "data": "synthetic", "routing strict": "0.9800", "decisive": "0.9990",
             "regret": "0.0020", "pixel/top1": "0.9995"},
            {"variant": "int8-ptq-qar", "data": "photos", "routing strict": "0.9600", "decisive": "0.9990",
             "regret": "0.0001", "pixel/top1": "0.9950"}]
    lines = default_model.target_lines(rows, "int8-ptq-qar")
    assert "PASS: int8-ptq-qar strict on synthetic 0.9800 (>= 0.97)" in lines
    assert "FAIL: int8-ptq-qar strict on photos 0.9600 (>= 0.97)" in lines
    assert "FAIL: int8-ptq-qar regret on synthetic 0.0020 (<= 0.001)" in lines
    assert len(lines) == 7   # regret has no photo target


def run_train_demo(args, capsys):
    from biformer_edge.train_demo import main
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    return err


def test_train_demo_refuses_stage_settings_without_a_stage_and_a_missing_base(tmp_path, capsys):
    err = run_train_demo(["--stage", "all", "--steps", "1", "--run-dir", str(tmp_path / "run")], capsys)
    assert "--steps change(s) one stage: use --stage base or --stage margin, not --stage all" in err
    err = run_train_demo(["--stage", "margin", "--run-dir", str(tmp_path / "run")], capsys)
    assert "starts from the base weights" in err and "base.pt does not exist" in err
    err = run_train_demo(["--stage", "margin", "--init", str(tmp_path / "none.pt")], capsys)
    assert "--init" in err and "is not a file" in err
    assert not list(tmp_path.iterdir())


def test_train_demo_stages_chain_their_recipe_and_refuse_a_changed_resume(tmp_path, capsys):
    import json

    from biformer_edge.train_demo import main
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--size", "64", "--val-scenes", "2", "--batch", "2"]
    base = run / "base.pt"
    assert main(["--stage", "base", "--steps", "1", "--out", str(base), *common]) == 0
    out = tmp_path / "margin.pt"
    assert main(["--stage", "margin", "--steps", "1", "--routing-margin", "1", "--out", str(out), *common]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())["recipe"]
    assert [r["stage"] for r in recipe] == ["base", "margin"]
    assert recipe[0]["init_sha256"] is None and recipe[1]["routing_margin"] == 1.0
    assert recipe[1]["init_sha256"] == default_model.hashlib.sha256(base.read_bytes()).hexdigest()
    before = out.read_bytes()
    capsys.readouterr()
    err = run_train_demo(["--stage", "margin", "--steps", "1", "--routing-margin", "0.5", "--out", str(out), *common],
                         capsys)
    assert "is a run with other settings" in err
    assert out.read_bytes() == before and not list(tmp_path.glob("**/*.partial"))

"""Ensemble specs: the shipped 1st-place spec, validation with close matches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ensembles.spec import SpecError, load_spec, validate_spec

REPO = Path(__file__).resolve().parents[2]
FIRST = REPO / "ensembles" / "configs" / "first_place.yaml"


def _mini(**over):
    d = {
        "name": "t",
        "folds": [0, 1],
        "models": [
            {"name": "a", "kind": "2.5d", "config": "a.py", "checkpoints": "w/a/fold_{fold}.pth", "weight": 2},
            {"name": "b", "kind": "3d", "config": "b.py", "checkpoints": ["w/b0.pth"], "weight": 1},
        ],
        "fusion": {"weight_2d": 0.6, "weight_3d": 0.4},
    }
    d.update(over)
    return d


def test_first_place_spec_rules():
    s = load_spec(FIRST, root=REPO)
    seg = s.by_kind("2.5d", role="segment")
    w = np.array([m.weight for m in seg])
    np.testing.assert_allclose(w, [0.2, 0.2, 0.3, 0.2, 0.1, 0.1, 0.1])
    assert all(m.tta == ["hflip"] for m in seg)
    assert len(s.by_kind("2.5d", role="gate")) == 4 and len(s.by_kind("3d")) == 3
    assert s.fusion == {"weight_2d": 0.6, "weight_3d": 0.4}
    assert s.thresholds == 0.4 and s.post["max_prob_floor"] == 0.5
    assert s.gate["method"] == "unet_count" and s.gate["pixel_thr"] == 0.6 and s.gate["min_pixels"] == 12
    assert [p.name for p in seg[0].checkpoints] == ["best.pth"] * 5
    assert seg[0].checkpoints[3].parent.name == "fold_3"
    # round trip through YAML
    again = validate_spec(yaml.safe_load(s.dump()), "dump", REPO)
    assert [m.weight for m in again.models] == [m.weight for m in s.models]


def test_templates_and_lists(tmp_path):
    s = validate_spec(_mini(), "x.yaml", tmp_path)
    assert s.model("a").checkpoints == [tmp_path / "w/a/fold_0.pth", tmp_path / "w/a/fold_1.pth"]
    assert s.model("b").checkpoints == [tmp_path / "w/b0.pth"]
    with pytest.raises(FileNotFoundError, match="model 'a': config .*a.py not found"):
        s.check_files()
    (tmp_path / "a.py").write_text("")
    with pytest.raises(FileNotFoundError, match="model 'a': checkpoint .*fold_0.pth not found"):
        s.check_files()


def test_unknown_keys_get_close_matches():
    with pytest.raises(SpecError, match="unknown key 'thresholdz'.*did you mean 'thresholds'"):
        validate_spec(_mini(thresholdz=0.4), "x.yaml")
    m = _mini()
    m["models"][0]["wieght"] = 1
    with pytest.raises(SpecError, match="x.yaml: models\\[0\\]: unknown key 'wieght'.*'weight'"):
        validate_spec(m, "x.yaml")
    m = _mini()
    m["models"][1]["kind"] = "3D"
    with pytest.raises(SpecError, match="kind must be one of.*did you mean '3d'"):
        validate_spec(m, "x.yaml")
    with pytest.raises(SpecError, match="gate: unknown key 'min_pixel'.*'min_pixels'"):
        validate_spec(_mini(gate={"method": "unet_count", "min_pixel": 3}), "x.yaml")
    with pytest.raises(SpecError, match="no model named .aa.*did you mean .a."):
        validate_spec(_mini(), "x.yaml").model("aa")


def test_bad_values():
    with pytest.raises(SpecError, match="needs 2.5d models with role: gate"):
        validate_spec(_mini(gate={"method": "unet_count"}), "x.yaml")
    with pytest.raises(SpecError, match="thresholds must lie in"):
        validate_spec(_mini(thresholds=[0.4, 1.2, 0.3]), "x.yaml")
    with pytest.raises(SpecError, match="one number or 3"):
        validate_spec(_mini(thresholds=[0.4, 0.4]), "x.yaml")
    m = _mini()
    m["models"][1]["name"] = "a"
    with pytest.raises(SpecError, match="unique"):
        validate_spec(m, "x.yaml")
    with pytest.raises(FileNotFoundError, match="first_place.yaml"):
        load_spec("nope.yaml")

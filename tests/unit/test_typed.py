"""compress.typed: plain data as frozen dataclasses by their annotations, and where two of them differ."""

from dataclasses import dataclass, field

import pytest

from compress import typed
from compress.configs import MaskConfig, TrainConfig


@dataclass(frozen=True)
class Inner:
    n: int
    x: float = 0.0


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    pair: tuple[int, int] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    items: list[Inner] = field(default_factory=list)


def test_load_builds_nested_dataclasses_and_tuples():
    got = typed.load(Outer, {"name": "a", "inner": {"n": 1, "x": 2}, "pair": [2, 4], "items": [{"n": 3}], "scores": {"f1": 1}})
    assert got == Outer("a", Inner(1, 2), (2, 4), {"f1": 1}, [Inner(3)])
    assert typed.load(Outer, {"name": "a", "inner": {"n": 1}}).pair is None  # defaults fill what is left out


@pytest.mark.parametrize(
    "value,message",
    [
        ({"name": "a"}, "inner is missing"),
        ({"name": "a", "inner": {"n": True}}, "inner.n is 'True', not int"),
        ({"name": "a", "inner": {"n": 1}, "pair": [1, 2, 3]}, r"pair is '\[1, 2, 3\]', not tuple\[int, int\] \| None"),
        ({"name": "a", "inner": {"n": 1}, "items": [{"n": "3"}]}, r"items\[0\].n is '3', not int"),
        ({"name": "a", "inner": {"n": 1}, "extra": 1}, r"has unknown fields \['extra'\]"),
        ([], "is '\\[\\]', not Outer"),
    ],
)
def test_a_misfit_is_named_by_its_path(value, message):
    with pytest.raises(TypeError, match=message):
        typed.load(Outer, value)


def test_configs_check_their_values_when_loaded():
    with pytest.raises(ValueError, match="nm=\\(4, 2\\)"):
        typed.load(MaskConfig, {"nm": [4, 2]})


def test_differences_name_nested_fields_in_order():
    a = Outer("a", Inner(1), scores={"f1": 1.0})
    b = Outer("b", Inner(1, 0.5), scores={"f1": 1.0})
    assert typed.differences(a, b) == [("name", "a", "b"), ("inner.x", 0.0, 0.5)]
    assert typed.differences(TrainConfig(), TrainConfig(mask_lr=0.01, seed=3)) == [("mask_lr", 0.002, 0.01), ("seed", 0, 3)]

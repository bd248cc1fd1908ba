"""The one registry behind strategies, backbones, regularisers and adaptation, and the settings'
choices read from it: a method declared in its registry is a choice of the config, the CLI and the
form with no other edit. (No torch: the registries and the config import none.)"""

from __future__ import annotations

import pytest

from tl_core import cli
from tl_core.config import choices, knobs, make_config
from tl_core.errors import UserError
from tl_core.models.families import BACKBONES, get_spec, list_backbones
from tl_core.registry import Registry
from tl_core.training.strategies import STRATEGIES, get_strategy, list_strategies
from tl_core.training.term_specs import ADAPTATIONS, REGULARIZERS, RegularizerSpec


def test_a_registry_files_by_name_in_order_and_refuses_a_name_twice():
    shapes: Registry = Registry("shape", flag="--shape-of", none="none", make=lambda cls: cls())

    @shapes.register
    class Square:
        name = "square"

    @shapes.register
    class Circle:
        name = "circle"

    assert shapes.names() == ["square", "circle"] and shapes.choices() == ["none", "square", "circle"]
    assert isinstance(shapes.get("circle"), Circle) and "square" in shapes and "none" not in shapes
    with pytest.raises(ValueError, match="shape 'square' is registered twice"):
        shapes.add("square", Square())
    for bad in ("", "none"):  # no name, or the one that means "no entry"
        with pytest.raises(ValueError, match="needs a name other than"):
            shapes.add(bad, Square())
    with pytest.raises(UserError, match=r"unknown shape 'cube' \(--shape-of\); choose one of: none, square, circle$"):
        shapes.get("cube")
    assert shapes.names() == ["square", "circle"]  # nothing refused was filed


@pytest.mark.parametrize(
    "registry, door, names, flag",
    [
        (STRATEGIES, get_strategy, list_strategies, "--strategy"),
        (BACKBONES, get_spec, list_backbones, "--backbone"),
        (REGULARIZERS, REGULARIZERS.get, REGULARIZERS.names, "--regularizer"),
        (ADAPTATIONS, ADAPTATIONS.get, ADAPTATIONS.names, "--adapt"),
    ],
    ids=["strategies", "backbones", "regularizers", "adaptations"],
)
def test_every_kind_shares_the_registry_and_its_errors(registry, door, names, flag):
    assert isinstance(registry, Registry) and names() == registry.names() and len(names()) >= 2
    assert door(names()[-1]) is registry.get(names()[-1])
    with pytest.raises(UserError, match=rf"\({flag}\); choose one of: .*{names()[-1]}"):
        door("no-such-name")


def test_term_settings_are_checked_against_their_registries_and_list_them_in_order():
    assert choices("regularizer") == ["none", *REGULARIZERS.names()] == ["none", "l2sp", "ewc"]
    assert choices("adapt") == ["none", *ADAPTATIONS.names()] == ["none", "dann", "mmd"]
    assert choices("schedule") == ["onecycle", "cosine", "step", "constant"]  # a Literal's, as declared
    assert choices("epochs") == []  # a number has no fixed set of values
    with pytest.raises(UserError, match=r"unknown regularizer 'l2-sp' \(--regularizer\); choose one of: none, l2sp"):
        make_config(data="x", regularizer="l2-sp")
    with pytest.raises(UserError, match=r"unknown adaptation 'coral' \(--adapt\); choose one of: none, dann, mmd"):
        make_config(data="x", adapt="coral", target_data="t")
    assert knobs("regularizer", "ewc") == ("reg_strength", "head_reg_strength", "fisher_images")
    assert "fisher_images" not in knobs("regularizer", "l2sp") and knobs("regularizer", "none") == ()
    assert knobs("schedule", "cosine") == ()


def test_a_regulariser_declared_in_its_registry_is_a_choice_everywhere_at_once(monkeypatch, capsys):
    # One declaration, no edit to config.py or cli.py: the config accepts it, the CLI offers it, the
    # form's choices and knobs list it.
    monkeypatch.setattr(REGULARIZERS, "_entries", dict(REGULARIZERS.items()))  # undone after the test
    REGULARIZERS.add(
        "l2sp_bn",
        RegularizerSpec(
            "l2sp_bn", "L2-SP-BN", "L2-SP that also holds BatchNorm's affine parameters.", ("reg_strength",)
        ),
    )
    assert choices("regularizer") == ["none", "l2sp", "ewc", "l2sp_bn"]
    assert knobs("regularizer", "l2sp_bn") == ("reg_strength",)
    assert make_config(data="x", regularizer="l2sp_bn").regularizer == "l2sp_bn"
    args = cli.build_parser().parse_args(["run", "--data", "x", "--regularizer", "l2sp_bn"])
    assert make_config(data=args.data, regularizer=args.regularizer).regularizer == "l2sp_bn"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--regularizer {none,l2sp,ewc,l2sp_bn}" in shown

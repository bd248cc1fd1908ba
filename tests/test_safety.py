"""Safety: a password over the network, XSRF on, paths confined, weights loaded safely."""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_core.errors import UserError
from tl_core.service import auth, resolve_data_path

ROOT = Path(__file__).resolve().parents[1]


def test_serving_on_a_network_needs_a_password(monkeypatch):
    monkeypatch.delenv("TL_PASSWORD", raising=False)
    assert auth.serving_problem("127.0.0.1") is None and auth.serving_problem(None) is None
    assert "TL_PASSWORD" in auth.serving_problem("0.0.0.0")
    monkeypatch.setenv("TL_PASSWORD", "s3cret")
    assert auth.serving_problem("0.0.0.0") is None
    assert auth.check_password("s3cret") and not auth.check_password("s3cre") and not auth.check_password("")


def test_the_dashboard_asks_for_the_password_before_showing_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_PASSWORD", "s3cret")
    monkeypatch.setenv("TL_NO_WORKER", "1")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'e.db'}")
    monkeypatch.setenv("TL_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Password"] and not at.title  # no page rendered
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert any("Wrong password" in e.value for e in at.error)
    at.text_input[0].input("s3cret")
    at.button[0].click().run()
    assert not at.exception and at.session_state["authenticated"]
    assert at.title and at.title[0].value == "New run"


def test_xsrf_protection_stays_on():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["enableXsrfProtection"] is True and cfg["server"]["enableCORS"] is True


def test_dataset_paths_stay_inside_the_roots_after_resolving_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "ok").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "escape")
    assert resolve_data_path(str(root / "ok"), [root]) == str((root / "ok").resolve())
    for bad in (root / "escape", root / ".." / "outside", outside):
        with pytest.raises(UserError):
            resolve_data_path(str(bad), [root])


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == name:
            yield node


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tl_core").rglob("*.py")))
def test_no_unsafe_loads_or_shell_strings(path):
    tree = ast.parse((ROOT / path).read_text())
    for call in _calls(tree, "load"):
        if getattr(call.func, "value", None) is not None and getattr(call.func.value, "id", "") == "torch":
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, (
                f"{path}:{call.lineno}: torch.load without weights_only=True"
            )
    for name in ("Popen", "run", "call", "check_output", "system"):
        for call in _calls(tree, name):
            assert not any(k.arg == "shell" for k in call.keywords), f"{path}:{call.lineno}: shell=True"
            assert getattr(call.func, "attr", "") != "system", f"{path}:{call.lineno}: os.system"


def test_the_dashboard_listens_on_localhost_by_default():
    make = (ROOT / "Makefile").read_text()
    assert "HOST   ?= 127.0.0.1" in make and "tl_core serve --host $(HOST)" in make
    from tl_core.cli.parser import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"  # `python -m tl_core serve` by hand too

"""Bad folders and bad settings in the dashboard: a message on the form, no traceback, nothing queued."""

from __future__ import annotations

import pytest
from PIL import Image

from .test_app import demo_root, env, launch, no_exception, page  # noqa: F401 (fixtures)


def _refused(at, env, *words: str) -> None:
    errors = [e.value for e in at.error]
    assert any(all(w in e for w in words) for e in errors), errors
    assert not any("Traceback" in e for e in errors)
    assert env.list_runs() == []


def test_a_one_class_folder_inside_the_roots_is_refused_on_the_form(env, demo_root):
    one = demo_root / "one-class"
    (one / "cat").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(one / "cat" / "a.png")
    try:
        at = no_exception(page("new_run.py").run())
        at.text_input(key="dataset_typed").input(str(one))
        at = no_exception(at.run())
        assert any("only one class" in e.value for e in at.error)
        _refused(launch(at), env, "only one class")
    finally:
        import shutil

        shutil.rmtree(one)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("batch_size", 5000, ("Batch size", "larger than")),
        ("image_size", 0, ("Image size",)),
        ("backbone", "resnet18", ("cannot be downloaded", "efficientnet_lite0")),  # offline: TL_OFFLINE
    ],
)
def test_bad_settings_are_refused_before_queueing(env, tmp_path, monkeypatch, key, value, words):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    at = no_exception(page("new_run.py").run())
    if key == "backbone":
        at.selectbox(key="backbone").set_value(value)
        at = no_exception(at.run())
    else:
        at.number_input(key=key).set_value(value)
    _refused(launch(at), env, *words)

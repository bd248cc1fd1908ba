"""The structure that keeps new work in the right rooms (docs/architecture.md), pinned.

Each test fails if the structure regresses: presentation in the engine, torch in the worker,
the environment read outside settings, a backbone family whose groups and stages disagree.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_core.models import backbones, families

ROOT = Path(__file__).resolve().parents[1]
ENGINE = sorted((ROOT / "tl_core").rglob("*.py"))


def _imported(code: str, runs_dir: Path | None = None) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter."""
    env = {**os.environ, **({"TL_RUNS_DIR": str(runs_dir)} if runs_dir else {})}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_engine_imports_neither_streamlit_nor_plotly():
    for path in ENGINE:
        assert not _imports(path) & {"streamlit", "plotly"}, f"{path.relative_to(ROOT)} imports presentation"
    every = "\n".join(
        f"import tl_core.{p.relative_to(ROOT / 'tl_core').with_suffix('').as_posix().replace('/', '.')}"
        for p in ENGINE
        if p.name not in ("__main__.py", "__init__.py")
    )
    assert not _imported(every) & {"streamlit", "plotly"}


def test_the_worker_imports_no_torch():
    loaded = _imported("import tl_core.executors.worker\ntl_core.executors.worker.max_concurrent()")
    assert "tl_core" in loaded and not loaded & {"torch", "torchvision", "timm"}


def test_queueing_a_run_imports_no_torch(tiny, tmp_path):
    # The CLI's `run --detach` and the form's checks: settings, registries, the dataset, the weights' presence.
    loaded = _imported(
        f"from tl_core import service\nfrom tl_core.config import make_config\n"
        f"cfg = make_config(data={tiny!r})\nservice.check_run(cfg)\ncfg.warnings()\n"
        f"import tl_core.cli",
        runs_dir=tmp_path / "runs",
    )
    assert not loaded & {"torch", "torchvision", "timm"}


def test_a_torchvision_backbone_does_not_import_timm():
    loaded = _imported("from tl_core.models import backbones\nbackbones.skeleton('resnet18')")
    assert {"torch", "torchvision"} <= loaded and "timm" not in loaded


def test_no_module_outside_settings_reads_the_environment():
    for path in ENGINE:
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                pytest.fail(
                    f"{path.relative_to(ROOT)}:{node.lineno} reads the environment; add a setting to "
                    f"tl_core/settings.py instead"
                )


@pytest.mark.parametrize("name", families.list_backbones())
def test_every_backbone_family_declares_groups_and_stages_that_agree(name):
    # One adapter holds a family's group names, its groups' parts and its chain of stages: the
    # names it declares are the groups it builds, and running its stages then its tail has the
    # model's own output shape (built without weights on the meta device; values: test_features).
    spec = families.get_spec(name)
    bb = backbones.skeleton(name, 7)
    assert [s.name for s in bb.layout.stages] == list(spec.body_groups)
    assert [g.name for g in bb.groups] == [*spec.body_groups, "head"]
    size = spec.fixed_image_size or 64
    device = next(bb.model.parameters()).device
    x = torch.zeros(2, 3, size, size, device=device)
    bb.model.eval()
    with torch.no_grad():
        y = x
        for stage in bb.layout.stages:
            y = stage(y)
        assert bb.layout.tail(y).shape == bb.model(x).shape == (2, 7)


def test_adding_a_family_is_one_entry():
    # Every registered backbone comes from a family adapter; its spec points back to it.
    adapters = {type(families.get_spec(n).adapter) for n in families.list_backbones()}
    assert all(issubclass(a, families.Family) and a.groups and a.head and a.models for a in adapters)
    assert all(a.cam_layer and a.cam_layout in ("nchw", "nhwc", "tokens") for a in adapters)  # gradcam.py
    assert sum(len(a.models) for a in adapters) == len(families.list_backbones())


def test_the_service_package_shadows_none_of_its_modules():
    # `service.compare` is the module compare.py, not a function re-exported under its name: the
    # pages' `service.X` and an import of tl_core.service.<module> mean one thing each.
    import importlib
    import pkgutil

    from tl_core import service

    for info in pkgutil.iter_modules(service.__path__):
        module = importlib.import_module(f"tl_core.service.{info.name}")
        assert getattr(service, info.name) is module, f"tl_core.service.{info.name} is shadowed by a re-exported name"
    assert callable(service.compare_runs) and service.compare.compare_runs is service.compare_runs


LONGEST = 500  # lines: a module past ~400 is two concepts (docs/architecture.md)


def test_no_module_of_the_engine_or_the_dashboard_is_past_500_lines():
    code = [*ENGINE, *sorted((ROOT / "ui").rglob("*.py")), *sorted((ROOT / "pages").glob("*.py")), ROOT / "app.py"]
    long = {str(p.relative_to(ROOT)): n for p in code if (n := len(p.read_text().splitlines())) > LONGEST}
    assert long == {}, f"split these by concept: {long}"


def test_every_subpackage_of_the_engine_says_what_it_owns():
    packages = [p for p in (ROOT / "tl_core").iterdir() if (p / "__init__.py").is_file()]
    assert {p.name for p in packages} >= {
        "data",
        "models",
        "training",
        "analysis",
        "inference",
        "store",
        "executors",
        "service",
        "cli",
    }
    for p in packages:
        doc = ast.get_docstring(ast.parse((p / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 8, f"tl_core/{p.name}/__init__.py: a docstring that says what it owns"

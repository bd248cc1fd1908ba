"""Predict with a run (or a bundle exported from it), and export it: for the CLI and the pages.

An upload is written under <runs dir>/uploads/<id>/ after the same checks as every image
TransferLab reads (type, header, decompression-bomb limit), so a page can hand the paths to a
job (jobs.py) whose result, top-k classes and heat maps, lands in the store.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from ..data.images import check_image
from ..errors import UserError
from ..store import Run, Store
from ..store.run_folders import run_folder, runs_dir
from ..store.summary import ExportRecord


def has_checkpoint(run: Run) -> bool:
    return (run_folder(run) / "best.pt").exists()


def predictable_runs(store: Store, experiment: str | None = None) -> list[Run]:
    """Runs with a best checkpoint to predict with, newest first."""
    return [r for r in store.list_runs(experiment) if r.status != "queued" and has_checkpoint(r)]


def save_uploads(files: list[tuple[str, bytes]], channels: int = 3) -> tuple[list[str], list[str]]:
    """(paths of the usable images, a message for each file that is not one); the files written
    under a folder of their own, unusable ones removed again."""
    folder = runs_dir() / "uploads" / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    paths, problems = [], []
    for i, (name, content) in enumerate(files):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name) or "image"
        path = folder / f"{i:03d}_{safe}"
        path.write_bytes(content)
        if (problem := check_image(path, channels, decode=True)) is None:
            paths.append(str(path))
        else:
            problems.append(problem.replace(str(path), name).replace(path.name, name))
            path.unlink()
    return paths, problems


def predict_images(
    store: Store,
    source: str | int,
    paths: list[str],
    top_k: int = 5,
    cam: bool = False,
    cam_classes: list[str] | None = None,
    job: str | None = None,
) -> dict:
    """Top-k classes (and, with `cam`, heat maps) for each image, from run `source` or the bundle at
    path `source`. With a job id, stored as a "prediction" artifact of the run's experiment."""
    from ..inference.predictor import from_bundle, from_run, predict  # torch: only what predicts imports it

    run = store.get_run(int(source)) if str(source).isdigit() else None
    predictor = from_run(run) if run is not None else from_bundle(str(source))
    # Which precision produced these probabilities, and which the run's validation numbers they
    # may be set beside (None where the run or bundle recorded none): they agree to that precision.
    out = {
        "source": predictor.source,
        "run": run.id if run else None,
        "classes": predictor.classes,
        "precision": predictor.precision,
        "val_precision": predictor.metadata.get("val_precision"),
        "val_epoch": predictor.metadata.get("epoch"),
        "results": predict(predictor, paths, top_k, cam, cam_classes),
        "job": job,
    }
    if job:
        store.add_artifact(run.experiment if run else "default", "prediction", out)
    return out


def export_run(
    store: Store,
    run_id: int,
    fmt: str,
    out: str | Path | None = None,
    tolerance: float | None = None,
    job: str | None = None,
) -> dict:
    """Export the run's best checkpoint (export.py) and check it on its validation images; the result,
    passed or not, is kept in the run's summary ("exports") and, with a job id, as an artifact."""
    from ..inference.export import FORMATS, TOLERANCE, ExportMismatch, export  # torch (and onnx): only here
    from ..inference.predictor import from_run  # torch, as above

    run = store.get_run(run_id)
    images = [p.path for p in store.predictions(run_id)]
    if not images:
        raise UserError(
            f"run {run_id} has no stored validation predictions to check an export on; "
            f"export a run that finished an epoch with this version"
        )
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out) if out else run_folder(run) / "export" / f"run{run.id}-{run.config.get('backbone')}{FORMATS[fmt]}"
    try:
        result = export(from_run(run), fmt, out, images, TOLERANCE if tolerance is None else tolerance)
        error = None
    except ExportMismatch as e:
        result, error = e.result, e
    _record(store, run_id, ExportRecord(**result, run=run_id))
    if job:
        store.add_artifact(
            run.experiment, "export", {**result, "run": run_id, "job": job, **({"error": str(error)} if error else {})}
        )
    if error:
        raise error
    return result


def exports(run: Run) -> list[ExportRecord]:
    """The run's exports and their parity checks, newest last."""
    return list(run.summary.exports)


def _record(store: Store, run_id: int, result: ExportRecord) -> None:
    store.update_summary(run_id, exports=[*store.get_run(run_id).summary.exports, result])

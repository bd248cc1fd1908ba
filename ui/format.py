"""Words and numbers for the screen: durations, the runs table, notes on a run, form messages."""

from __future__ import annotations

import re

from tl_core import service
from tl_core.config import RunConfig
from tl_core.errors import UserError
from tl_core.store import Run, RunSummary
from tl_core.store.summary import ExportRecord

# The form's label for each setting a message may name as a CLI flag.
LABELS = {
    "data": "Dataset",
    "lr": "Learning rate",
    "batch_size": "Batch size",
    "image_size": "Image size",
    "weight_decay": "Weight decay",
    "train_fraction": "Train fraction",
    "val_fraction": "Val fraction",
    "unfreeze": "Groups to unfreeze",
    "lr_decay": "LR decay",
    "head_epochs": "Head epochs",
    "unfreeze_every": "Unfreeze every",
    "unfreeze_on": "Unfreeze on",
    "phase2_lr_factor": "Phase-2 LR factor",
    "head_lr_factor": "Head LR factor",
    "stage_lr_factor": "Stage LR factor",
    "split_seed": "Split seed",
}


def form_message(error: UserError | str) -> str:
    """A UserError worded for the form: CLI flags (--batch-size) become the form's labels."""

    def label(m: re.Match) -> str:
        field = m.group(1).replace("-", "_")
        return LABELS.get(field, field.replace("_", " ").capitalize())

    return re.sub(r"--([a-z0-9][a-z0-9-]*)", label, str(error))


def flag_help(field: str) -> str:
    """A setting's help on the form: its CLI flag and what RunConfig says of it."""
    return f"`--{field.replace('_', '-')}`: {RunConfig.model_fields[field].description}"


def numbers(text: str, label: str) -> list[float]:
    """Comma-separated numbers typed into a field ("0.1, 0.3, 1"); empty text: none."""
    try:
        return [float(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{label} {text!r}: type numbers separated by commas, e.g. 0.1, 0.3, 1") from None


def verdict_method(measure: str, differences: list[dict], best_lr: bool = False) -> str:
    """How the verdicts of a comparison were reached, in one paragraph (the page and the report)."""
    d = differences[0]
    tested = max(x["family"] for x in differences)
    scope = f"over the {tested} pairs tested" if d["scope"] == "all" else "over each cell's pairs"
    if d["correction"] != "holm":
        correction = "each pair on its own (no correction for the number of pairs)"
    elif d["scope"] == "all" and tested <= 1:
        correction = "one pair tested, so nothing to correct for"
    else:
        correction = (
            f"with Holm's correction {scope}: with no true difference, the chance that any verdict here "
            f"names a winner is at most {1 - d['confidence']:.0%}; each interval is at the level Holm "
            f"tested its pair at, so a verdict and its interval agree"
        )
    return (
        f"Compared: {measure}"
        + (", each strategy at its best LR (chosen on validation)" if best_lr else "")
        + f"; runs paired by seed (and split). Each verdict is a paired t-test at {d['confidence']:.0%}, "
        + correction
        + "."
    )


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def millions(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def runs_rows(runs: list[Run]) -> list[dict]:
    """The Runs page table, from run records only (no metric rows: it refreshes every 2 s)."""
    rows = []
    for r in runs:
        rows.append(
            {
                "id": r.id,
                "name": r.name,
                "experiment": r.experiment,
                "backbone": r.config.get("backbone"),
                "strategy": r.config.get("strategy"),
                "seed": r.config.get("seed"),
                "status": r.status,
                "epoch": f"{r.epochs_done} of {r.epochs}",
                "progress": r.epochs_done / max(1, r.epochs),
                "eta": format_seconds(service.eta_seconds(r)),
                "best_val_acc": r.best_val_acc,
                "test_acc": r.test_acc,
                "duration": format_seconds(r.duration_s),
                "created": r.created_at.strftime("%Y-%m-%d %H:%M"),
                "tags": r.tags,
                "launched_by": r.launched_by or "",
                "where": where(r),
            }
        )
    return rows


# How each executor (store.Run.executor) trained a run, for a sentence.
EXECUTORS = {"local": "the local worker", "ray": "Ray", "here": "the command line, in the foreground"}


def where(run: Run) -> str:
    """The executor and node that ran a run, short: "ray · gpu-3", "local · lab-1"; "" before any took it."""
    return " · ".join(p for p in (run.executor, run.host) if p)


def provenance(run: Run) -> str:
    """Who launched a run, and which executor and node ran it (the Ray node too, when recorded)."""
    who = f"Launched by **{run.launched_by}**" if run.launched_by else "Launched by nobody recorded"
    if not run.executor and not run.host:
        return f"{who} · not taken by a worker yet" if run.status == "queued" else who
    ran = f"ran on **{run.host or 'an unrecorded host'}**"
    if run.executor:
        ran += f" by {EXECUTORS.get(run.executor, run.executor)}"
    if node := service.ray_node(run):
        ran += f" (Ray node `{node}`)"
    return f"{who} · {ran}"


def speed_note(summary: RunSummary) -> str:
    """One line on what a run's caches did (features, decoded images) and its startup time."""
    parts = []
    fc, dc = summary.feature_cache, summary.decode_cache
    if fc and fc.used:
        how = "found in the cache" if fc.hit else f"computed in {fc.seconds:.1f} s"
        views = f", {fc.views} augmented views per image" if fc.views > 1 else ""
        parts.append(f"**frozen features**: cached at the {fc.boundary} ({how}, {fc.precision}{views})")
    elif fc:
        parts.append(f"**frozen features**: not cached ({fc.why or ''})")
    if dc:
        parts.append("**decoded images**: cached" if dc.used else f"**decoded images**: not cached ({dc.why})")
    if summary.startup_seconds is not None:
        where = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in summary.startup.items())
        parts.append(
            f"**startup**: {summary.startup_seconds:.1f} s to the first batch" + (f" ({where})" if where else "")
        )
    if gpu := summary.gpu_memory:
        said = [
            *([f"peak {gpu.peak_mb / 1024:.2f} GiB"] if gpu.peak_mb is not None else []),
            *(
                [
                    f"{gpu.predicted_mb / 1024:.2f} GiB predicted by its probe step of {gpu.available_mb / 1024:.1f} "
                    f"GiB free"
                ]
                if gpu.predicted_mb is not None and gpu.available_mb is not None
                else []
            ),
        ]
        parts.append("**GPU memory**: " + ", ".join(said))
    if summary.cudnn_benchmark is not None:
        parts.append(f"**cudnn.benchmark**: {summary.cudnn_benchmark}")
    return " · ".join(parts)


def input_note(summary: RunSummary) -> str:
    """One line on what the model was fed: image size against the weights' own, preprocessing, batch."""
    parts = []
    if pre := summary.preprocessing:
        mean, std = (", ".join(f"{v:.3f}" for v in values) for values in (pre.pre.mean, pre.pre.std))
        parts.append(
            f"**input**: {pre.image_size} px (the weights' native size: {pre.native_size} px), "
            f"resized {pre.pre.interpolation} to {pre.resize} px and centre-cropped, augmentation "
            f"{pre.augment}, normalised with mean ({mean}) and std ({std}) from the weights"
        )
    if batch := summary.batch_size:
        parts.append(f"**batch size**: {batch.used}" + (f" ({batch.why})" if batch.why else ""))
    return " · ".join(parts)


def methods_note(summary: RunSummary) -> str:
    """One line on what a run's loss terms and memory settings did: knowledge kept (or why it was
    not measured), the Fisher information, the target domain, gradient accumulation."""
    parts = []
    if (kept := summary.forgetting) and kept.agreement is not None:
        reference = kept.reference or "the pretrained model"
        parts.append(f"**knowledge kept**: {kept.agreement:.1%} (agreement with {reference} on {kept.images} images)")
    elif kept and kept.skipped is not None:
        parts.append(f"**knowledge kept**: not measured ({kept.skipped})")
    if reg := summary.regularizer:
        parts.append(f"**pull toward the pretrained weights**: {reg.pull}")
    if fisher := summary.fisher:
        parts.append(f"**Fisher information**: from {fisher.images} images ({fisher.source})")
    if target := summary.target:
        labels = "labelled: its accuracy is measured" if target.labelled else "unlabelled"
        split = (
            f"; train/ {target.adapted_on} adapted on, val/ {target.evaluated_on} evaluated on"
            if target.layout == "split"
            else ""
        )
        parts.append(f"**target data**: `{target.data}`, {target.images} images ({labels}{split})")
    if (memory := summary.memory) and (memory.accumulate > 1 or memory.checkpointing == "on"):
        parts.append(
            f"**memory**: accumulate {memory.accumulate} (effective batch "
            f"{memory.effective_batch}), checkpointing {memory.checkpointing}"
        )
    return " · ".join(parts)


def prediction_caption(p, classes: list[str]) -> str:
    """One stored prediction under its thumbnail: the file, its true class, what the model said."""
    name = p.path.rsplit("/", 1)[-1]
    if p.correct:
        return f"{name}: {classes[p.label]} ({p.prob:.0%})"
    return f"{name}: true {classes[p.label]}, predicted {classes[p.pred]} ({p.prob:.0%})"


def cell_label(classes: list[str], true: int, predicted: int, count: int) -> str:
    return f"{classes[true]} -> {classes[predicted]} ({count})"


def megabytes(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB"


def parity_note(export: ExportRecord) -> str:
    """One line on an export's parity check against the run's own model."""
    return (
        f"**{export.format}** · {megabytes(export.bytes)} · checked on {export.images} validation "
        f"images: top-1 agreement **{export.top1_agreement:.1%}**, largest probability difference "
        f"**{export.max_prob_diff:.1e}** (tolerance {export.tolerance:.0e})"
    )

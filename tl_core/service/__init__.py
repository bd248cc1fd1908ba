"""The service layer: everything a front end asks of the engine, in one place.

The command line (cli/) and the dashboard (app.py, pages/) both call these functions and
nothing deeper, so an operation (queue, cancel, resume, a comparison) behaves the same from
either, and a new front end (an HTTP API, a notebook) starts here. Nothing here formats for
a screen: that is cli/output.py and ui/'s widgets and charts. torch is imported only by
what builds or trains a model (the backbone table, a run trained in this process).

  catalog    backbones and strategies as tables, what a strategy trains, what to try first
  datasets   the folders a front end may read, a dataset's report, sample images
  runs       the store and the worker; plan, check and queue runs; cancel, resume, delete
  readings   a run's numbers: at its best or last epoch, on val or test, which metric; its drift's groups
  results    one run in full (each layer group's drift), comparison rows, per-epoch rows, a run's log and checkpoints
  grouping   what differs between runs, groups of seeds, the settings table, each strategy's best LR
  curves     what the charts draw: per-epoch mean and spread over runs, smoothing, the fine-tuning phases
  measure    before training: the probe of the data, the check of the data (label errors, duplicates,
             leaks, outliers), the LR finder, candidate backbones ranked (LogME, LEEP),
             stored with the experiment; after it, whether the probe and the ranking were right
  compare    statistics (is a difference real, the seeds that would settle it), data efficiency, layer drift and
             forgetting side by side, per-class results; `compare_runs` and `experiment_report` in one answer
  predictions  a run's stored validation predictions: errors worst first, a confusion cell's images,
             what one run fixed and broke against another, thumbnails
  predict    predict with a run or an exported bundle (uploads checked first); export, with its parity check
  jobs       measurements, predictions and exports a page starts in a process of its own and waits for
  exclusions a dataset's exclusion list (images left out of training, or moved to another class): list,
             add, undo; copied into each run's config when runs are queued, or read from --exclude FILE
  findings   the data check's findings as galleries show them: a dataset's newest check, each image's flags
"""

from ..store import FINISHED, STATUSES
from .catalog import (
    backbone_table,
    layer_groups,
    recommend_strategy,
    strategy_param_counts,
    strategy_table,
    timm_table,
)
from .compare import (
    FAMILIES,
    SEEDS_OFFERED,
    class_rows,
    compare_runs,
    data_efficiency,
    drift_profiles,
    experiment_report,
    forgetting_points,
    settling_plan,
    statistics,
    to_settle,
)
from .curves import epoch_spread, phases, smooth, unfreeze_epochs
from .datasets import data_roots, dataset_folders, dataset_report, resolve_data_path, sample_images
from .exclusions import exclude_image, image_name, list_exclusions, relabel_image, undo_exclusion, with_exclusions
from .findings import flagged, latest_check
from .grouping import at_best_lr, config_table, differing_keys, group_runs, lr_choices, lr_text
from .measure import check_data, find_lr, probe_data, probe_verdict, rank_backbones, ranking_agreement
from .predict import export_run, exports, has_checkpoint, predict_images, predictable_runs, save_uploads
from .predictions import cell, confusion, diff, errors, references, run_predictions, thumbnail, wrong_in_every_run
from .readings import METRICS, SPLITS, WHICH, describe, has_test, resolve_split, score, split_seed, value
from .results import (
    checkpoint,
    drift_by_group,
    eta_seconds,
    group_drift,
    log_tail,
    log_text,
    metric_rows,
    ray_node,
    run_details,
    run_row,
    skipped_files,
    status_counts,
    summarize,
    summary_rows,
    time_to_accuracy,
)
from .runs import (
    cancel_run,
    check_run,
    delete_run,
    display_db_url,
    draft_warnings,
    estimate_seconds,
    live_workers,
    more_seeds,
    more_splits,
    open_store,
    plan_runs,
    queue_run,
    queue_runs,
    resume_run,
    run_files_dir,
    start_here,
    start_worker,
    stop_worker,
    stored_config,
    train_here,
    worker_disabled,
    worker_health,
    worker_pid,
)

__all__ = [
    "check_data",
    "exclude_image",
    "image_name",
    "list_exclusions",
    "relabel_image",
    "undo_exclusion",
    "with_exclusions",
    "flagged",
    "latest_check",
    "wrong_in_every_run",
    "find_lr",
    "probe_data",
    "probe_verdict",
    "rank_backbones",
    "ranking_agreement",
    "WHICH",
    "class_rows",
    "config_table",
    "data_efficiency",
    "differing_keys",
    "drift_by_group",
    "drift_profiles",
    "estimate_seconds",
    "experiment_report",
    "forgetting_points",
    "group_drift",
    "group_runs",
    "more_seeds",
    "smooth",
    "statistics",
    "value",
    "FINISHED",
    "STATUSES",
    "backbone_table",
    "timm_table",
    "cancel_run",
    "check_run",
    "checkpoint",
    "compare_runs",
    "data_roots",
    "dataset_folders",
    "dataset_report",
    "delete_run",
    "display_db_url",
    "draft_warnings",
    "eta_seconds",
    "layer_groups",
    "log_tail",
    "metric_rows",
    "open_store",
    "plan_runs",
    "queue_run",
    "queue_runs",
    "recommend_strategy",
    "resolve_data_path",
    "resume_run",
    "run_details",
    "run_files_dir",
    "run_row",
    "sample_images",
    "skipped_files",
    "start_here",
    "start_worker",
    "status_counts",
    "stored_config",
    "strategy_param_counts",
    "strategy_table",
    "summarize",
    "summary_rows",
    "time_to_accuracy",
    "train_here",
    "worker_disabled",
    "worker_pid",
    "stop_worker",
    "live_workers",
    "ray_node",
    "FAMILIES",
    "METRICS",
    "SEEDS_OFFERED",
    "SPLITS",
    "at_best_lr",
    "describe",
    "has_test",
    "lr_choices",
    "lr_text",
    "more_splits",
    "resolve_split",
    "score",
    "settling_plan",
    "split_seed",
    "to_settle",
    "log_text",
    "worker_health",
    "epoch_spread",
    "phases",
    "unfreeze_epochs",
]

"""Charts: pure functions from runs and metric rows to plotly figures (no streamlit here; no numbers
computed here either: the mean and spread per epoch, the phases, the comparisons are the service's).

Pages draw with `from ui import charts; charts.curves(...)`; each chart lives in the module of its concept:
  style         colours per strategy and dashes per seed, axis labels, the layout, a mean-and-band trace
  curves        runs against epoch or time, a trace per run or a band per group of seeds; train vs val
  epochs        one run's keys against epoch: losses, each group's LR, shares, each group's drift
  timeline      the fine-tuning timeline: what trains, epoch by epoch; shaded phases
  comparison    data efficiency and its crossovers, layer drift side by side, forgetting
  classes       per-class recall, confusion heatmaps
  predictions   clickable confusion cells, what changed against another run, one image's top-k
  measurements  before training: images per class and split, the LR finder
"""

from .classes import confusion_heatmap, per_class_recall
from .comparison import data_efficiency, drift_overlay, forgetting_scatter
from .curves import curves, group_bands, seed_bands, train_val_gap
from .epochs import epoch_lines, layer_drift, lr_keys, share_lines
from .measurements import lr_finder, split_counts
from .predictions import class_deltas, clicked_cell, confusion_cells, confusion_delta, top_k
from .style import DRIFT_TITLE, LABELS, PALETTE
from .timeline import shade_phases, timeline, timeline_text

__all__ = [
    "confusion_heatmap",
    "per_class_recall",
    "data_efficiency",
    "drift_overlay",
    "forgetting_scatter",
    "curves",
    "group_bands",
    "seed_bands",
    "train_val_gap",
    "epoch_lines",
    "layer_drift",
    "lr_keys",
    "share_lines",
    "lr_finder",
    "split_counts",
    "class_deltas",
    "clicked_cell",
    "confusion_cells",
    "confusion_delta",
    "top_k",
    "DRIFT_TITLE",
    "LABELS",
    "PALETTE",
    "shade_phases",
    "timeline",
    "timeline_text",
]

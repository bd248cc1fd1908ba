"""What can be chosen: backbones and strategies as tables, what a strategy trains, what to try first."""

from __future__ import annotations

import functools

from ..config import RunConfig
from ..models.families import get_spec, list_backbones
from ..training.strategies import get_strategy, list_strategies


def backbone_table() -> list[dict]:
    """One row per registered backbone: size, layer groups, ImageNet top-1, weights availability."""
    from ..models.backbones import describe  # builds each architecture (without weights): torch

    rows = []
    for name in list_backbones():
        d = describe(name)
        rows.append(
            {
                "backbone": name,
                "params": d["params"],
                "layer_groups": len(d["groups"]),
                "imagenet_top1": d["imagenet_top1"],
                "weights": d["weights"],
            }
        )
    return rows


SEARCH_PARAMS_UP_TO = 60  # a search with more matches lists them without building each to count its parameters


def timm_table(search: str = "") -> list[dict]:
    """timm's pretrained models (`timm.list_models(pretrained=True)`), `timm/<name>` each, whose name
    holds every word of `search`: family, native size, weights here or not; with a search of at most
    SEARCH_PARAMS_UP_TO matches, their parameters too."""
    from ..models import timm_models  # timm (and torch): only to list its models

    rows = timm_models.zoo(search)
    if search.strip() and len(rows) <= SEARCH_PARAMS_UP_TO:
        rows = timm_models.zoo(search, params=True)
    return rows


def strategy_table() -> list[dict]:
    """One row per registered strategy: what it does, when to use it, its default LR and knobs."""
    return [
        {"strategy": n, "summary": s.summary, "when": s.when, "default_lr": s.default_lr, "knobs": list(s.knobs)}
        for n in list_strategies()
        for s in [get_strategy(n)]
    ]


def layer_groups(backbone: str) -> int:
    """Layer groups of a backbone, the new head included (no model is built)."""
    return len(get_spec(backbone).body_groups) + 1


def strategy_param_counts(backbone: str, strategy: str, settings: dict, num_classes: int = 10) -> dict:
    """Trainable and frozen parameters the strategy implies at its first and last epoch.

    `settings` holds any RunConfig fields (knobs, head, epochs); the rest take their defaults.
    For a plateau-driven progressive run the last epoch is an upper bound (`end_is_bound`).
    """
    fields = {k: v for k, v in settings.items() if k in RunConfig.model_fields}
    cfg = RunConfig.model_construct(**{**fields, "backbone": backbone, "strategy": strategy})
    sizes = _group_sizes(backbone, num_classes, cfg.head, cfg.hidden)
    s, p, n = get_strategy(strategy), cfg.strategy_params(), len(sizes)
    if s.trains != "all":  # parameter-efficient: every group from the first epoch, a subset of each
        size = get_spec(backbone).fixed_image_size or cfg.image_size
        total, trained = _efficient_sizes(backbone, num_classes, cfg.head, cfg.hidden, s.trains, p.lora_rank, size)
        return {
            "total": total,
            "groups": n,
            "start_groups": n,
            "end_groups": n,
            "start_trainable": trained,
            "end_trainable": trained,
            "start_frozen": total - trained,
            "end_frozen": total - trained,
            "end_is_bound": False,
        }
    plateau = strategy == "progressive" and p.unfreeze_on == "plateau"
    first = s.freeze_to(0, n, p, ())  # freeze boundaries: groups [0, b) frozen
    last = 0 if plateau else s.freeze_to(max(0, cfg.epochs - 1), n, p, ())
    total = sum(sizes)
    start_trainable, end_trainable = sum(sizes[first:]), sum(sizes[last:])
    return {
        "total": total,
        "groups": n,
        "start_groups": n - first,
        "end_groups": n - last,
        "start_trainable": start_trainable,
        "end_trainable": end_trainable,
        "start_frozen": total - start_trainable,
        "end_frozen": total - end_trainable,
        "end_is_bound": plateau,
    }


@functools.lru_cache(maxsize=64)
def _group_sizes(backbone: str, num_classes: int, head: str, hidden: int) -> tuple[int, ...]:
    """Parameters in each layer group (head last), built without weights."""
    from ..models.backbones import skeleton  # builds the architecture (without weights): torch

    return tuple(g.num_params() for g in skeleton(backbone, num_classes, head, hidden).groups)


def recommend_strategy(images_per_class: float) -> tuple[list[str], str]:
    """Strategies to try first for this much data per class, and why (a rule of thumb)."""
    n = round(images_per_class)
    if n < 100:
        return (
            ["feature_extraction", "partial"],
            f"about {n} training images per class is little: a frozen backbone with a new head "
            f"(feature_extraction) is hard to overfit; if the images look unlike ImageNet, "
            f"try partial with 1-2 groups",
        )
    if n < 1000:
        return (
            ["partial", "two_phase", "discriminative"],
            f"about {n} training images per class: adapt the upper layers (partial), or fine-tune "
            f"everything carefully (two_phase, discriminative)",
        )
    return (
        ["full", "discriminative"],
        f"about {n} training images per class is plenty: fine-tune every layer (full), or with "
        f"learning rates falling towards the stem (discriminative)",
    )


@functools.lru_cache(maxsize=64)
def _efficient_sizes(
    backbone: str, num_classes: int, head: str, hidden: int, trains: str, rank: int, image_size: int
) -> tuple[int, int]:
    """(all parameters, those that train) under a parameter-efficient strategy (Strategy.trains): the
    new head, and the body's biases or the LoRA adapters it would get (counted, not added: no peft)."""
    import torch  # builds the architecture (without weights): torch

    # torch in each: the catalog's tables are read by processes that never load it otherwise
    from ..models import adapters
    from ..models.backbones import skeleton
    from ..training.finetuning import trained

    bb = skeleton(backbone, num_classes, head, hidden)
    total, in_head = sum(p.numel() for p in bb.model.parameters()), bb.groups[-1].num_params()
    if trains == "adapters":
        example = torch.zeros(1, 3, image_size, image_size, device=next(bb.model.parameters()).device)
        added = adapters.lora_size(bb.model, bb.spec.head_path, example, rank)
        return total + added, in_head + added
    body = sum(p.numel() for g in bb.groups[:-1] for name, p in g.named_parameters() if trained(trains, name))
    return total, in_head + body

"""Compare and run detail at work: best or last, smoothing, statistics and more seeds, data
efficiency, the settings that differ, the URL, the HTML report, grouping at scale, notes and tags."""

from __future__ import annotations

import json

import pytest

from tl_core.store import Store

from .test_app import demo_root, env, make_run, no_exception, page  # noqa: F401  (fixtures)

SEED_NOISE = (0.0, 0.011, 0.004, 0.017, 0.008)  # each run's own share of its accuracy, irregular across seeds


def _grid(store: Store, seeds=(0, 1, 2), test: bool = False) -> None:
    """Two strategies x two train fractions x seeds, with per-class rows and a last-epoch confusion;
    with `test`, test metrics as the engine records them (full ahead on test by 5 points more)."""
    for strategy, edge in (("feature_extraction", 0.0), ("full", 0.1)):
        for fraction in (0.25, 1.0):
            for seed in seeds:
                run = make_run(store, f"{strategy}-{fraction}-{seed}", strategy, experiment="grid", seed=seed)
                cfg = {**run.config, "train_fraction": fraction, "split_seed": 0}
                noise = SEED_NOISE[(seed + 2 * (strategy == "full")) % len(SEED_NOISE)]
                acc = 0.6 + edge * (fraction == 1.0) - edge * (fraction < 1) + noise
                summary = {**run.summary, "train_images": 40 * fraction * 2, "last_confusion": [[1, 3], [3, 1]]}
                if test:
                    summary["test"] = {
                        "acc": acc + 0.05 * (strategy == "full"),
                        "macro_f1": acc - 0.1,
                        "balanced_acc": acc,
                        "loss": 0.9,
                        "images": 40,
                        "epoch": 3,
                        "classes": [],
                    }
                store.update_run(run.id, config=cfg, summary=summary)
                store.log_epoch(
                    run.id,
                    3,
                    {"val_acc": acc - 0.05, "val_loss": 1.0, "trainable_groups": 1, "wall_seconds": 8.0},
                    best=(acc, 2),
                )


def test_best_or_last_reads_every_table_and_chart_the_same_way(env):
    _grid(env)
    at = page("compare.py")
    at.query_params["experiment"] = "grid"
    at = no_exception(at.run())
    summary = at.dataframe[0].value
    best = dict(zip(summary["name"], summary["val_acc"]))
    at = no_exception(at.segmented_control(key="compare_which").set_value("last epoch").run())
    last = dict(zip(at.dataframe[0].value["name"], at.dataframe[0].value["val_acc"]))
    assert all(last[n] == best[n] - 0.05 for n in best if n.startswith("full"))
    assert at.query_params["which"] == ["last"] or at.query_params["which"] == "last"
    assert any("at each run's last epoch" in m.value for m in at.markdown)  # confusion matrices say which


def test_statistics_say_which_differences_are_real_and_which_correction_holds(env):
    _grid(env)
    at = page("compare.py")
    at.query_params["experiment"] = "grid"
    at = no_exception(at.run())
    texts = [m.value for m in at.markdown if "beats" in m.value or "within noise" in m.value]
    assert any("full beats feature_extraction by" in t and "train_fraction 1.0" in t for t in texts), texts
    assert any("feature_extraction beats full by" in t and "train_fraction 0.25" in t for t in texts), texts
    # Two pairs on the page, one family: Holm tests the smaller p at 0.05 / 2, then the other at 0.05;
    # each interval is at its pair's level, said in the verdict and above them.
    assert all("points of val accuracy (" in t and "Holm over 2 pairs; 3 seeds on split 0)" in t for t in texts)
    assert sorted(t.split("points of val accuracy (")[1].split(" CI")[0] for t in texts) == ["95%", "97.5%"]
    method = next(c.value for c in at.caption if "Holm's correction" in c.value)
    assert "Compared: val accuracy (best epoch)" in method and "over the 2 pairs tested" in method
    assert "at most 5%" in method and "`--split-seeds`" in method
    assert not [b for b in at.button if b.key and b.key.startswith("more_seeds_")]  # both told apart: nothing to add
    # Holm per cell instead: each cell's one pair on its own, at 95%.
    at = no_exception(at.segmented_control(key="compare_family").set_value("each cell's pairs").run())
    texts = [m.value for m in at.markdown if "beats" in m.value]
    assert len(texts) == 2 and all("(95% CI" in t and "Holm" not in t for t in texts), texts


def test_a_difference_within_noise_offers_the_seeds_that_would_settle_it(env):
    flips = ((0.70, 0.72), (0.72, 0.70), (0.71, 0.715))  # who wins changes with the seed
    for seed, (fe, full) in enumerate(flips):
        for strategy, acc in (("feature_extraction", fe), ("full", full)):
            run = make_run(env, f"{strategy}-{seed}", strategy, experiment="close", seed=seed)
            env.update_run(run.id, config={**run.config, "split_seed": 0})
            env.log_epoch(run.id, 3, {"val_acc": acc}, best=(acc, 3))
    at = page("compare.py")
    at.query_params["experiment"] = "close"
    at = no_exception(at.run())
    (text,) = [m.value for m in at.markdown if "within noise" in m.value]
    needed = int(text.split("about ")[1].split(" seeds")[0]) if "about " in text else None
    assert "would tell a difference this size" in text or "more than 100 seeds" in text
    button = at.button(key="more_seeds_0")
    add = min(needed or 99, 20) - 3  # to the seeds needed, 20 in all at most
    assert button.label == f"Add {add} seeds" and ("20 seeds in all is the most offered" in button.help) == (
        needed is None or needed > 20
    )
    no_exception(button.click().run())
    added = [r for r in env.list_runs("close") if r.status == "queued"]
    assert sorted((r.config["strategy"], r.config["seed"]) for r in added) == sorted(
        (s, seed) for s in ("feature_extraction", "full") for seed in range(3, 3 + add)
    )


def test_test_metrics_are_reported_when_every_run_has_them_with_a_switch_to_validation(env):
    _grid(env, test=True)
    at = page("compare.py")
    at.query_params["experiment"] = "grid"
    at = no_exception(at.run())
    assert at.segmented_control(key="compare_split").value == "test"
    summary = at.dataframe[0].value
    assert list(at.dataframe[0].proto.column_order[:6]) == ["name", "strategy", "seed", "status", "score", "val_acc"]
    assert "Test accuracy (best)" in at.dataframe[0].proto.columns  # the score's column, labelled
    full = summary[summary["name"] == "full-1.0-0"].iloc[0]
    assert full["score"] == pytest.approx(full["val_acc"] + 0.05)  # its test accuracy, 5 points above its val
    texts = [m.value for m in at.markdown if "beats" in m.value]
    assert texts and all("points of test accuracy" in t for t in texts)
    assert any("Compared: test accuracy (each run's checkpoint chosen on validation)" in c.value for c in at.caption)
    chart = json.loads(next(c for c in at.get("plotly_chart") if "how much data" in c.proto.spec).proto.spec)
    assert chart["layout"]["yaxis"]["title"]["text"] == "test accuracy (best epoch)"
    at = no_exception(at.selectbox(key="compare_metric").set_value("macro_f1").run())
    texts = [m.value for m in at.markdown if "beats" in m.value]
    assert len(texts) == 2 and all("points of test macro-F1" in t for t in texts), texts
    at = no_exception(at.selectbox(key="compare_metric").set_value("acc").run())
    at = no_exception(at.segmented_control(key="compare_split").set_value("validation").run())
    texts = [m.value for m in at.markdown if "beats" in m.value]
    assert len(texts) == 2 and all("points of val accuracy" in t for t in texts), texts
    assert at.dataframe[0].proto.column_order[4] == "val_acc"  # val accuracy is the score: one column


def test_a_grid_over_lrs_compares_each_strategy_at_its_best_lr(env):
    # feature_extraction is best at 1e-3, full at 1e-4 (on validation).
    for (strategy, lr), acc in {
        ("feature_extraction", 1e-3): 0.80,
        ("feature_extraction", 1e-4): 0.70,
        ("full", 1e-3): 0.60,
        ("full", 1e-4): 0.75,
    }.items():
        for seed in range(3):
            run = make_run(env, f"{strategy}-{lr}-{seed}", strategy, experiment="lrs", seed=seed)
            env.update_run(run.id, config={**run.config, "lr": lr, "split_seed": 0})
            v = acc + SEED_NOISE[(seed + 2 * (strategy == "full")) % 5]
            env.log_epoch(run.id, 3, {"val_acc": v}, best=(v, 3))
    at = page("compare.py")
    at.query_params["experiment"] = "lrs"
    at = no_exception(at.run())
    assert len([m for m in at.markdown if "feature_extraction" in m.value and "full" in m.value]) == 2  # one per LR
    at = no_exception(at.toggle(key="compare_best_lr").set_value(True).run())
    chosen = next(d.value for d in at.dataframe if "best LR" in d.value.columns)
    assert dict(zip(chosen["strategy"], chosen["best LR"])) == {"feature_extraction": "LR 0.001", "full": "LR 0.0001"}
    (text,) = [m.value for m in at.markdown if "feature_extraction" in m.value and "full" in m.value]
    assert "feature_extraction (LR 0.001) beats full (LR 0.0001) by" in text
    assert any("flatters each strategy's best LR" in c.value for c in at.caption)  # no test split here


def test_data_efficiency_chart_and_crossover(env):
    _grid(env)
    at = page("compare.py")
    at.query_params["experiment"] = "grid"
    at = no_exception(at.run())
    assert any(s.value == "How much data do I need?" for s in at.subheader)
    chart = json.loads(next(c for c in at.get("plotly_chart") if "how much data" in c.proto.spec).proto.spec)
    assert chart["layout"]["xaxis"]["type"] == "log"
    names = {t.get("name") for t in chart["data"] if t.get("name")}
    assert names == {"feature_extraction", "full"}
    assert any("images per class" in m.value and "wins" in m.value for m in at.markdown)


def test_settings_that_differ_and_the_html_report(env):
    _grid(env, seeds=(0,))
    at = page("compare.py")
    at.query_params["experiment"] = "grid"
    at = no_exception(at.run())
    settings = next(d.value for d in at.dataframe if "train_fraction" in d.value.columns)
    assert set(settings.columns) == {"run", "seed", "strategy", "train_fraction"}  # only what differs
    at = no_exception(at.toggle(key="compare_differs").set_value(False).run())
    everything = next(d.value for d in at.dataframe if "train_fraction" in d.value.columns)
    assert {"backbone", "epochs", "data"} <= set(everything.columns)
    report = next(b for b in at.get("download_button") if "HTML" in b.proto.label)
    assert report.proto.label == "HTML report"


def test_a_link_reopens_the_same_runs_and_view(env):
    runs = [make_run(env, "a", "feature_extraction", experiment="one"), make_run(env, "b", "full", experiment="two")]
    at = page("compare.py")
    at.query_params.update({"runs": f"{runs[0].id},{runs[1].id}", "which": "last", "smooth": "0.5"})
    at = no_exception(at.run())
    assert at.segmented_control(key="compare_mode").value == "Any runs"
    assert at.multiselect(key="compare_runs").value == [runs[0].id, runs[1].id]
    assert at.segmented_control(key="compare_which").value == "last epoch"
    assert at.slider(key="compare_smooth").value == 0.5


def test_hundreds_of_runs_are_drawn_as_groups_with_one_legend_entry_each(env):
    for seed in range(8):
        for strategy in ("feature_extraction", "full"):
            make_run(env, f"{strategy}-{seed}", strategy, experiment="many", seed=seed)
    at = page("compare.py")
    at.query_params["experiment"] = "many"
    at = no_exception(at.run())
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    legend = [t["name"] for t in figure["data"] if t.get("showlegend", True) and t.get("name")]
    assert legend == ["feature_extraction (n=8)", "full (n=8)"]
    at = no_exception(at.toggle(key="compare_single").set_value(True).run())
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(figure["data"]) == 16


def test_notes_and_tags_are_edited_on_the_run_page_and_filter_runs(env):
    tagged = make_run(env, "keep", "full")
    other = make_run(env, "other", "partial")
    at = page("run_detail.py")
    at.query_params["run"] = str(tagged.id)
    at = no_exception(at.run())
    at.text_area(key=f"notes_{tagged.id}").input("the best so far")
    at.multiselect(key=f"tags_{tagged.id}").set_value(["baseline"])
    at = no_exception(at.button(key=f"FormSubmitter:annotate_{tagged.id}-Save notes and tags").click().run())
    saved = env.get_run(tagged.id)
    assert saved.notes == "the best so far" and saved.tags == ["baseline"]
    runs_page = no_exception(page("runs.py").run())
    runs_page = no_exception(runs_page.selectbox(key="runs_tag").set_value("baseline").run())
    assert list(runs_page.dataframe[0].value["name"]) == ["keep"]
    compare = page("compare.py")
    compare = no_exception(compare.run())
    compare = no_exception(compare.selectbox(key="compare_tag").set_value("baseline").run())
    assert list(compare.dataframe[0].value["name"]) == ["keep"]
    assert other.name not in set(compare.dataframe[0].value["name"])


def test_runs_that_fine_tuned_in_the_same_phases_have_them_shaded_on_compare(env):
    for seed in (0, 1):
        make_run(env, f"prog-{seed}", "progressive", experiment="phases", seed=seed, unfreeze_at=1)
    at = page("compare.py")
    at.query_params["experiment"] = "phases"
    at = no_exception(at.run())
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(figure["layout"]["shapes"]) == 2  # epochs 1 and 2-3: one group, then three
    assert [a["text"] for a in figure["layout"]["annotations"]] == ["1 group", "3 groups"]
    hover = next(t for t in figure["data"] if t["name"] == "prog-0")["text"]
    assert "3 groups train" in hover[-1] and "LR head" in hover[-1]


def test_the_method_behind_the_verdicts_is_said_for_each_family():
    from ui import format as fmt

    many = [{"family": 21, "scope": "all", "correction": "holm", "confidence": 0.95}] * 21
    text = fmt.verdict_method("test accuracy (each run's checkpoint chosen on validation)", many, best_lr=True)
    assert text == (
        "Compared: test accuracy (each run's checkpoint chosen on validation), each strategy at its best "
        "LR (chosen on validation); runs paired by seed (and split). Each verdict is a paired t-test at "
        "95%, "
        "with Holm's correction over the 21 pairs tested: with no true difference, the chance that any "
        "verdict here names a winner is at most 5%; each interval is at the level Holm tested its pair "
        "at, so a verdict and its interval agree."
    )
    assert "over each cell's pairs" in fmt.verdict_method("x", [{**many[0], "scope": "cell", "family": 3}])
    assert "one pair tested, so nothing to correct for" in fmt.verdict_method("x", [{**many[0], "family": 1}])
    assert "no correction" in fmt.verdict_method("x", [{**many[0], "correction": "none", "family": 1}])

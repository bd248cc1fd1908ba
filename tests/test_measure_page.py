"""New run's measurements before training, from the page: the probe and the LR finder, each in a
process of its own (a real job), their results stored with the experiment and put to use."""

from __future__ import annotations

import json

from tl_core import service
from ui import charts, report

from .helpers import job_result
from .test_app import demo_root, env, no_exception, page  # noqa: F401  (fixtures)


def test_new_run_probes_the_data_and_its_recommendation_replaces_the_rule_of_thumb(env):
    at = no_exception(page("new_run.py").run())
    assert any("Rule of thumb" in i.value for i in at.info)
    at = no_exception(at.button(key="probe").click().run())
    found = job_result(at, "probe_job", env)
    assert found["linear_probe_acc"] > found["chance"] and found["image_size"] == 224  # the weights' native size
    at = no_exception(at.run())
    info = next(i.value for i in at.info if "Recommended" in i.value)
    assert "The probe measured" in info and found["recommendation"]["why"] in info
    stored = env.artifacts(at.session_state["experiment"], "probe")
    assert stored and stored[0].data["job"] == at.session_state["probe_job"].id


def test_new_run_finds_the_lr_and_one_click_puts_it_in_the_form(env):
    at = no_exception(page("new_run.py").run())
    at.number_input(key="image_size").set_value(64)
    at = no_exception(at.run())
    at = no_exception(at.button(key="lr_find").click().run())
    found = job_result(at, "lr_job", env)
    assert found["strategy"] == "feature_extraction" and len(found["lrs"]) == len(found["losses"])
    at = no_exception(at.run())
    figure = json.loads(next(c for c in at.get("plotly_chart") if "LR finder" in c.proto.spec).proto.spec)
    assert figure["layout"]["xaxis"]["type"] == "log"
    use = at.button(key="use_lr")
    assert use.proto.label.startswith("Use ")
    at = no_exception(use.click().run())
    assert float(at.text_input(key="lr").value) == float(f"{found['suggested_lr']:.2g}")


def test_the_timeline_says_what_trains_and_the_run_page_shades_its_phases():
    epochs = {
        e: {
            "val_acc": 0.5,
            "trainable_groups": 1 if e < 2 else 3,
            "trainable_params": 1e4 * (1 if e < 2 else 3),
            "lr/head": 1e-3,
            **({"lr/stage7": 3e-4, "lr/stage6": 1e-4} if e >= 2 else {}),
        }
        for e in range(4)
    }
    assert service.phases(epochs) == [(1, 2, 1), (3, 4, 3)]
    assert "3 groups train" in charts.timeline_text(epochs[2]) and "stage7 3.0e-04" in charts.timeline_text(epochs[2])

    class Run:
        id, name, config = 1, "progressive-1", {"strategy": "progressive"}

    timeline = charts.timeline([("progressive-1", [Run])], {1: epochs})
    assert [bar.x[0] for bar in timeline.data] == [2, 2] and "LR head 1.0e-03" in timeline.data[1].hovertemplate
    shaded = charts.shade_phases(charts.epoch_lines(epochs, ["val_acc"], "accuracy", "accuracy"), epochs)
    assert len(shaded.layout.shapes) == 2


def test_the_html_report_is_one_file_with_the_charts_tables_and_words():
    fig = charts.lr_finder(
        {
            "lrs": [1e-5, 1e-4, 1e-3],
            "losses": [2.0, 1.0, 3.0],
            "suggestion_index": 1,
            "suggested_lr": 1e-4,
            "rule_description": "steepest descent",
            "strategy": "full",
            "backbone": "resnet18",
        }
    )
    html = report.build(
        "TransferLab: e",
        "2 runs",
        [("Curves", [fig, fig]), ("Words", ["full beats partial <b>"]), ("Table", [[{"run": "a", "acc": 0.5}]])],
    )
    assert html.startswith("<!doctype html>") and html.count("plotly.js v") == 1  # the library once
    assert html.count('class="plotly-graph-div"') == 2 and "full beats partial &lt;b&gt;" in html
    assert "<td>a</td><td>0.5</td>" in html

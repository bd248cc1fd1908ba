"""Run detail: one run's settings, every epoch's metrics (with each layer group's drift and the
loss's other terms when recorded), per-class results, log and checkpoint; what it kept of its
pretrained knowledge; its notes and tags, editable here. Below: the validation images its best
checkpoint gets wrong (worst first), a confusion matrix whose cells open their images, where the
model looked (Grad-CAM), and an export to TorchScript or ONNX checked against the run.

Open a run directly with ?run=<id> in the URL (the Runs page links here that way).
"""

from pathlib import Path

import streamlit as st

from tl_core import service
from tl_core.service import jobs
from ui import charts, gallery, session
from ui import format as fmt

session.through_router("run_detail")  # a deep link on a fresh server goes through app.py

store = session.store()

st.title("Run detail")
runs = store.list_runs()
if not runs:
    st.info("No runs yet: start one on **New run**.", icon=":material/info:")
    st.stop()

by_id = {r.id: r for r in runs}
ids = list(by_id)
try:
    wanted = int(st.query_params.get("run", ids[0]))
except ValueError:
    wanted = ids[0]
run_id = st.selectbox(
    "Run",
    ids,
    index=ids.index(wanted) if wanted in by_id else 0,
    key="detail_run",
    format_func=lambda i: f"#{i}  {by_id[i].name}  ·  {by_id[i].experiment}  ·  {by_id[i].status}",
)
st.query_params["run"] = str(run_id)  # the URL names the run shown, so it can be shared or reloaded
run = store.get_run(run_id)
cfg = run.config

# --- headline ------------------------------------------------------------------------------------
STATUS_COLOURS = {"queued": "gray", "running": "blue", "completed": "green", "failed": "red", "cancelled": "orange"}
st.markdown(
    f":{STATUS_COLOURS.get(run.status, 'gray')}-badge[{run.status}] **{cfg.get('backbone')}** with "
    f"**{cfg.get('strategy')}** on `{cfg.get('data')}` · experiment **{run.experiment}** · seed "
    f"{cfg.get('seed')} · queued {run.created_at:%Y-%m-%d %H:%M}"
)
st.caption(fmt.provenance(run))
epochs = store.epoch_metrics([run.id])[run.id]
target_acc = service.value(run, epochs, "best", "target_acc")
kept = run.summary.forgetting.agreement if run.summary.forgetting else None
test = run.summary.test
m = st.columns(4 + (target_acc is not None) + (kept is not None) + (test is not None))
m[0].metric("Best val accuracy", f"{run.best_val_acc:.1%}" if run.best_val_acc is not None else "–", border=True)
m[1].metric("Best epoch", run.best_epoch_number or "–", border=True)
m[2].metric("Epochs", f"{run.epochs_done} of {run.epochs}", border=True)
m[3].metric("Duration", fmt.format_seconds(run.duration_s) or "–", border=True)
if target_acc is not None:
    m[4].metric(
        "Target accuracy",
        f"{target_acc:.1%}",
        border=True,
        help="On the target-domain folder (--target-data), at the best epoch by val accuracy",
    )
if test is not None:
    m[4 + (target_acc is not None)].metric(
        "Test accuracy",
        f"{test.acc:.1%}",
        border=True,
        help=f"On the {test.images} held-out test images, scored once with the checkpoint of epoch {test.epoch} "
        f"(chosen on val); macro-F1 {test.macro_f1:.3f}, balanced accuracy {test.balanced_acc:.3f}",
    )
if kept is not None:
    m[-1].metric(
        "Knowledge kept",
        f"{kept:.1%}",
        border=True,
        help="How often the fine-tuned body with the original ImageNet head agrees with the pretrained "
        "model's top-1: 100% is nothing forgotten",
    )
if run.status in ("queued", "running"):
    st.button("Refresh", icon=":material/refresh:", key="detail_refresh", help="Read the run's latest epochs")
if run.status == "running":
    st.progress(
        run.epochs_done / max(1, run.epochs),
        text=f"epoch {run.epochs_done} of {run.epochs} · ETA {fmt.format_seconds(service.eta_seconds(run))}",
    )
if run.error:
    (st.warning if run.status == "cancelled" else st.error)(
        f"{run.status.capitalize()}: {run.error}", icon=":material/error:"
    )
for warning in run.summary.warnings:
    st.warning(fmt.form_message(warning), icon=":material/warning:")

with st.expander(
    f"Notes and tags{': ' + ', '.join(run.tags) if run.tags else ''}",
    expanded=bool(run.notes),
    icon=":material/edit_note:",
):
    with st.form(f"annotate_{run.id}", border=False):
        notes = st.text_area(
            "Notes", run.notes, key=f"notes_{run.id}", placeholder="What this run was for, what you saw"
        )
        tags = st.multiselect(
            "Tags",
            sorted(set(store.tags()) | set(run.tags)),
            default=run.tags,
            key=f"tags_{run.id}",
            accept_new_options=True,
            placeholder="Add tags (type a new one and press Enter)",
            help="Filter by tag on Runs and Compare",
        )
        if st.form_submit_button("Save notes and tags", icon=":material/save:"):
            run = store.annotate(run.id, notes=notes, tags=tags)
            st.toast("Saved", icon=":material/save:")

best_pt = service.checkpoint(run, "best")
if best_pt:
    st.download_button(
        "Download best checkpoint (best.pt)",
        data=best_pt.read_bytes,
        file_name=f"run{run.id}-best.pt",
        mime="application/octet-stream",
        icon=":material/download:",
        help="The model's state_dict at its best epoch, with its classes and config",
    )

curves_tab, table_tab, lr_tab, class_tab, log_tab, config_tab = st.tabs(
    ["Curves", "Every epoch", "Learning rates", "Per class", "Log", "Config & environment"]
)

with curves_tab:
    if not epochs:
        st.info("No epoch has finished yet.", icon=":material/hourglass_top:")
    else:
        if len(service.phases(epochs)) > 1:
            st.caption(
                "Shaded spans are the fine-tuning phases (how many layer groups train); hover an epoch to "
                "see its trainable parameters and each group's LR."
            )
        a, b = st.columns(2)
        a.plotly_chart(
            charts.shade_phases(
                charts.epoch_lines(epochs, ["train_acc", "val_acc", "val_top5", "target_acc"], "accuracy", "accuracy"),
                epochs,
            ),
            key="acc_curves",
        )
        b.plotly_chart(
            charts.shade_phases(
                charts.epoch_lines(epochs, ["train_loss", "val_loss", "target_loss"], "loss", "loss"), epochs
            ),
            key="loss_curves",
        )
        drift = service.drift_by_group(run, epochs)
        terms = [
            (key, title)
            for key, title in (
                ("reg_share", f"the regularizer's share of the training loss ({cfg.get('regularizer')})"),
                (
                    "domain_acc",
                    f"domain discriminator accuracy ({cfg.get('adapt')}; 50%: the domains' features "
                    f"are told apart no better than chance)",
                ),
            )
            if any(key in m for m in epochs.values())
        ]
        if drift or terms:
            a, b = st.columns(2)
            if drift:
                a.plotly_chart(charts.layer_drift(drift), key="layer_drift")
                a.caption(
                    "Relative change ||w − w0|| / ||w0|| of each layer group's weights since training began; "
                    "a group the strategy kept frozen stays at 0 (dotted)."
                )
            for col, (key, title) in zip([b, a] if drift else [a, b], terms):
                col.plotly_chart(charts.share_lines(epochs, [key], title, charts.LABELS[key]), key=key)
        a, b = st.columns(2)
        a.plotly_chart(charts.epoch_lines(epochs, ["images_per_sec"], "throughput", "images / s"), key="throughput")
        b.plotly_chart(
            charts.epoch_lines(epochs, ["trainable_params"], "trainable parameters", "parameters", count=True),
            key="trainable",
        )

with table_tab:
    rows = service.metric_rows([run], {run.id: epochs})
    columns = [k for k in (rows[0] if rows else {}) if k not in ("run_id", "name", "strategy")]
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(
        rows,
        hide_index=True,
        column_order=columns,
        column_config={
            "epoch": st.column_config.NumberColumn("epoch", width="small"),
            "train_acc": percent,
            "val_acc": percent,
            "val_top5": percent,
            "target_acc": percent,
            "reg_share": percent,
            "domain_acc": percent,
            **{k: st.column_config.NumberColumn(format="%.4f") for k in columns if k.startswith("drift/")},
            "train_loss": st.column_config.NumberColumn(format="%.4f"),
            "val_loss": st.column_config.NumberColumn(format="%.4f"),
            "trainable_params": st.column_config.NumberColumn(format="compact"),
            **{
                k: st.column_config.NumberColumn(format="%.1f")
                for k in ("epoch_seconds", "images_per_sec", "peak_memory_mb", "wall_seconds")
            },
            **{k: st.column_config.NumberColumn(format="%.2e") for k in columns if k.startswith("lr/")},
        },
    )
    st.caption("Every metric the run recorded per epoch; lr/<group> is each layer group's LR at the end of the epoch.")

with lr_tab:
    keys = charts.lr_keys(epochs, run.summary.groups)
    if keys:
        st.plotly_chart(
            charts.epoch_lines(epochs, keys, "learning rate of each layer group", "learning rate", log_y=True),
            key="lr_curves",
        )
        st.caption(
            "Only trainable groups have a learning rate; a line that starts late is a group the strategy unfroze then."
        )
    else:
        st.info("No learning rates recorded yet.", icon=":material/hourglass_top:")

with class_tab:
    classes = store.class_metrics(run.id)
    if not classes:
        st.info("Per-class results are written when the run completes.", icon=":material/hourglass_top:")
    else:
        a, b = st.columns([1, 1])
        a.dataframe(
            [
                {"class": c.class_name, "precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
                for c in classes
            ],
            hide_index=True,
            column_config={
                "precision": st.column_config.NumberColumn("Precision", format="percent"),
                "recall": st.column_config.NumberColumn("Recall (accuracy)", format="percent"),
                "f1": st.column_config.NumberColumn("F1", format="%.3f"),
                "support": st.column_config.NumberColumn("Val images"),
            },
        )
        b.plotly_chart(
            charts.confusion_heatmap(
                [c.class_name for c in classes],
                [c.confusion for c in classes],
                title="confusion matrix at the best epoch",
            ),
            key="confusion",
        )

with log_tab:
    tail = service.log_tail(run, 50)
    st.caption(f"Last 50 lines of `{service.run_files_dir(run) / 'train.log'}`")
    st.code(tail or "(no log yet)", language=None)

with config_tab:
    summary = run.summary
    if summary.classes:
        st.markdown(
            f"**{len(summary.classes)} classes**: {', '.join(summary.classes)}  \n"
            f"**Images**: {summary.train_images} train / {summary.val_images} val · "
            f"**weights**: {summary.weights} · **layer groups**: {', '.join(summary.groups)}"
        )
    if note := fmt.input_note(summary):
        st.markdown(note)
    if note := fmt.speed_note(summary):
        st.markdown(note)
    if note := fmt.methods_note(summary):
        st.markdown(note)
    if skipped := service.skipped_files(summary):
        with st.expander(f"{len(skipped)} files skipped"):
            st.dataframe(skipped, hide_index=True)
    a, b = st.columns(2)
    with a.expander("Config", expanded=True):
        st.json(cfg)
    with b.expander("Environment", expanded=True):
        st.dataframe(
            [{"": k, "value": str(v)} for k, v in run.environment.items()] or [{"": "not started", "value": ""}],
            hide_index=True,
        )

# --- errors: what the best checkpoint gets wrong, and where it looked -----------------------------
st.subheader("Errors")
preds = service.run_predictions(store, run.id)
names, best_at = list(run.summary.classes), run.summary.predictions
if not preds or not names or best_at is None:
    st.caption(
        "The validation images the best checkpoint gets wrong appear here once the run has finished an epoch "
        "(runs trained before predictions were stored have none)."
    )
else:
    wrong = service.errors(preds)
    st.caption(
        f"At its best epoch ({best_at.epoch}) the model gets {len(wrong)} of {len(preds)} "
        f"validation images wrong; the worst first (highest loss: confidently wrong)."
    )
    flags = service.flagged(store, str(run.config.get("data", "")), [p.path for p in wrong], run.experiment)
    shown = gallery.some(wrong, names, key=f"errors_shown_{run.id}", flags=flags)

    # The confusion matrix, one cell's images on a click (or picked from the list below it).
    matrix = service.confusion(preds, len(names))
    a, b = st.columns([1, 1])
    event = a.plotly_chart(
        charts.confusion_cells(names, matrix), on_select="rerun", selection_mode="points", key=f"cells_{run.id}"
    )
    cell_key, clicked_key = f"cell_{run.id}", f"cell_clicked_{run.id}"
    clicked = charts.clicked_cell((event.selection or {}).get("points", []) if event else [], len(names))
    if clicked != st.session_state.get(clicked_key):  # a new click chooses the cell; the list can still change it
        st.session_state[clicked_key] = clicked
        if clicked is not None:
            st.session_state[cell_key] = clicked
    cells = [(t, p) for t in range(len(names)) for p in range(len(names)) if matrix[t][p]]
    if st.session_state.get(cell_key) not in cells:
        st.session_state.pop(cell_key, None)
    with b:
        chosen = st.selectbox(
            "Images of a cell",
            cells,
            index=None,
            key=cell_key,
            placeholder="Click a cell, or pick one",
            format_func=lambda c: fmt.cell_label(names, *c, matrix[c[0]][c[1]]),
            help="Rows: true class; columns: predicted class",
        )
        if chosen is not None:
            gallery.predictions(service.cell(preds, *chosen), names, columns=4)

    # Grad-CAM: where the model looked, for the predicted and the true class.
    if wrong:
        st.markdown("**Where it looked** (Grad-CAM)")
        cam_key = f"cam_job_{run.id}"
        row = st.columns([4, 1], vertical_alignment="bottom")
        picked = row[0].selectbox(
            "Image", wrong[:shown], key=f"cam_image_{run.id}", format_func=lambda p: fmt.prediction_caption(p, names)
        )
        if row[1].button(
            "Where did it look?",
            icon=":material/center_focus_strong:",
            key=f"cam_{run.id}",
            help="Heat maps of the predicted and the true class on this image (a process of its own, seconds)",
        ):
            st.session_state[cam_key] = jobs.start_command(
                store,
                "predict",
                run.experiment,
                [str(run.id), picked.path, "--cam", "--top-k", "3", "--cam-class", names[picked.label]],
            )
            st.rerun()
        if found := session.job_result(cam_key, store):
            result = found["results"][0]
            true_name = names[next((p.label for p in wrong if p.path == result["path"]), picked.label)]
            if "error" in result:
                st.error(result["error"], icon=":material/error:")
            else:
                top = result["top"][0]
                views = [
                    ("what the model sees", result["view"]),
                    (f"predicted {top['class']} ({top['prob']:.0%})", result["cams"][top["class"]]),
                    (f"true {true_name}", result["cams"][true_name]),
                ]
                st.caption(f"`{result['image']}`: " + ", ".join(f"{t['class']} {t['prob']:.1%}" for t in result["top"]))
                for col, (caption, b64) in zip(st.columns(4), views):
                    col.image(gallery.png(b64), caption=caption, width="stretch")

# --- export: one file to use the model elsewhere, checked against the run -------------------------
st.subheader("Export")
if not (best_pt and preds):
    st.caption("A run with a best checkpoint and stored predictions can be exported as TorchScript or ONNX here.")
else:
    export_key = f"export_job_{run.id}"
    row = st.columns([2, 1, 3], vertical_alignment="bottom")
    export_format = row[0].radio(
        "Format",
        ["torchscript", "onnx"],
        horizontal=True,
        key=f"export_format_{run.id}",
        help="TorchScript runs with PyTorch alone; ONNX with onnxruntime (and most serving "
        "stacks). Either carries the classes and the preprocessing inside.",
    )
    if row[1].button(
        "Export",
        icon=":material/output:",
        key=f"export_{run.id}",
        help="Write the best checkpoint as one file and check it gives the run's own answers on the validation images",
    ):
        st.session_state[export_key] = jobs.start_command(
            store, "export", run.experiment, [str(run.id), "--format", export_format]
        )
        st.rerun()
    if found := session.job_result(export_key, store):
        m = st.columns(3)
        m[0].metric(
            "Top-1 agreement",
            f"{found['top1_agreement']:.1%}",
            border=True,
            help=f"with the run's own model on {found['images']} validation images",
        )
        m[1].metric("Largest probability difference", f"{found['max_prob_diff']:.1e}", border=True)
        m[2].metric("Tolerance", f"{found['tolerance']:.0e}", border=True)
        if found.get("error") or not found.get("passed"):
            st.error(
                found.get("error") or "The export does not match the run within the tolerance.", icon=":material/error:"
            )
        elif Path(found["path"]).is_file():
            st.download_button(
                f"Download {Path(found['path']).name} ({fmt.megabytes(found['bytes'])})",
                data=Path(found["path"]).read_bytes,
                file_name=Path(found["path"]).name,
                mime="application/octet-stream",
                icon=":material/download:",
                key=f"export_file_{run.id}",
            )
    if done := service.exports(store.get_run(run.id)):
        with st.expander(f"{len(done)} exports of this run", icon=":material/history:"):
            for e in reversed(done):
                verdict = " · passed" if e.passed else " · **did not match**"
                (st.markdown if e.passed else st.warning)(f"{fmt.parity_note(e)}{verdict}  \n`{e.path}`")

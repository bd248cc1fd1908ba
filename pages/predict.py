"""Predict: a trained run's best checkpoint on new images (uploaded, or picked among the run's
validation images): the top classes of each with their probabilities, the model's view of it and a
heat map (Grad-CAM) of where it looked for a class. Uploads are checked as every image is; one that
cannot be used says why and the others go on. The prediction runs in a process of its own.
"""

import streamlit as st

from tl_core import service
from tl_core.service import jobs
from ui import charts, gallery, session

session.through_router("predict")  # a deep link on a fresh server goes through app.py

store = session.store()

st.title("Predict")
runs = service.predictable_runs(store)
if not runs:
    st.info("No run has a checkpoint to predict with yet: train one on **New run**.", icon=":material/info:")
    st.stop()

# --- which model, which images -----------------------------------------------------------------------
by_id = {r.id: r for r in runs}
run_id = st.selectbox(
    "Run",
    list(by_id),
    key="predict_run",
    format_func=lambda i: (
        f"#{i}  {by_id[i].name}  ·  {by_id[i].experiment}  ·  best val {by_id[i].best_val_acc or 0:.1%}"
    ),
)
run = by_id[run_id]
classes = list(run.summary.classes)
channels = int(run.config.get("in_channels") or 3)
st.caption(
    f"**{run.config.get('backbone')}** trained with **{run.config.get('strategy')}** on "
    f"`{run.config.get('data')}`: {len(classes)} classes ({', '.join(classes)})."
)

left, right = st.columns(2)
# Any file is taken, then checked as every image TransferLab reads (type, header, size), so a
# wrong one gets a message that says what to do rather than being greyed out in the file dialog.
uploaded = left.file_uploader(
    "Images",
    accept_multiple_files=True,
    key="predict_uploads",
    help="JPEG, PNG, BMP, GIF, WebP or TIFF; each is checked before it is used",
)
# Save each set of uploads once (not at every rerun): each file's saved path (or the problem with
# it) and the name it was uploaded under.
files = tuple((f.name, f.file_id) for f in uploaded or [])
if st.session_state.get("predict_saved", {}).get("files") != (files, channels):
    saved: dict = {"files": (files, channels), "names": {}, "problems": []}
    for f in uploaded or []:
        paths, problems = service.save_uploads([(f.name, f.getvalue())], channels)
        saved["names"].update((path, f.name) for path in paths)
        saved["problems"] += problems
    st.session_state["predict_saved"] = saved
upload_names, problems = st.session_state["predict_saved"]["names"], st.session_state["predict_saved"]["problems"]
for problem in problems:
    left.error(problem, icon=":material/error:")  # which file, what is wrong, what to do; the others go on

validation = service.run_predictions(store, run.id)
labels = {p.path: p.label for p in validation}
picked = right.multiselect(
    "Or the run's validation images",
    [p.path for p in validation],
    key=f"predict_val_{run.id}",
    format_func=lambda path: f"{classes[labels[path]]} · {path.rsplit('/', 1)[-1]}",
    placeholder="Pick images the run validated on",
    help="Labelled images the run has not trained on: to see what it says, without uploading",
)
paths = [*upload_names, *picked]

row = st.columns([1, 1, 4], vertical_alignment="bottom")
k = row[0].number_input("Top classes", 1, max(1, len(classes)), min(3, max(1, len(classes))), key="predict_k")
if row[1].button(
    "Predict",
    icon=":material/play_arrow:",
    key="predict",
    type="primary",
    disabled=not paths,
    help="The run's best checkpoint with its own preprocessing; heat maps for the top classes",
):
    st.session_state["predict_job"] = jobs.start_command(
        store, "predict", run.experiment, [str(run.id), *paths, "--cam", "--top-k", str(k)]
    )
    st.rerun()
row[2].caption(f"{len(paths)} image(s) chosen" if paths else "Upload images or pick validation images to predict.")

# --- what the model says --------------------------------------------------------------------------------
found = session.job_result("predict_job", store)
if found:
    st.subheader(f"Predictions of {found['source']}")
    for i, result in enumerate(found["results"]):
        if "error" in result:
            st.error(result["error"], icon=":material/error:")
            continue
        top = result["top"][0]
        name = upload_names.get(result["path"], result["image"])
        st.markdown(
            f"**{name}**: **{top['class']}** ({top['prob']:.1%})"
            + (f" · true class {classes[labels[result['path']]]}" if result["path"] in labels else "")
        )
        a, b, c = st.columns([2, 1, 1])
        a.plotly_chart(charts.top_k(result["top"], f"top {len(result['top'])} classes"), key=f"top_{i}")
        b.image(gallery.png(result["view"]), caption="what the model sees", width="stretch")
        cam = c.selectbox(
            "Heat map for",
            list(result["cams"]),
            key=f"predict_cam_{found['job']}_{i}",
            help="Grad-CAM: where the model found evidence for this class",
        )
        c.image(gallery.png(result["cams"][cam]), caption=f"where it looked for {cam}", width="stretch")

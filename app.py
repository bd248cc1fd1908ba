"""TransferLab dashboard: the router. The service (`python -m tl_core serve`, what `make start`
runs) starts it beside its worker; `streamlit run app.py` by hand works too.

Each page is one file in pages/; this file only sets the page up, makes sure a worker is
training the queue (the service's; a detached one of its own only when none is alive, as when
started by hand), and shows where the data lives.
"""

import streamlit as st

from tl_core import service
from ui import session

st.set_page_config(page_title="TransferLab", page_icon=":material/science:", layout="wide")


@st.cache_resource(show_spinner=False)
def _start_worker(db_url: str) -> int | None:
    # Once per dashboard process, and a fallback: the service's worker is found (worker.pid), never
    # doubled. The sidebar offers a start if none is alive later.
    return service.start_worker(service.open_store(db_url))


# Every page waits here until its visitor is signed in: through the team's identity provider when
# [auth] is in .streamlit/secrets.toml, else with TL_PASSWORD; on localhost with neither, no sign-in.
session.require_sign_in()

pages = [
    st.Page("pages/new_run.py", title="New run", icon=":material/add_circle:", default=True),
    st.Page("pages/runs.py", title="Runs", icon=":material/view_list:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/stacked_line_chart:"),
    st.Page("pages/run_detail.py", title="Run detail", icon=":material/insights:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
]
page = st.navigation(pages)
# On a fresh server, a deep link (/runs) can reach a page before any session ran this router
# (Streamlit's old pages/ folder mode); the page then sends the browser here with ?goto=<page>.
st.session_state["_tl_router"] = True
if (goto := st.query_params.get("goto")) in session.PAGES:
    st.switch_page(f"pages/{goto}.py", query_params={k: v for k, v in st.query_params.items() if k != "goto"})
store = session.store()
_start_worker(store.url)

with st.sidebar:
    st.markdown("### :material/science: TransferLab")
    st.caption("Measure how transfer-learning strategies compare on your images.")
    st.caption(f"**Database** `{service.display_db_url(store.url)}`")
    pid = service.worker_pid(store)
    others = [w for w in service.live_workers(store) if w.pid != pid]  # more capacity, or other machines'
    if pid:
        st.caption(f"**Worker** :green-badge[running] pid {pid}" + (f" and {len(others)} more" if others else ""))
    elif others:
        hosts = ", ".join(sorted({w.host for w in others}))
        st.caption(f"**Workers** :green-badge[running] {len(others)} on {hosts}")
    elif service.worker_disabled():
        st.caption("**Worker** :gray-badge[off] TL_NO_WORKER is set")
    else:
        st.caption("**Worker** :red-badge[stopped] queued runs wait")
        if st.button("Start worker", icon=":material/play_arrow:"):
            service.start_worker(store)
            st.rerun()

session.sidebar_identity()  # who is signed in, and Sign out
page.run()

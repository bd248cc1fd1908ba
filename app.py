"""TransferLab dashboard: the router. Run it with `streamlit run app.py`.

Each page is one file in pages/; this file only sets the page up, makes sure a worker is
training the queue (a separate, detached process), and shows where the data lives.
"""

import streamlit as st

from tl_core import auth, service
from ui import session

st.set_page_config(page_title="TransferLab", page_icon=":material/science:", layout="wide")


@st.cache_resource(show_spinner=False)
def _start_worker(db_url: str) -> int | None:
    # Once per dashboard process; the sidebar offers a restart if it dies later.
    return service.start_worker(service.open_store(db_url))


# Served on a network, the dashboard needs a password (TL_PASSWORD); on localhost it does not.
if problem := auth.serving_problem(st.get_option("server.address")):
    st.error(problem, icon=":material/lock:")
    st.stop()
if auth.password() and not st.session_state.get("authenticated"):
    with st.form("login"):
        st.markdown("### :material/lock: TransferLab")
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            if auth.check_password(given):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    st.stop()

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
    if pid:
        st.caption(f"**Worker** :green-badge[running] pid {pid}")
    elif service.worker_disabled():
        st.caption("**Worker** :gray-badge[off] TL_NO_WORKER is set")
    else:
        st.caption("**Worker** :red-badge[stopped] queued runs wait")
        if st.button("Start worker", icon=":material/play_arrow:"):
            service.start_worker(store)
            st.rerun()

page.run()

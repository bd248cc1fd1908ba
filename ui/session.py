"""What every page shares: the process's store, and the router guard written once."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from tl_core import service
from tl_core.store import Store

PAGES = ("new_run", "runs", "compare", "run_detail", "predict")


def store() -> Store:
    """The store of the dashboard's database (one connection pool per process)."""
    return service.open_store()


def through_router(page: str) -> None:
    """Send a page reached without app.py's router (a deep link on a fresh server, where Streamlit
    runs the page before any session ran the router) back through it, with its query string.
    A page run on its own (AppTest) has no router to go through and carries on."""
    if st.session_state.get("_tl_router"):
        return
    try:
        st.switch_page("app.py", query_params={"goto": page, **st.query_params.to_dict()})
    except StreamlitPageNotFoundError:
        return  # run on its own: nothing to go through


def page_link(page: str, label: str, icon: str, **query: str) -> None:
    """A link to another page, or a plain one when this page runs without app.py's navigation."""
    try:
        st.page_link(f"pages/{page}.py", label=label, icon=icon, query_params=query or None)
    except StreamlitPageNotFoundError:
        from urllib.parse import urlencode

        st.markdown(f"[{label}]({page}{'?' + urlencode(query) if query else ''})")


def job_result(key: str, store: Store) -> dict | None:
    """The result of the measurement job kept in session_state[key] (service/jobs.py), shown as it
    runs: a line that checks every second until the result is stored or the job has failed.
    None while it runs (or when none was started)."""
    from tl_core.service import jobs

    job = st.session_state.get(key)
    if job is None:
        return None
    if (found := jobs.result(store, job)) is not None:
        return found

    @st.fragment(run_every=1.0)
    def waiting() -> None:
        if jobs.result(store, job) is not None:
            st.rerun()  # the whole page, now with the result
        elif (why := jobs.failure(job)) is not None:
            st.session_state.pop(key, None)
            st.error(f"The {job.command} stopped without a result: {why}", icon=":material/error:")
        else:
            st.caption(f":material/hourglass_top: {job.command} running (a process of its own; it takes seconds "
                       f"to a minute)…")

    waiting()
    return None

"""What every page shares: the process's store, the router guard written once, and who is signed in
(the sign-in gate app.py puts before every page, and the name the runs they launch record)."""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from tl_core import service
from tl_core.service import auth
from tl_core.store import Job, Store

PAGES = ("new_run", "runs", "compare", "run_detail", "predict")


# --- who is signed in ------------------------------------------------------------------------------


def auth_section() -> dict:
    """The [auth] section of .streamlit/secrets.toml as a plain dict ({} when there is none)."""
    if not st.secrets.load_if_toml_exists():
        return {}
    found = st.secrets.get("auth")
    return _plain(found) if isinstance(found, Mapping) else {}


def _plain(m: Mapping) -> dict:
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in m.items()}


def _user() -> dict:
    return st.user.to_dict()


def signed_in() -> bool:
    """Whether this session has signed in the way the dashboard asks (always, with no sign-in)."""
    section = auth_section()
    how = auth.sign_in(section)
    if how == "oidc":  # a broken [auth] lets nobody in, not even a browser that signed in before
        return bool(_user().get("is_logged_in")) and auth.oidc_problem(section) is None
    return how == "none" or bool(st.session_state.get("authenticated"))


def launched_by() -> str | None:
    """The name the runs this session launches record (tl_core.service.auth.launcher): the signed-in
    person's email, nobody under the shared password, the OS user on localhost without sign-in."""
    how = auth.sign_in(auth_section())
    return auth.launcher(how, _user() if how == "oidc" else None)


def require_sign_in() -> None:
    """The gate before every page (app.py): refuses to serve the network with no sign-in, and
    stops the script at the sign-in (the identity provider's button, or the password) until the
    person is signed in."""
    section = auth_section()
    if problem := auth.serving_problem(st.get_option("server.address"), section):
        st.error(problem, icon=":material/lock:")
        st.stop()
    if signed_in():
        return
    if auth.sign_in(section) == "oidc":
        _provider_sign_in(section)
    else:
        _password_sign_in()


def _provider_sign_in(section: dict) -> None:
    if problem := auth.oidc_problem(section):
        st.error(f"Sign-in is not set up right: {problem}.", icon=":material/lock:")
        st.stop()
    st.markdown("### :material/lock: TransferLab")
    st.caption("Sign in with your team's account: the runs you launch are recorded under your name.")
    for p in auth.providers(section):
        if st.button(
            f"Sign in with {p.label}", key=f"sign_in_{p.name or 'default'}", type="primary", icon=":material/login:"
        ):
            st.login(p.name)  # None: the provider configured in [auth] itself
    st.stop()


def _password_sign_in() -> None:
    with st.form("login"):
        st.markdown("### :material/lock: TransferLab")
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            if auth.check_password(given):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    st.stop()


def sidebar_identity() -> None:
    """Who is signed in through the identity provider, and Sign out; nothing for the other sign-ins."""
    if auth.sign_in(auth_section()) != "oidc":
        return
    st.sidebar.caption(f"**Signed in as** {launched_by() or 'a user the provider did not name'}")
    st.sidebar.button("Sign out", key="sign_out", icon=":material/logout:", on_click=st.logout)


def store() -> Store:
    """The store of the dashboard's database (one connection pool per process)."""
    return service.open_store()


def through_router(page: str) -> None:
    """Send a page reached without app.py's router (a deep link on a fresh server, where Streamlit
    runs the page before any session ran the router) back through it, with its query string; so
    is a session that is no longer signed in (signed out, or its sign-in gone), to the sign-in.
    A page run on its own (AppTest) has no router to go through and carries on."""
    if st.session_state.get("_tl_router") and signed_in():
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
    """The result of the job kept in session_state[key] (service/jobs.py), shown as it runs: a line
    that checks every second until the result is stored or the job has failed, saying whether it
    waits for a GPU with room or runs, and where. None while it runs (or when none was started)."""
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
        elif (why := jobs.failure(store, job)) is not None:
            st.session_state.pop(key, None)
            st.error(f"The {job.command} stopped without a result: {why}", icon=":material/error:")
        else:
            st.caption(f":material/hourglass_top: {job.command} {_job_state(store.get_job(job.id))}…")

    waiting()
    return None


def _job_state(job: Job | None) -> str:
    """Where a job stands, in a few words."""
    if job is None or job.status != "running":
        return "queued: waiting for a worker and a GPU with room"
    where = f"on GPU {job.gpu}" if job.gpu is not None else "in a process of its own"
    by = "" if job.worker_id is None else f" (worker {job.worker_id} on {job.host})"
    return f"running {where}{by}; it takes seconds to a minute"

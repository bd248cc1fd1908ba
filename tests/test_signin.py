"""Signing in as oneself, and runs that record who launched them and where they ran (#14).

The identity provider itself is never reached: Streamlit's AppTest fakes the signed-in person
(`at.user`, which a run reads as `st.user`) and the `[auth]` section (`at.secrets`). What is
tested is ours: the gate in front of every page, the name a launch records, the Runs filter,
run detail's executor and node, and the command line's `--launched-by` and JSON.
"""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from tests.test_app import ROOT, TIMEOUT, demo_root, env, make_run, no_exception  # noqa: F401 (fixtures)
from tl_core import cli, service
from tl_core.service import auth

GOOGLE = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-string",
    "client_id": "id",
    "client_secret": "secret",
    "server_metadata_url": "https://accounts.google.com/.well-known/openid-configuration",
}
ALICE = {"is_logged_in": True, "email": "alice@example.com", "name": "Alice", "sub": "1"}


def app(auth_section: dict | None, user: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if auth_section is not None:
        at.secrets["auth"] = auth_section
    # st.user adds is_logged_in=False only for a secrets.toml on disk, never at.secrets: say it.
    at.user = user or {"is_logged_in": False}
    return at


def sign_in_buttons(at: AppTest) -> list[str]:
    return [b.label for b in at.button if b.label.startswith("Sign in with")]


# --- what is configured, and who a run records (tl_core.service.auth) ----------------------------------------


def test_the_auth_section_names_its_providers_and_what_is_missing():
    assert auth.providers(GOOGLE) == [auth.Provider(None, "Google")]
    named = {
        "redirect_uri": GOOGLE["redirect_uri"],
        "cookie_secret": "x",
        "microsoft": {k: GOOGLE[k] for k in auth.PROVIDER_KEYS},
        "okta": {
            **{k: GOOGLE[k] for k in auth.PROVIDER_KEYS},
            "server_metadata_url": "https://dev-1.okta.com/.well-known/openid-configuration",
        },
    }
    assert auth.providers(named) == [auth.Provider("microsoft", "Microsoft"), auth.Provider("okta", "Okta")]
    assert auth.oidc_problem(GOOGLE) is None and auth.oidc_problem(named) is None and auth.oidc_problem({}) is None
    assert "cookie_secret" in auth.oidc_problem({k: v for k, v in GOOGLE.items() if k != "cookie_secret"})
    assert "/oauth2callback" in auth.oidc_problem({**GOOGLE, "redirect_uri": "http://localhost:8501/"})
    assert "names no identity provider" in auth.oidc_problem(
        {"redirect_uri": GOOGLE["redirect_uri"], "cookie_secret": "x"}
    )
    lacking = auth.oidc_problem({**named, "okta": {"client_id": "id"}})
    assert "[auth.okta]" in lacking and "client_secret" in lacking and "server_metadata_url" in lacking
    assert "underscore" in auth.oidc_problem({**named, "my_idp": named["okta"]})


def test_the_identity_provider_wins_over_the_password_and_lets_the_dashboard_serve(monkeypatch):
    monkeypatch.delenv("TL_PASSWORD", raising=False)
    assert auth.sign_in({}) == "none" and "TL_PASSWORD" in auth.serving_problem("0.0.0.0", {})
    assert auth.sign_in(GOOGLE) == "oidc" and auth.serving_problem("0.0.0.0", GOOGLE) is None
    monkeypatch.setenv("TL_PASSWORD", "s3cret")
    assert auth.sign_in({}) == "password" and auth.sign_in(GOOGLE) == "oidc"


def test_who_a_launch_records_for_each_sign_in(monkeypatch):
    monkeypatch.setenv("LOGNAME", "carol")  # getpass reads it first
    assert auth.launcher("oidc", ALICE) == "alice@example.com"
    assert auth.launcher("oidc", {"is_logged_in": True, "name": "Bob", "email": " "}) == "Bob"
    assert auth.launcher("oidc", {"is_logged_in": True, "sub": "google-oauth2|42"}) == "google-oauth2|42"
    assert auth.launcher("oidc", {"is_logged_in": True}) is None
    assert auth.launcher("password") is None  # a shared password names no one
    assert auth.launcher("none") == auth.os_user() == "carol"  # localhost: as the command line records


# --- the gate in front of every page (app.py) --------------------------------------------------------


def test_signed_out_sees_only_the_sign_in_button_even_with_a_password_set(env, monkeypatch):
    monkeypatch.setenv("TL_PASSWORD", "s3cret")  # the identity provider wins: no password field
    at = no_exception(app(GOOGLE).run())
    assert sign_in_buttons(at) == ["Sign in with Google"]
    assert not at.title and not at.text_input and not at.sidebar.caption  # no page, no sidebar


def test_a_misconfigured_auth_section_keeps_everyone_out_with_what_to_fix(env):
    at = no_exception(app({**GOOGLE, "client_secret": ""}, ALICE).run())
    assert not at.title and not sign_in_buttons(at)
    assert any("client_secret" in e.value and "secrets.toml" in e.value for e in at.error)


def test_a_signed_in_person_launches_runs_that_record_them_and_can_sign_out(env):
    at = no_exception(app(GOOGLE, ALICE).run())
    assert at.title[0].value == "New run" and not sign_in_buttons(at)
    assert any("alice@example.com" in c.value for c in at.sidebar.caption)
    at = no_exception(at.button(key="launch").click().run())
    runs = env.list_runs()
    assert runs and {r.launched_by for r in runs} == {"alice@example.com"}
    # AppTest reruns the page file itself, not app.py (a pages/ folder sits beside it), so the sidebar's
    # Sign out is there on a first run only; the page then sends a signed-out session back to the gate.
    at = no_exception(app(GOOGLE, ALICE).run())
    at = no_exception(at.sidebar.button(key="sign_out").click().run())
    assert sign_in_buttons(at) == ["Sign in with Google"] and not at.title
    assert at.user == {"is_logged_in": False}  # what st.logout left


def test_without_any_sign_in_a_launch_records_the_os_user(env, monkeypatch):
    monkeypatch.setenv("LOGNAME", "carol")
    at = no_exception(AppTest.from_file(str(ROOT / "pages" / "new_run.py"), default_timeout=TIMEOUT).run())
    no_exception(at.button(key="launch").click().run())
    assert {r.launched_by for r in env.list_runs()} == {"carol"}


# --- Runs and Run detail -----------------------------------------------------------------------------


def test_runs_filters_by_who_launched(env):
    mine = [
        env.create_run({"strategy": "full", "seed": s}, "exp", f"alice-{s}", launched_by="alice@example.com")
        for s in (0, 1)
    ]
    env.create_run({"strategy": "full", "seed": 0}, "exp", "bob-0", launched_by="bob@example.com")
    env.create_run({"strategy": "full", "seed": 0}, "exp", "nobody-0")
    at = no_exception(AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=TIMEOUT).run())
    picker = at.multiselect(key="runs_launched_by")
    assert picker.options == ["alice@example.com", "bob@example.com"]
    assert len(at.dataframe[0].value) == 4
    at = no_exception(picker.set_value(["alice@example.com"]).run())
    table = at.dataframe[0].value
    assert sorted(table["name"]) == sorted(r.name for r in mine)
    assert set(table["launched_by"]) == {"alice@example.com"}


def test_run_detail_shows_who_launched_the_executor_and_the_node(env):
    queued = env.create_run({"strategy": "full", "seed": 0}, "exp", "on-ray", launched_by="alice@example.com")
    claimed = env.claim_next_queued(worker_pid=1, executor="ray")
    assert claimed.id == queued.id
    env.start_run(queued.id, pid=2, host="gpu-3", environment={"ray_node_id": "8f1c2a"}, run_dir=None)
    at = no_exception(AppTest.from_file(str(ROOT / "pages" / "run_detail.py"), default_timeout=TIMEOUT).run())
    line = next(c.value for c in at.caption if "Launched by" in c.value)
    assert "alice@example.com" in line and "gpu-3" in line and "Ray" in line and "8f1c2a" in line
    waiting = env.create_run({"strategy": "full", "seed": 1}, "exp", "waiting")
    at = AppTest.from_file(str(ROOT / "pages" / "run_detail.py"), default_timeout=TIMEOUT)
    at.query_params["run"] = str(waiting.id)
    at = no_exception(at.run())
    assert any("nobody recorded" in c.value and "not taken by a worker yet" in c.value for c in at.caption)


# --- the service and the command line ---------------------------------------------------------------


def test_queueing_and_more_seeds_record_who_asked(tiny, store):
    base = {"data": tiny, "epochs": 1, "image_size": 32, "batch_size": 8, "experiment": "e"}
    runs = service.queue_runs(store, base, ["feature_extraction"], [0], launched_by="alice@example.com")
    more = service.more_seeds(store, runs, 1, launched_by="bob@example.com")
    here = service.start_here(store, service.stored_config(runs[0]), launched_by="carol")
    assert [r.launched_by for r in runs + more] == ["alice@example.com", "bob@example.com"]
    assert (here.launched_by, here.executor) == ("carol", "here")
    row = service.run_row(store.get_run(here.id))
    assert (row["launched_by"], row["executor"], row["host"]) == ("carol", "here", here.host) and here.host


def run_cli(capsys, *args: str) -> dict:
    assert cli.main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_command_line_records_the_os_user_and_filters_by_it(tiny, store, capsys, monkeypatch):
    monkeypatch.setenv("LOGNAME", "dave")
    db = store.engine.url.render_as_string(hide_password=False)
    queued = run_cli(capsys, "run", "--data", tiny, "--epochs", "1", "--detach", "--db", db)
    store.create_run({"strategy": "full"}, "exp", "someone-else", launched_by="erin@example.com")
    runs = run_cli(capsys, "runs", "--launched-by", "dave", "--db", db)["runs"]
    assert [(r["id"], r["launched_by"], r["executor"], r["host"]) for r in runs] == [
        (queued["run_id"], "dave", None, None)
    ]
    both = run_cli(capsys, "runs", "--launched-by", "dave", "--launched-by", "erin@example.com", "--db", db)
    assert len(both["runs"]) == 2
    store.claim_next_queued(worker_pid=1, executor="local")
    store.start_run(queued["run_id"], pid=3, host="lab-1", environment={}, run_dir=None)
    shown = run_cli(capsys, "show", str(queued["run_id"]), "--db", db)
    assert (shown["launched_by"], shown["executor"], shown["host"], shown["ray_node_id"]) == (
        "dave",
        "local",
        "lab-1",
        None,
    )
    assert cli.main(["runs", "--launched-by", "nobody", "--db", db]) == 0
    assert "no runs launched by nobody" in capsys.readouterr().out

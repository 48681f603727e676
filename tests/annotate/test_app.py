"""The annotation app served as a user serves it (`activepref annotate RUN` in its own
process), driven over HTTP: authentication, CSRF, labelling, double submits, headers, and a
SIGKILLed app that loses no label."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from activepref.annotate.queue import AnnotationQueue
from tests.annotate.human_runs import add_link, form_fields, free_port, human_config, serve, start_awaiting


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    config = human_config(tmp, {"kind": "human", "options": {"labels_per_pair": 2}}, iterations=1)
    start_awaiting(config, tmp / "run")
    return tmp / "run"


def labels(run_dir):
    q = AnnotationQueue.open(run_dir)
    try:
        return q.conn.execute("SELECT task_id, annotator, choice FROM annotation_labels ORDER BY task_id, annotator").fetchall()
    finally:
        q.close()


def test_tokens_csrf_and_labels_over_http(run_dir):
    port = free_port()
    link = add_link(run_dir, "alice", port)
    app = serve(run_dir, port)
    try:
        assert httpx.get(app.url + "/").status_code == 401
        assert httpx.get(app.url + "/static/app.js").status_code == 401
        assert httpx.get(app.url + "/?token=not-a-token").status_code == 403
        assert httpx.get(app.url + "/", headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert httpx.post(app.url + "/label", data={"task_id": "1", "choice": "a"}).status_code == 401
        with httpx.Client(base_url=app.url) as client:
            first = client.get(link.replace(app.url, ""))
            assert first.status_code == 303 and first.headers["location"] == "/"  # the token leaves the address bar
            cookie = first.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            page = client.get("/")
            assert page.status_code == 200
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
            fields = form_fields(page.text)
            assert set(fields) == {"csrf_token", "task_id"}
            no_csrf = client.post("/label", data={"task_id": fields["task_id"], "choice": "a"})
            assert no_csrf.status_code == 403
            wrong = client.post("/label", data={"task_id": fields["task_id"], "choice": "a", "csrf_token": "0" * 64})
            assert wrong.status_code == 403
            assert labels(run_dir) == []
            good = {**fields, "choice": "a", "note": "clearer"}
            saved = client.post("/label", data=good)
            assert saved.status_code == 303 and saved.headers["location"] == "/?last=saved"
            again = client.post("/label", data=good)  # a double submit
            assert again.headers["location"] == "/?last=duplicate"
            bad = client.post("/label", data={**fields, "choice": "maybe"})
            assert bad.status_code == 400
            assert client.get("/static/app.js").status_code == 200
            assert client.get("/static/nothing.js").status_code == 404
            nxt = form_fields(client.get("/").text)
            assert nxt["task_id"] != fields["task_id"]  # never the same pair twice
        rows = labels(run_dir)
        assert len(rows) == 1 and rows[0][1] == "alice" and rows[0][0] == int(fields["task_id"])
    finally:
        app.stop()


def test_a_killed_app_loses_no_label_and_its_forms_stay_valid(run_dir):
    port = free_port()
    link = add_link(run_dir, "bob", port)
    app = serve(run_dir, port)
    try:
        with httpx.Client(base_url=app.url) as client:
            client.get(link.replace(app.url, ""))
            done = []
            for _ in range(3):
                fields = form_fields(client.get("/").text)
                assert client.post("/label", data={**fields, "choice": "b"}).headers["location"] == "/?last=saved"
                done.append(int(fields["task_id"]))
            pending = form_fields(client.get("/").text)  # a page open in the browser when the app dies
            app.kill()
            app = serve(run_dir, port)
            resent = client.post("/label", data={**pending, "choice": "tie"})  # the same cookie and form, new process
            assert resent.headers["location"] == "/?last=saved"
        mine = [(t, c) for t, who, c in labels(run_dir) if who == "bob"]
        assert [t for t, _ in mine] == sorted(done + [int(pending["task_id"])])
        assert sum(c == "tie" for _, c in mine) == 1
    finally:
        app.stop()

"""The annotation web app: ``activepref annotate RUN`` (Starlette + uvicorn + Jinja2).

One page: the prompt's whole conversation, the two responses side by side (A and B in an order
drawn per annotator and pair, recorded with the label) and a plain HTML form with A / B / tie /
skip and an optional note. It works without JavaScript; ``static/app.js`` only adds the keys
1 / 2 / 3 / s. Nothing is loaded from elsewhere, so it works offline.

Security model:

- every request needs an annotator's token: ``?token=`` (the personal link; it is then moved
  to an HttpOnly, SameSite=Strict cookie and dropped from the address bar), that cookie, or
  ``Authorization: Bearer``. None: 401; a wrong one: 403. Tokens are compared in constant time
  against their stored SHA-256 digests (the store never holds a token);
- every POST carries ``csrf_token`` (an HMAC of the annotator under the run's secret): else 403;
- responses are escaped text with a safe Markdown subset (:mod:`activepref.annotate.render`),
  and the Content-Security-Policy forbids inline script, other origins and framing;
- the server binds to 127.0.0.1 unless told otherwise.

Labels go straight to the run store, one transaction per submit
(:class:`~activepref.annotate.queue.AnnotationQueue`): a killed app loses nothing and a run's
loop can work on the same directory meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from activepref.annotate.queue import DEFAULT_LEASE_S, AnnotationQueue
from activepref.annotate.render import render_markdown

log = logging.getLogger(__name__)

COOKIE = "activepref_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8", "icon.svg": "image/svg+xml"}
FLASH = {
    "saved": "Saved.",
    "duplicate": "You had already labelled that pair; nothing changed.",
    "closed": "That pair got its labels from others first; yours was not needed.",
}
IDLE_REFRESH_S = 10


class AnnotationApp:
    """The app's state: the run directory, one queue connection per worker thread, templates."""

    def __init__(self, run_dir: str | Path, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.run_dir = Path(run_dir)
        self.lease_s = lease_s
        self._local = threading.local()
        self._queues: list[AnnotationQueue] = []
        self._lock = threading.Lock()
        AnnotationQueue.open(self.run_dir).close()  # fail at start on a missing or old store
        self.templates = Environment(loader=PackageLoader("activepref.annotate", "templates"), autoescape=select_autoescape(default=True))
        self.templates.filters["markdown"] = render_markdown

    def queue(self) -> AnnotationQueue:
        q = getattr(self._local, "queue", None)
        if q is None:
            q = self._local.queue = AnnotationQueue.open(self.run_dir)
            with self._lock:
                self._queues.append(q)
        return q

    def close(self) -> None:
        with self._lock:
            for q in self._queues:
                q.close()
            self._queues.clear()

    # -- helpers ---------------------------------------------------------------------------
    def _cookie_name(self, request: Request) -> str:
        # Cookies are per host, not per port: two apps on one machine must not overwrite each other's.
        return f"{COOKIE}_{request.url.port or 0}"

    def _page(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(run_name=self.run_dir.name, **context)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def _denied(self, status_code: int, message: str) -> HTMLResponse:
        return self._page("denied.html", status_code=status_code, message=message)

    async def _who(self, request: Request) -> tuple[str | None, Response | None]:
        """(annotator, None) or (None, the 401/403 page)."""
        token = request.query_params.get("token") or request.cookies.get(self._cookie_name(request))
        auth = request.headers.get("authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if not token:
            return None, self._denied(401, "Open this page with your personal link (ask the run's owner for one).")
        name = await run_in_threadpool(lambda: self.queue().annotator_for(token))
        if name is None:
            return None, self._denied(403, "This link is not valid (any more). Ask the run's owner for a new one.")
        return name, None

    # -- endpoints -------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        name, denied = await self._who(request)
        if denied is not None:
            return denied
        assert name is not None
        if "token" in request.query_params:  # the personal link: keep the token in a cookie, not the address bar
            response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
            response.set_cookie(self._cookie_name(request), request.query_params["token"], httponly=True, samesite="strict", path="/")
            return response

        def load() -> tuple[Any, dict[str, int], str]:
            q = self.queue()
            task_id = q.next_task(name, self.lease_s)
            view = q.view(task_id, name) if task_id is not None else None
            return view, q.progress(name), q.csrf_token(name)

        view, progress, csrf = await run_in_threadpool(load)
        flash = FLASH.get(request.query_params.get("last", ""))
        if view is None:
            return self._page("idle.html", annotator=name, progress=progress, flash=flash, refresh_s=IDLE_REFRESH_S)
        return self._page("task.html", annotator=name, progress=progress, flash=flash, task=view, csrf_token=csrf)

    async def label(self, request: Request) -> Response:
        name, denied = await self._who(request)
        if denied is not None:
            return denied
        assert name is not None
        form = await request.form()
        csrf = form.get("csrf_token")
        q = self.queue
        if not isinstance(csrf, str) or not await run_in_threadpool(lambda: q().check_csrf(name, csrf)):
            return self._denied(403, "The form's CSRF token is missing or wrong; reload the page and try again.")
        task, choice, note = form.get("task_id"), form.get("choice"), form.get("note") or ""
        if not isinstance(task, str) or not task.isdigit() or not isinstance(choice, str) or not isinstance(note, str):
            return self._page("denied.html", status_code=400, message="The form lacks task_id or choice.")
        try:
            result = await run_in_threadpool(lambda: q().submit(int(task), name, choice, note))
        except ValueError as exc:
            return self._page("denied.html", status_code=400, message=str(exc))
        except LookupError as exc:
            return self._page("denied.html", status_code=404, message=str(exc))
        return RedirectResponse(f"/?last={result.status}", status_code=303, headers=SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        name, denied = await self._who(request)
        if denied is not None:
            return denied
        file = request.path_params["file"]
        if file not in STATIC:
            return Response("not found", status_code=404, headers=SECURITY_HEADERS)
        body = resources.files("activepref.annotate").joinpath("static", file).read_bytes()
        return Response(body, media_type=STATIC[file], headers=SECURITY_HEADERS)


def create_app(run_dir: str | Path, lease_s: float = DEFAULT_LEASE_S) -> Starlette:
    """The ASGI app for one run directory (uvicorn serves it; tests may drive it directly)."""
    state = AnnotationApp(run_dir, lease_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.close()

    app = Starlette(
        routes=[
            Route("/", state.index, methods=["GET"]),
            Route("/label", state.label, methods=["POST"]),
            Route("/static/{file}", state.static, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.annotation = state
    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, lease_s: float = DEFAULT_LEASE_S) -> None:
    """Serve the app until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(run_dir, lease_s), host=host, port=port, log_level="warning", access_log=False)

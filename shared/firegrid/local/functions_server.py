"""Every deployed function on one local port, each under its deployed name.

``/model-centric/cycle-request`` reaches the ``model-centric`` function with
``request.path == "/cycle-request"``: DispatcherMiddleware moves the mount
into ``SCRIPT_NAME``, just as Cloud Functions keeps the function name out of
the path the function sees. One gunicorn gthread worker, like
functions-framework's own server, but with more threads, since local
handlers mostly wait on the emulators.

Run: ``python -m firegrid.local.functions_server --port P --source functions/main.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import functions_framework
import gunicorn.app.base
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

from firegrid.manifest import FUNCTIONS, FunctionSpec

COUNT_OPS_ENV = "FIREGRID_COUNT_OPS"
"""Set to a file path: count Firestore operations per route and document into it
(``firegrid.local.op_counts``)."""

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_create_app: Callable[..., WSGIApp] = functions_framework.create_app


def build_app(source: Path, specs: Iterable[FunctionSpec] = FUNCTIONS) -> WSGIApp:
    """Mount each function at ``/<name>``.

    ``create_app`` executes ``source`` once per function, so each function
    gets its own module instance (and its own lazily built clients), as
    separately deployed functions do in production.
    """
    specs = tuple(specs)
    mounts: dict[str, WSGIApp] = {
        f"/{spec.name}": _root_path_as_slash(
            _create_app(target=spec.target, source=str(source), signature_type=spec.signature)
        )
        for spec in specs
    }
    names = ", ".join(f"/{spec.name}" for spec in specs)
    not_found = Response(f"no function here; functions: {names}\n", status=404)
    return DispatcherMiddleware(not_found, mounts)


def _root_path_as_slash(app: WSGIApp) -> WSGIApp:
    """Serve ``/<name>`` itself as ``/``, as Cloud Functions does.

    DispatcherMiddleware leaves ``PATH_INFO`` empty there, and Flask would
    answer with a 308 redirect to ``/<name>/``.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return app(environ, start_response)

    return wrapped


class FunctionsServer(gunicorn.app.base.BaseApplication):  # type: ignore[misc]
    """gunicorn serving an already built WSGI app, configured from arguments only."""

    def __init__(self, app: WSGIApp, *, port: int, threads: int, access_log: bool) -> None:
        self.app = app
        self.options: dict[str, Any] = {
            "bind": f"127.0.0.1:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 0,
            "graceful_timeout": 5,
            # Clients pool connections; gunicorn's 2 s default closes idle ones under
            # them, and a request sent on a closed one is reset (Cloud Run keeps 600 s).
            "keepalive": 620,
            "loglevel": "info",
            "limit_request_line": 0,
            # gunicorn's control socket has one default path per user, which
            # two stacks (a dev stack and the tests') would fight over.
            "control_socket_disable": True,
        }
        if access_log:
            self.options["accesslog"] = "-"
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApp:
        return self.app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", type=Path, required=True, help="path of functions/main.py")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    # Built before gunicorn starts, so a broken main.py fails the process at once.
    app = build_app(args.source.resolve())
    counts_file = os.environ.get(COUNT_OPS_ENV)
    if counts_file:  # a benchmark asked for Firestore operation counts
        from firegrid.local.op_counts import counting

        app = counting(app, Path(counts_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger(__name__).info(
        "serving %s on 127.0.0.1:%d", ", ".join(f"/{spec.name}" for spec in FUNCTIONS), args.port
    )
    FunctionsServer(app, port=args.port, threads=args.threads, access_log=args.access_log).run()


if __name__ == "__main__":
    main()

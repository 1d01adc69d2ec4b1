"""Every function is served under its deployed name and sees production paths."""

from __future__ import annotations

from pathlib import Path

from werkzeug.test import Client

from firegrid.local.functions_server import build_app
from firegrid.manifest import FunctionSpec

PROBE = Path(__file__).parents[1] / "data" / "functions_probe.py"


def test_a_function_sees_the_path_below_its_name() -> None:
    app = build_app(PROBE, [FunctionSpec(name="model-centric", target="echo", signature="http")])

    response = Client(app).get("/model-centric/cycle-request?x=1")

    assert response.status_code == 200
    assert response.json == {
        "path": "/cycle-request",
        "script_root": "/model-centric",
        "method": "GET",
    }


def test_unknown_names_are_not_found() -> None:
    app = build_app(PROBE, [FunctionSpec(name="model-centric", target="echo", signature="http")])

    response = Client(app).get("/admin/anything")

    assert response.status_code == 404
    assert "/model-centric" in response.get_data(as_text=True)


def test_the_bare_name_is_the_function_root() -> None:
    app = build_app(PROBE, [FunctionSpec(name="tick", target="echo", signature="http")])

    response = Client(app).post("/tick")

    assert response.status_code == 200
    assert response.json is not None
    assert response.json["path"] == "/"

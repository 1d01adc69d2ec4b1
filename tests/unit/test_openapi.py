"""docs/openapi.yaml describes exactly the routes the functions serve."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import yaml

from firegrid.domain.config import ServerConfig
from firegrid.domain.optimizers import PARAMETERS

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete"}


def _main() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "firegrid_functions_main", ROOT / "functions/main.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _served() -> set[tuple[str, str]]:
    main = _main()
    routes = {(m, f"/model-centric{p}") for m, p in main.DEVICE_ROUTES}
    routes |= {(m, f"/admin{p}") for m, p in main.ADMIN_ROUTES}
    routes |= {(m, f"/admin{p}") for m, p in main.CONSOLE_ROUTES}
    return routes | {("POST", "/tick")}


def _described() -> dict[tuple[str, str], dict]:
    document = yaml.safe_load(SPEC.read_text())
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_the_description_lists_exactly_the_served_routes() -> None:
    assert set(_described()) == _served()


def _static(operation: dict) -> bool:
    """The console's files: no input, no credentials, nothing to refuse."""
    return operation["tags"] == ["console"]


def test_every_operation_documents_its_errors_and_no_500() -> None:
    for route, operation in _described().items():
        statuses = set(operation["responses"])
        assert any(s.startswith("2") for s in statuses), route
        assert _static(operation) or any(s.startswith("4") for s in statuses), route
        assert "500" not in statuses and "default" not in statuses, route
        assert operation.get("operationId"), route


def test_the_admin_api_is_described_as_guarded() -> None:
    for (method, path), operation in _described().items():
        guarded = (path.startswith("/admin") and not _static(operation)) or path == "/tick"
        assert bool(operation.get("security")) == guarded, (method, path)
        if guarded:
            assert "401" in operation["responses"], (method, path)


def test_the_server_config_schema_names_every_key_and_each_optimizers_parameters() -> None:
    schemas = yaml.safe_load(SPEC.read_text())["components"]["schemas"]
    keys = set(schemas["ServerConfig"]["properties"])
    assert keys == set(ServerConfig.__dataclass_fields__) | {"iterative_plan"}
    described = {
        variant["properties"]["name"]["const"]: {
            key: spec["default"] for key, spec in variant["properties"].items() if key != "name"
        }
        for variant in schemas["ServerOptimizer"]["oneOf"]
    }
    assert described == {str(name): dict(params) for name, params in PARAMETERS.items()}

"""Round statistics, the accuracy plot, and the metrics/plot verbs against a canned server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from firegrid.commands import main
from firegrid.local.serving import serving
from firegrid.plots import RoundStat, plot_accuracy, round_stats
from tests.common import write_stack_file

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKEN = "test-admin-token"


def _row(worker: str, cycle: int, accuracy: float, samples: int, **extra: Any) -> dict[str, Any]:
    row = {"client_id": worker, "cycle_id": cycle, "accuracy": accuracy, "num_samples": samples}
    return row | extra


ROWS: list[dict[str, Any]] = [
    _row("w1", 1, 0.5, 10, set="test", loss=1.0),
    _row("w2", 1, 1.0, 30, set="test", loss=2.0),
    _row("w1", 1, 0.99, 50, set="train"),
    _row("w1", 2, 0.6, 10, set="test"),
    _row("w2", 2, 0.8, 10),
    _row("w3", 2, 0.7, 20, set="test"),
]


def test_round_stats_weights_accuracy_by_samples() -> None:
    first, second = round_stats(ROWS)

    assert first.round == 1 and first.devices == 2 and first.samples == 40
    assert first.weighted_accuracy == pytest.approx((10 * 0.5 + 30 * 1.0) / 40)
    assert first.mean_loss == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    assert second.devices == 3 and second.samples == 40
    assert second.weighted_accuracy == pytest.approx((0.6 * 10 + 0.8 * 10 + 0.7 * 20) / 40)
    assert second.mean_loss is None


def test_round_stats_percentiles_span_the_devices() -> None:
    rows = [_row(f"w{i}", 3, i / 10, 1) for i in range(11)]

    (stat,) = round_stats(rows)

    assert stat.p10 == pytest.approx(0.1)
    assert stat.p90 == pytest.approx(0.9)
    assert stat.p10 <= stat.weighted_accuracy <= stat.p90


def test_train_set_rows_are_ignored_and_rounds_are_ordered() -> None:
    rows = [_row("w", 4, 0.4, 5), _row("w", 2, 0.2, 5), _row("w", 3, 0.9, 5, set="train")]

    assert [stat.round for stat in round_stats(rows)] == [2, 4]
    assert round_stats(rows[2:]) == []


def test_plot_accuracy_writes_a_png(tmp_path: Path) -> None:
    stats = round_stats(ROWS)

    out = plot_accuracy(
        stats, tmp_path / "plots" / "acc.png", title="digits", heldout=[(1, 0.4), (2, 0.7)]
    )

    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_plot_accuracy_draws_a_single_round(tmp_path: Path) -> None:
    stat = RoundStat(
        round=1, devices=1, samples=3, weighted_accuracy=0.5, p10=0.5, p90=0.5, mean_loss=None
    )

    out = plot_accuracy([stat], tmp_path / "one.png", title="one round")

    assert out.read_bytes().startswith(PNG_SIGNATURE)


class _CannedAdmin(BaseHTTPRequestHandler):
    """``admin/training-metrics`` for process mnist 1.0 only, behind the admin token."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"error": "Invalid admin token", "code": "unauthorized"})
        elif url.path != "/admin/training-metrics" or query.get("name") != "mnist":
            self._send(404, {"error": "No training process for model", "code": "unknown_process"})
        elif query.get("format") == "csv":
            self._send_text("client_id,round_number,hierarchy,num_samples,set,accuracy,loss\n")
        else:
            self._send(200, {"metrics": ROWS})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_text(self, text: str) -> None:
        payload = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _CannedAdmin)) as url:
        yield url


def test_metrics_prints_a_table_per_round(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["metrics", "mnist", "1.0", "--base-url", base_url, "--token", TOKEN]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["round", "devices", "samples"]
    assert lines[1].split() == ["1", "2", "40", "0.8750", "0.550", "0.950", "1.7500"]
    assert lines[2].split()[:4] == ["2", "3", "40", "0.7000"]
    assert lines[2].split()[-1] == "-"


def test_metrics_csv_prints_the_server_csv(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["metrics", "mnist", "1.0", "--csv", "--base-url", base_url, "--token", TOKEN]

    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("client_id,round_number,")


def test_http_errors_show_the_server_message(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = ["metrics", "cifar", "1.0", "--base-url", base_url, "--token", TOKEN]
    forbidden = ["plot", "mnist", "1.0", "--base-url", base_url, "--token", "wrong"]

    assert main(unknown) == 1
    assert "firegrid: HTTP 404: No training process for model" in capsys.readouterr().err
    assert main(forbidden) == 1
    assert "firegrid: HTTP 401: Invalid admin token" in capsys.readouterr().err


def test_an_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["metrics", "mnist", "1.0", "--base-url", "http://127.0.0.1:9", "--token", "t"]

    assert main(argv) == 1
    assert "firegrid: cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_no_stack_and_no_flags_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["metrics", "mnist", "1.0", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("firegrid: ")


def test_plot_writes_the_png_and_prints_its_path(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acc.png"
    argv = ["plot", "mnist", "1.0", "--out", str(out), "--base-url", base_url, "--token", TOKEN]

    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_connection_defaults_come_from_the_local_stack(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stack_file(tmp_path, base_url=base_url, admin_token=TOKEN, pids={})

    assert main(["metrics", "mnist", "1.0", "--dir", str(tmp_path)]) == 0
    assert "0.8750" in capsys.readouterr().out

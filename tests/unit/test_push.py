"""Push payloads follow the protocol's push table and FCM's data rules."""

from __future__ import annotations

import pytest

from firegrid.domain.push import (
    MAX_DATA_BYTES,
    PushMessage,
    PushType,
    SendReport,
    messages_to,
    push_data,
)


def test_push_types_are_the_protocol_table() -> None:
    assert [t.value for t in PushType] == [
        "request_for_cycle",
        "cycle_completed",
        "cycle_reset",
        "fl_completed",
        "worker_online_status",
    ]


def test_payload_has_every_protocol_key_as_a_string() -> None:
    data = push_data(
        PushType.REQUEST_FOR_CYCLE,
        model="mnist",
        version="1.0",
        cycle_id=7,
        cycle_start_request_key="k-7",
    )

    assert data == {
        "type": "request_for_cycle",
        "model": "mnist",
        "version": "1.0",
        "cycle_id": "7",
        "cycle_start_request_key": "k-7",
    }


def test_absent_values_are_empty_strings_not_missing_keys() -> None:
    data = push_data(PushType("worker_online_status"), model="mnist", version="1.0")

    assert data["cycle_id"] == ""
    assert data["cycle_start_request_key"] == ""
    assert len(data) == 5


def test_a_boolean_is_not_a_cycle_id() -> None:
    with pytest.raises(TypeError):
        push_data(PushType.FL_COMPLETED, model="m", version="1", cycle_id=True)


@pytest.mark.parametrize(
    ("token", "data", "error"),
    [
        ("", {"type": "x"}, ValueError),
        ("t", {"cycle_id": 3}, TypeError),
        ("t", {3: "x"}, TypeError),
        ("t", {"from": "server"}, ValueError),
        ("t", {"google.sent_time": "1"}, ValueError),
        ("t", {"gcm.x": "1"}, ValueError),
        ("t", {"": "x"}, ValueError),
        ("t", {"blob": "x" * MAX_DATA_BYTES}, ValueError),
    ],
)
def test_messages_fcm_would_refuse_are_refused_here(
    token: str, data: dict[object, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        PushMessage(token, data)  # type: ignore[arg-type]


def test_a_message_keeps_its_own_copy_of_the_data() -> None:
    data = {"type": "cycle_reset"}
    message = PushMessage("t", data)
    data["type"] = "changed"

    assert message.data == {"type": "cycle_reset"}
    with pytest.raises(TypeError):
        message.data["type"] = "changed"  # type: ignore[index]


def test_messages_to_sends_once_per_token() -> None:
    data = push_data(PushType.CYCLE_COMPLETED, model="m", version="1", cycle_id=2)

    messages = messages_to(["a", "b", "a"], data)

    assert [m.token for m in messages] == ["a", "b"]
    assert all(m.data == data for m in messages)


def test_send_report_is_a_plain_value() -> None:
    report = SendReport(sent=2, failed=1, unregistered=("gone",), errors=("boom",))

    assert report == SendReport(2, 1, ("gone",), ("boom",))

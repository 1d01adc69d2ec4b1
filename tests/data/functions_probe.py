"""Functions for the local-stack tests: echo what an HTTP function sees, and
record and decode what a Firestore-triggered function receives."""

import functions_framework
from google.events.cloud import firestore

RECEIVED: list[tuple[dict[str, str], firestore.DocumentEventData]] = []


@functions_framework.http
def echo(request):
    return {"path": request.path, "script_root": request.script_root, "method": request.method}


@functions_framework.cloud_event
def record_event(event):
    data = firestore.DocumentEventData.deserialize(event.data)
    RECEIVED.append(({key: str(value) for key, value in event.get_attributes().items()}, data))

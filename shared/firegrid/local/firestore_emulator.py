"""The Cloud Firestore emulator: find it, start it, register triggers, wipe it.

The JVM is started directly rather than through ``gcloud emulators firestore
start``, which is slower and, when killed, leaves the JVM holding the port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import requests

from firegrid.local._process import StackError
from firegrid.manifest import FunctionSpec

JAR_ENV = "FIREGRID_FIRESTORE_EMULATOR_JAR"
SDK_JAR = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
VENDOR_JAR = Path("shared/vendor/cloud-firestore-emulator/cloud-firestore-emulator.jar")
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
DATABASE = "(default)"

INSTALL_JAVA = (
    "Java not found: the Cloud Firestore emulator needs Java 17 or newer "
    "(`apt-get install openjdk-17-jre-headless`)."
)
INSTALL_EMULATOR = (
    "Cloud Firestore emulator not found. Install it with "
    "`gcloud components install cloud-firestore-emulator` "
    "(`apt-get install google-cloud-cli-firestore-emulator` if gcloud came from apt), "
    f"or set {JAR_ENV} to the path of cloud-firestore-emulator.jar."
)


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(INSTALL_JAVA)
    return java


def find_jar(repo_root: Path) -> Path:
    """The emulator jar: ``$FIREGRID_FIRESTORE_EMULATOR_JAR``, the gcloud SDK, the vendor copy."""
    explicit = os.environ.get(JAR_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise StackError(f"{JAR_ENV}={explicit} does not name a file. {INSTALL_EMULATOR}")
        return Path(explicit)
    for sdk_root in _gcloud_sdk_roots():
        if (sdk_root / SDK_JAR).is_file():
            return sdk_root / SDK_JAR
    vendored = repo_root.parent / VENDOR_JAR
    if vendored.is_file():
        return vendored
    raise StackError(INSTALL_EMULATOR)


def _gcloud_sdk_roots() -> Iterator[Path]:
    """Where gcloud's SDK is: beside its resolved binary (instant), else as
    ``gcloud info`` reports it (half a second)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return
    yield Path(gcloud).resolve().parent.parent
    try:
        result = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return
    root = result.stdout.strip()
    if root:
        yield Path(root)


def command(java: str, jar: Path, *, port: int, project_id: str, functions_host: str) -> list[str]:
    """The emulator command line; ``functions_host`` receives every trigger delivery."""
    return [
        java,
        "-Duser.language=en",
        "-cp",
        str(jar),
        MAIN_CLASS,
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--project_id={project_id}",
        f"--functions_emulator={functions_host}",
    ]


def register_triggers(host: str, project_id: str, specs: Iterable[FunctionSpec]) -> None:
    """Register each Firestore trigger; the emulator keeps them in memory only."""
    for spec in specs:
        if spec.trigger is None:
            continue
        response = requests.post(
            f"http://{host}/emulator/v1/projects/{project_id}/eventarcTrigger",
            params={"eventarcTriggerId": spec.name},
            json={
                "eventType": spec.trigger.event_type,
                "database": DATABASE,
                "namespace": DATABASE,
                "document": {"value": spec.trigger.document, "matchType": "PATH_PATTERN"},
            },
            timeout=10,
        )
        if not response.ok:
            raise StackError(
                f"registering trigger {spec.name} failed: {response.status_code} {response.text}"
            )


def delete_all_documents(host: str, project_id: str) -> None:
    """Drop every document; the emulator then sends delete events to the triggers."""
    response = requests.delete(
        f"http://{host}/emulator/v1/projects/{project_id}/databases/{DATABASE}/documents",
        timeout=30,
    )
    response.raise_for_status()

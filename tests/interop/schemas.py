"""JSON Schema validation against the ARP v1 spec schemas (files, resolved by file URI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]

SCHEMA_FILES = {
    "Health": "common/health.schema.json",
    "VersionInfo": "common/version_info.schema.json",
    "ErrorEnvelope": "common/error.schema.json",
    "RunStartRequest": "run_gateway/runs/run_start_request.schema.json",
    "Run": "core/run.schema.json",
    "RunEvent": "core/run_event.schema.json",
}


def schema_dir() -> Path:
    """The shared spec checkout next to the repo when there is one, else the identical copy of
    spec v1 (0.3.7) that arp-conformance 0.3.7 ships."""
    shared = REPO.parent / "shared" / "arp-spec" / "v1" / "schemas"
    if shared.is_dir():
        return shared
    import arp_conformance

    return Path(arp_conformance.__file__).parent / "_spec" / "v1" / "schemas"


def _load(path: Path) -> dict[str, Any]:
    contents = json.loads(path.read_text(encoding="utf-8"))
    contents.setdefault("$id", path.resolve().as_uri())
    return contents


def _retrieve(uri: str) -> Resource:
    if not uri.startswith("file://"):
        raise LookupError(f"refusing to fetch {uri}")
    path = Path(uri[len("file://") :])
    return Resource.from_contents(_load(path), default_specification=DRAFT202012)


class Schemas:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or schema_dir()
        registry: Registry = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
        self._validators = {}
        for name, rel in SCHEMA_FILES.items():
            schema = _load(self.root / rel)
            self._validators[name] = Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())

    def errors(self, name: str, instance: Any) -> list[str]:
        out = []
        for err in sorted(self._validators[name].iter_errors(instance), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            out.append(f"{where}: {err.message}")
        return out


def strip_nulls(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """Drops object members whose value is null; returns the copy and the paths dropped."""
    dropped: list[str] = []
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            here = f"{path}/{key}" if path else key
            if item is None:
                dropped.append(here)
                continue
            out[key], more = strip_nulls(item, here)
            dropped.extend(more)
        return out, dropped
    if isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            new, more = strip_nulls(item, f"{path}/{i}")
            items.append(new)
            dropped.extend(more)
        return items, dropped
    return value, dropped

"""The pages in docs/ that restate the code are kept in step with it."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from pydantic import BaseModel

from proxy.config import Settings
from proxy.control_api import ROUTES
from proxy.openapi import document

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

Key = tuple[str, ...]


def settings_keys(model: type[BaseModel] = Settings, prefix: Key = ()) -> list[Key]:
    """Every setting as (section, ..., key), nested sections walked."""
    keys: list[Key] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(settings_keys(annotation, (*prefix, name)))
        else:
            keys.append((*prefix, name))
    return keys


def toml_literals() -> dict[Key, str]:
    """Each key's value as written in config/warmproxy.toml (comments dropped)."""
    literals: dict[Key, str] = {}
    section: Key = ()
    for line in (ROOT / "config" / "warmproxy.toml").read_text().splitlines():
        if header := re.fullmatch(r"\[([\w.]+)\]\s*", line):
            section = tuple(header.group(1).split("."))
        elif assignment := re.fullmatch(r"(\w+)\s*=\s*(.+?)\s*", line):
            rest = assignment.group(2)
            # The shortest prefix before a '#' that is a whole TOML value.
            cuts = sorted(
                {rest, *(rest[:i].strip() for i, c in enumerate(rest) if c == "#")}, key=len
            )
            for value in cuts:
                try:
                    tomllib.loads(f"v = {value}")
                except tomllib.TOMLDecodeError:
                    continue
                literals[(*section, assignment.group(1))] = value
                break
    return literals


def documented_rows() -> dict[Key, tuple[str, str]]:
    """(section, ..., key) -> (default, environment variable) from docs/configuration.md."""
    rows: dict[Key, tuple[str, str]] = {}
    section: Key | None = None
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if heading := re.match(r"#{2,4} `\[([\w.]+)\]`", line):
            section = tuple(heading.group(1).split("."))
            continue
        if line.startswith("#"):
            section = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section is None or len(cells) < 4 or not cells[2].startswith("`WARMPROXY_"):
            continue
        key = (*section, cells[0].strip("`"))
        assert key not in rows, f"{'.'.join(key)} documented twice"
        rows[key] = (cells[1], cells[2])
    return rows


def test_configuration_page_lists_every_setting_with_its_default_and_variable() -> None:
    keys = settings_keys()
    literals = toml_literals()
    rows = documented_rows()
    assert sorted(set(rows) - set(keys)) == [], "documented settings that do not exist"
    for key in keys:
        dotted = ".".join(key)
        assert key in literals, f"{dotted} is missing from config/warmproxy.toml"
        assert key in rows, f"{dotted} is missing from docs/configuration.md"
        default, variable = rows[key]
        assert default == f"`{literals[key]}`", f"{dotted}: default as in the TOML file"
        assert variable == f"`WARMPROXY_{'__'.join(key).upper()}`", dotted


def test_committed_openapi_document_is_current() -> None:
    committed = json.loads((DOCS / "openapi.json").read_text())
    generated = json.loads(json.dumps(document()))
    assert committed == generated, (
        "docs/openapi.json is out of date; regenerate it with "
        "`python -m proxy.openapi > docs/openapi.json`"
    )


def test_api_page_describes_every_route() -> None:
    page = (DOCS / "api.md").read_text()
    for method, path, _ in ROUTES:
        if path.endswith("/openapi.json"):
            assert f"`GET {path}`" in page
            continue
        assert f"### `{method} {path}`" in page, f"{method} {path} is not in docs/api.md"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f"`GET {path}`" in page

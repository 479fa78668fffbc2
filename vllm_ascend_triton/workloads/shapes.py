"""The real-model shapes file (`shapes.toml` beside this module, or one given with `--shapes`)."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_SHAPES_FILE = Path(__file__).resolve().parent / "shapes.toml"


@dataclasses.dataclass(frozen=True)
class ModelShape:
    name: str  # the table name, e.g. "llama3_8b"
    label: str  # e.g. "Llama-3-8B"
    params: Mapping[str, Any]

    def get(self, field: str, default: Any = None) -> Any:
        return self.params.get(field, default)

    def has(self, *fields: str) -> bool:
        return all(f in self.params for f in fields)


@dataclasses.dataclass(frozen=True)
class ShapeSet:
    models: tuple[ModelShape, ...]
    tokens: Mapping[str, Any]
    path: str

    def token_counts(self, which: str) -> list[int]:
        values = self.tokens.get(which)
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int) and v >= 1 for v in values)
        ):
            raise ValueError(f"{self.path}: [tokens] {which} must be a non-empty list of positive ints")
        return list(values)

    def model(self, name: str) -> ModelShape:
        for m in self.models:
            if m.name == name:
                return m
        raise ValueError(f"{self.path}: no model {name!r}; known: {', '.join(m.name for m in self.models)}")


def load_shapes(path: str | Path | None = None) -> ShapeSet:
    """Parse a shapes file; a ValueError names the file and what is wrong."""
    path = Path(path) if path is not None else DEFAULT_SHAPES_FILE
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the shapes file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the shapes file {path} is not valid TOML: {exc}") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path}: needs [models.<name>] tables")
    out = []
    for name, params in models.items():
        if not isinstance(params, dict):
            raise ValueError(f"{path}: models.{name} must be a table")
        out.append(ModelShape(name, str(params.get("label", name)), dict(params)))
    tokens = data.get("tokens", {})
    if not isinstance(tokens, dict):
        raise ValueError(f"{path}: [tokens] must be a table")
    return ShapeSet(tuple(out), tokens, str(path))

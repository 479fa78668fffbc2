"""The one parser of this package's on/off switches (``VAT_*``, ``VLLM_ASCEND_BALANCE_SCHEDULING``).

Every switch accepts the same spellings, case-insensitively: ``1/true/yes/on`` mean on,
``0/false/no/off`` mean off, unset or empty means the switch's default. Anything else is a
``ValueError`` naming the variable, so a typo never silently means "off".

These are read when something is built (a plugin registration, a scheduler, a backend choice),
never per kernel launch: the serving path reads no environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def parse_flag(value: Any, name: str, default: bool = False) -> bool:
    """``value`` (a string, bool, int or None) as on/off; ``name`` is used in the error."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")
    raw = str(value).strip().lower()
    if not raw:
        return default
    if raw in ON:
        return True
    if raw in OFF:
        return False
    raise ValueError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def flag(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """The on/off switch ``name`` from the environment (or ``environ``)."""
    env = os.environ if environ is None else environ
    return parse_flag(env.get(name), name, default)


def flag_or_none(name: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """The switch ``name``, or None when it is unset or empty (the caller's own default applies)."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return parse_flag(raw, name)

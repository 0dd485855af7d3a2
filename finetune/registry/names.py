"""Names in the model registry: model names, aliases, and `registry:NAME@REF` references.

A name becomes a folder (`<registry>/<NAME>/`) and an alias a key in the audit log, so both are
checked here before they touch a path: letters, digits, `_`, `-` and `.`, starting with a letter
or digit, at most 100 characters; no `..`, no separators, no control characters. `check_name` is
the one function that says so; other modules that turn a user's word into a path can call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune.errors import UserError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
VERSION_PATTERN = re.compile(r"v([1-9][0-9]*)")
# `finetune run` ids (20261124-101500-ab12) and nightly ids (20261124-nightly-ab12cd34[-...]).
RUN_ID_PATTERN = re.compile(r"\d{8}-(\d{6}-[0-9a-f]{4}|nightly-[0-9a-f]{8}(-[0-9a-z]+)?)")
CHAMPION = "champion"
LATEST = "latest"


def name_problem(value: object) -> str | None:
    """What is wrong with `value` as a registry name or alias, or None when it is fine."""
    if not isinstance(value, str) or not value:
        return "expected a non-empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "expected no control characters"
    if "/" in value or "\\" in value or ".." in value:
        return "expected no path separators and no '..'"
    if not NAME_PATTERN.fullmatch(value):
        return "expected letters, digits, '_', '-' or '.', starting with a letter or digit, at most 100 characters"
    return None


def check_name(value: object, what: str) -> str:
    """`value` if it is a safe registry name or alias, else a UserError naming `what` (the field
    or argument it came from)."""
    problem = name_problem(value)
    if problem:
        raise UserError(f"{what}: {value!r} is not a usable name; {problem}.")
    return value


def check_alias(value: object, what: str) -> str:
    """An alias: a safe name that does not look like a version (`v3`) or the word `latest`, which
    references already mean something else."""
    check_name(value, what)
    if VERSION_PATTERN.fullmatch(value) or value == LATEST or RUN_ID_PATTERN.fullmatch(value):
        raise UserError(f"{what}: {value!r} cannot be an alias: it reads as a version, a run id or 'latest'. "
                        "Pick a word such as champion, staging or canary.")
    return value


@dataclass(frozen=True)
class Reference:
    """`registry:NAME@REF`: a registry version (`v3`), an alias (`champion`, `staging`), the newest
    finished run (`latest`) or a run id."""

    name: str
    ref: str

    @property
    def kind(self) -> str:
        if VERSION_PATTERN.fullmatch(self.ref):
            return "version"
        if self.ref == LATEST or RUN_ID_PATTERN.fullmatch(self.ref):
            return "run"
        return "alias"

    def __str__(self) -> str:
        return f"registry:{self.name}@{self.ref}"


def parse_reference(text: str, what: str = "model.base") -> Reference:
    """`registry:NAME@REF` or `NAME@REF` (the CLI's form); `NAME` alone means `NAME@champion`."""
    name, sep, ref = text.removeprefix("registry:").partition("@")
    check_name(name, what)
    ref = ref if sep else CHAMPION
    check_name(ref, what)
    return Reference(name, ref)

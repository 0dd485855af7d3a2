"""Names that become one part of a path: a job's name (the folder of its runs), a run id, a
registry name or alias. A hostile name is refused, never sanitised into a surprise: no `..`, no
separators, no control characters, nothing but letters, digits, `_`, `-` and `.`.

Imports nothing heavy: job validation uses it, and so can the model registry.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 100
# The pattern the JSON Schema gives editors; name_problem says more (no '..', what was wrong).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_NAME = re.compile(NAME_PATTERN)


def name_problem(value: object) -> str | None:
    """None when `value` may be used as one part of a path as it is; else what was expected."""
    if not isinstance(value, str):
        return "expected a name (text)"
    if not value:
        return "expected a name that is not empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"expected a name of at most {MAX_NAME_LENGTH} characters"
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        return "expected a name without control characters (a newline, a tab, a NUL byte...)"
    if "/" in value or "\\" in value:
        return "expected a name without '/' or '\\': a name is one folder, not a path"
    if ".." in value:
        return "expected a name without '..' (it would name a parent folder)"
    if not _NAME.fullmatch(value):
        return "expected letters, digits, '_', '-' or '.', starting with a letter or digit"
    return None


def check_name(value: object, field: str) -> str:
    """`value` if it is a usable name, else a UserError naming the field, the value and the rule."""
    problem = name_problem(value)
    if problem is not None:
        from finetune.errors import UserError

        raise UserError(f"{field}: {value!r} is not a usable name; {problem}.")
    return value

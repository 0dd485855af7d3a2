"""Names in the model registry: model names, aliases, and `registry:NAME@REF` references.

A name becomes a folder (`<registry>/<NAME>/`) and an alias a key in the audit log, so both are
checked before they touch a path, by the same rule as a job's name (`finetune.job.names`, the one
place that says what a name may be). This module adds what only the registry knows: versions,
aliases and references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune.errors import UserError
from finetune.job.names import check_name

VERSION_PATTERN = re.compile(r"v([1-9][0-9]*)")
# `finetune run` ids (20261124-101500-ab12) and nightly ids (20261124-nightly-ab12cd34[-...]).
RUN_ID_PATTERN = re.compile(r"\d{8}-(\d{6}-[0-9a-f]{4}|nightly-[0-9a-f]{8}(-[0-9a-z]+)?)")
CHAMPION = "champion"
LATEST = "latest"


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

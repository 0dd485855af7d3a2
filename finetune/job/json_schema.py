"""The JSON Schema of job files, generated from the pydantic models of `finetune.job.schema`, for
editors that complete and check YAML as it is typed (yaml-language-server reads the
`# yaml-language-server: $schema=...` comment at the top of a job file).

The models validate a job after `finetune.job.loading` has merged its `extends:` chain and read
the short forms the models accept before validation (`scheduler: none`, `rescale: 1/255`); the
schema describes the file as a person writes it, so it adds those forms. `finetune schema` prints
it; the package ships it as `finetune/finetune-job.schema.json` (a test keeps the two equal).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from finetune.job.schema import Job, scheduler_types
from finetune.search_space import DOMAIN_KINDS

SCHEMA_FILE = "finetune-job.schema.json"  # inside the finetune package
SCHEMA_ID = "https://finetune.invalid/finetune-job.schema.json"  # a name, not a place: nothing is fetched

_NUMBER = {"type": "number"}
_FRACTION = {"type": "string", "pattern": r"^\s*[0-9]*\.?[0-9]+\s*/\s*[0-9]*\.?[0-9]+\s*$",
             "description": "a fraction such as 1/255"}


def job_json_schema() -> dict[str, Any]:
    schema = copy.deepcopy(Job.model_json_schema())
    definitions = schema["$defs"]
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
              "title": "finetune job", **schema}
    schema["description"] = ("A finetune job file: a data set, a base model, how to train it and a search space. "
                             "Generated from finetune.job.schema; `finetune schema` prints it.")
    # `extends:` is read before validation (finetune.job.loading); a job that extends another may
    # leave `name` to it.
    schema["properties"] = {"extends": {"type": "string", "description": (
        "another job file this one starts from (relative to this file's folder); this file states only "
        "what differs, merged over it field by field")}, **schema["properties"]}
    schema.pop("required", None)
    schema["anyOf"] = [{"required": ["name"]}, {"required": ["extends"]}]

    # `scheduler: none` as a bare name (SearchSpec._scheduler_by_name).
    search = definitions["SearchSpec"]["properties"]
    scheduler = search["scheduler"]
    union = {key: scheduler.pop(key) for key in ("oneOf", "discriminator") if key in scheduler}
    scheduler["anyOf"] = [union, {"enum": list(scheduler_types()),
                                  "description": "a scheduler by name, with its defaults"}]

    # `rescale: 1/255` (DatasetSpec._rescale_fraction).
    rescale = definitions["DatasetSpec"]["properties"]["rescale"]
    rescale["anyOf"] = [*rescale["anyOf"], _FRACTION]

    # Search-space entries: a dotted path under model. or train., and a domain or a fixed value.
    search["space"]["propertyNames"] = {"pattern": r"^(model|train)\.[A-Za-z0-9_.]+$"}
    search["space"]["additionalProperties"] = {"$ref": "#/$defs/SearchEntry"}
    definitions["SearchEntry"] = _search_entry()
    definitions["Domain"] = _domain()
    return schema


def _domain() -> dict[str, Any]:
    pair = {"type": "array", "prefixItems": [_NUMBER, _NUMBER], "minItems": 2, "maxItems": 2}
    kinds = {
        "choice": {"type": "array", "minItems": 1, "description": "one of these values, sampled"},
        "grid": {"type": "array", "minItems": 1,
                 "description": "every one of these values, each in its own trials (multiplies the trials)"},
        "uniform": {**pair, "description": "[low, high], uniformly"},
        "loguniform": {**pair, "description": "[low, high], uniformly on a log scale (low > 0)"},
        "randint": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}], "minItems": 2,
                    "maxItems": 2, "description": "[low, high], whole numbers, both included"},
        "quniform": {"type": "array", "prefixItems": [_NUMBER, _NUMBER, _NUMBER], "minItems": 3, "maxItems": 3,
                     "description": "[low, high, step], uniformly, rounded to a multiple of step"},
    }
    when = {"type": "object", "minProperties": 1, "description": (
        "sample this entry only in trials where each named field holds one of these values; "
        "others keep the field's value"), "additionalProperties": {}}
    return {"description": "a search domain", "oneOf": [
        {"type": "object", "properties": {kind: spec, "when": when}, "required": [kind],
         "additionalProperties": False} for kind, spec in kinds.items()]}


def _search_entry() -> dict[str, Any]:
    """A domain, or any other value, which every trial then takes (a fixed value). An object that
    names a domain kind must be that domain."""
    names_a_domain = {"type": "object", "anyOf": [{"required": [kind]} for kind in DOMAIN_KINDS]}
    return {"description": "a search domain ({choice: [...]}, {loguniform: [low, high]}, ...) or a fixed value",
            "if": names_a_domain, "then": {"$ref": "#/$defs/Domain"}}


def schema_text() -> str:
    return json.dumps(job_json_schema(), indent=2) + "\n"


def shipped_schema_text() -> str:
    """The schema file shipped in the package, as editors read it."""
    return resources.files("finetune").joinpath(SCHEMA_FILE).read_text()

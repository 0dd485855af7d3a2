"""The job file: what it may contain (`schema`), how it is read (`loading`: `extends:`, `--set`),
and how it is checked (`validation`: every problem at once, with its field path)."""

from finetune.job.dotted import set_path
from finetune.job.loading import load_job, parse_override, to_yaml
from finetune.job.paths import check_inputs_exist, local_inputs
from finetune.job.schema import (
    AugmentSpec,
    DatasetSpec,
    HeadSpec,
    Job,
    ModelSpec,
    SearchSpec,
    TrainSpec,
)
from finetune.job.validation import validate_job_dict

__all__ = ["AugmentSpec", "DatasetSpec", "HeadSpec", "Job", "ModelSpec", "SearchSpec", "TrainSpec",
           "check_inputs_exist", "load_job", "local_inputs", "parse_override", "set_path", "to_yaml",
           "validate_job_dict"]

"""Full-batch conjugate gradient and L-BFGS (`train.optimizer: cg | lbfgs`): the classic way to fit
a small model, for tabular data or a new head on a frozen base, with data held in memory.

`scipy.optimize.minimize` (`method="CG"` or `"L-BFGS-B"`) runs over the flattened trainable
weights. The loss and its gradient over the whole training split come from one compiled TensorFlow
function, which walks the split in chunks and returns sums. Under N Ray Train workers each worker
sums its own rows, the sums are all-reduced, and every worker runs the same deterministic
iteration on the same numbers, so the weights stay identical on every worker.

One epoch is one `minimize` call of `optimizer_args.iterations` iterations (default 20) from the
current weights: L-BFGS's curvature pairs and CG's search direction restart each epoch (restarted
CG and L-BFGS), so a trial restarted from its checkpoint goes on exactly as it would have. The
model is built in float64 for these methods (their line searches need the precision, and the sums
of 1 and N workers then agree to about 1e-12), and evaluated in inference mode (dropout off,
BatchNorm on its moving statistics): a line search needs the same function at every call.

Nothing at module level imports TensorFlow: the job's validation asks this module what cg and
lbfgs accept and ignore.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from finetune.job.schema import FULL_BATCH_OPTIMIZERS, HeadSpec, TrainSpec

SCIPY_METHODS = {"cg": "CG", "lbfgs": "L-BFGS-B"}
DEFAULT_ITERATIONS = 20
# scipy.optimize.minimize options each method takes from train.optimizer_args, besides iterations.
METHOD_OPTIONS = {"cg": {"gtol": float}, "lbfgs": {"gtol": float, "ftol": float, "maxcor": int}}
# Rows per chunk of the full-batch sums: bounds the activations held at once, not the result.
CHUNK_ROWS = 4096

# Fields a Keras optimizer uses and a full-batch method does not, with why.
_KERAS_ONLY = {
    "train.learning_rate": "the line search chooses each step",
    "train.learning_rate_schedule": "the line search chooses each step",
    "train.warmup_epochs": "the line search chooses each step",
    "train.decay_rate": "the line search chooses each step",
    "train.step_epochs": "the line search chooses each step",
    "train.weight_decay": "a Keras optimizer's decoupled decay; add a kernel regularizer to the model instead",
    "train.clipnorm": "the line search bounds each step",
    "train.batch_size": "every iteration sees the whole training split",
    "train.jit_compile": "the full-batch function is compiled without XLA",
    "train.augment": "the model is evaluated in inference mode, where augmentation layers are inactive",
    "model.head.dropout": "the model is evaluated in inference mode, so that a line search sees one function",
}


def full_batch_choices(job) -> list[str]:
    """The full-batch methods a job's trials may use: its train.optimizer, or the options of a
    search-space entry for it."""
    options = [job.train.optimizer]
    entry = job.search.space.get("train.optimizer")
    if isinstance(entry, dict):
        for values in (entry.get("choice"), entry.get("grid")):
            options.extend(values or [])
    return [o for o in dict.fromkeys(str(v).lower() for v in options) if o in FULL_BATCH_OPTIMIZERS]


def may_use_full_batch(job) -> bool:
    return bool(full_batch_choices(job))


def argument_problems(method: str, arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """(argument, what was expected) for the arguments of cg or lbfgs that are out of range. Other
    arguments (a Keras optimizer's momentum, say) are ignored: see `ignored_fields`."""
    problems = []
    iterations = arguments.get("iterations", DEFAULT_ITERATIONS)
    if not (isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1):
        problems.append(("iterations", f"expected a whole number >= 1: {method} iterations per epoch"))
    for name, kind in METHOD_OPTIONS[method].items():
        if name not in arguments:
            continue
        value = arguments[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value <= 0 or (kind is int and not isinstance(value, int)):
            problems.append((name, f"expected a {'whole ' if kind is int else ''}number > 0 (scipy's {name})"))
    return problems


def ignored_fields(job) -> dict[str, str]:
    """Field -> why, for the fields a trial with train.optimizer cg or lbfgs ignores: those set to
    other than their defaults, or varied by the search space. Empty when the job uses no
    full-batch method. (For `finetune run`'s start-up note and the plan of a job.)"""
    methods = full_batch_choices(job)
    if not methods:
        return {}
    train_defaults, head_defaults = TrainSpec(), HeadSpec()
    ignored = {}
    for path, why in _KERAS_ONLY.items():
        section, _, name = path.partition(".")
        if section == "train":
            differs = getattr(job.train, name) != getattr(train_defaults, name)
        else:
            differs = job.model.head.dropout != head_defaults.dropout
        if differs or path in job.search.space:
            ignored[path] = why
    accepted = {"iterations", *(name for m in methods for name in METHOD_OPTIONS[m])}
    for name in job.train.optimizer_args:
        if name not in accepted:
            ignored[f"train.optimizer_args.{name}"] = f"not an argument of {' or '.join(methods)}"
    for path in job.search.space:
        if path.startswith("train.optimizer_args.") and path.rpartition(".")[2] not in accepted:
            ignored[path] = f"not an argument of {' or '.join(methods)}"
    return ignored


def ignored_fields_note(job) -> str | None:
    """One line for the start of a run: which fields cg/lbfgs trials ignore."""
    ignored = ignored_fields(job)
    if not ignored:
        return None
    methods = " and ".join(full_batch_choices(job))
    return f"note: {methods} trials ignore " + "; ".join(f"{path} ({why})" for path, why in ignored.items())


def check_data_fits(job, streaming: bool) -> None:
    """cg and lbfgs need the training split held in memory; data too large for that streams."""
    from finetune.errors import UserError

    methods = full_batch_choices(job)
    if methods and streaming:
        raise UserError(
            f"train.optimizer: {' and '.join(methods)} compute the loss over the whole training split at every "
            "iteration, but this data streams (it is too large to hold in memory as model inputs, or "
            "dataset.in_memory is false). Use a Keras optimizer such as adam, or less data.")


class FullBatchMinimizer:
    """scipy.optimize.minimize over a model's trainable weights, one epoch at a time.

    features, labels: this worker's rows of the training split (labels as the loss takes them);
    all_reduce: sums a tensor over the workers (identity for one worker)."""

    def __init__(self, model, loss_fn: Callable, metric_fns: list, features, labels, all_reduce: Callable,
                 method: str, arguments: dict[str, Any]):
        import tensorflow as tf

        from finetune.train_step import batch_sums

        self.model, self.method, self.all_reduce = model, method, all_reduce
        self.iterations = int(arguments.get("iterations", DEFAULT_ITERATIONS))
        self.options = {name: kind(arguments[name]) for name, kind in METHOD_OPTIONS[method].items()
                        if name in arguments}
        self.variables = list(model.trainable_variables)
        self.sizes = [int(v.shape.num_elements()) for v in self.variables]
        self.num_sums = len(metric_fns) + 2  # loss, each metric, rows
        self.evaluations = 0
        self.first_evaluation_at: float | None = None
        features, labels = tf.constant(features), tf.constant(labels)
        rows = int(features.shape[0])
        variables, num_sums, size = self.variables, self.num_sums, sum(self.sizes)

        def assign(flat):
            for variable, piece in zip(variables, tf.split(flat, self.sizes)):
                variable.assign(tf.cast(tf.reshape(piece, variable.shape), variable.dtype))

        @tf.function(autograph=False)
        def local_sums(flat):
            """[loss sum, metric sums, rows, gradient of the loss sum] over this worker's rows."""
            assign(flat)

            def body(start, totals, gradient):
                end = tf.minimum(start + CHUNK_ROWS, rows)
                x, y = features[start:end], labels[start:end]
                with tf.GradientTape() as tape:
                    predictions = model(x, training=False)
                    per_example = loss_fn(y, predictions)
                    loss_sum = tf.reduce_sum(tf.cast(per_example, tf.float64))
                grads = tape.gradient(loss_sum, variables)
                flat_grads = tf.concat([tf.reshape(tf.cast(g if g is not None else tf.zeros_like(v), tf.float64), [-1])
                                        for g, v in zip(grads, variables)], 0)
                return end, totals + batch_sums(y, predictions, per_example, metric_fns), gradient + flat_grads

            start = (tf.constant(0), tf.zeros(num_sums, tf.float64), tf.zeros(size, tf.float64))
            _, totals, gradient = tf.while_loop(lambda s, *_: s < rows, body, start)
            return tf.concat([totals, gradient], 0)

        @tf.function(autograph=False)
        def regularization(flat):
            """The model's own regularization losses (kernel regularizers) and their gradient: the
            same on every worker, added once after the all-reduce."""
            assign(flat)
            with tf.GradientTape() as tape:
                penalty = tf.cast(tf.add_n(model.losses), tf.float64)
            grads = tape.gradient(penalty, variables)
            return tf.concat([[penalty], *[tf.reshape(tf.cast(g if g is not None else tf.zeros_like(v), tf.float64), [-1])
                                           for g, v in zip(grads, variables)]], 0)

        self._local_sums = local_sums
        self._regularization = regularization if model.losses else None

    def weights(self):
        import numpy as np

        return np.concatenate([v.numpy().astype(np.float64).ravel() for v in self.variables])

    def evaluate(self, flat) -> tuple[float, Any, Any]:
        """(mean loss plus regularization, its gradient, the summed [loss, metrics, rows]) at `flat`,
        over every worker's rows; leaves the model's weights at `flat`."""
        import tensorflow as tf

        self.evaluations += 1
        point = tf.constant(flat, tf.float64)
        total = self.all_reduce(self._local_sums(point)).numpy()
        if self.first_evaluation_at is None:
            self.first_evaluation_at = time.time()
        sums, gradient = total[:self.num_sums], total[self.num_sums:]
        rows = max(sums[-1], 1.0)
        loss, gradient = sums[0] / rows, gradient / rows
        if self._regularization is not None:
            penalty = self._regularization(point).numpy()
            loss, gradient = loss + penalty[0], gradient + penalty[1:]
        return float(loss), gradient, sums

    def run_epoch(self) -> tuple[Any, dict]:
        """`iterations` iterations from the current weights. Returns the summed [loss, metrics, rows]
        at the weights it ends on (the model holds them) and scipy's counts."""
        from scipy.optimize import minimize

        evaluations_before = self.evaluations
        result = minimize(lambda flat: self.evaluate(flat)[:2], self.weights(), jac=True,
                          method=SCIPY_METHODS[self.method], options={"maxiter": self.iterations, **self.options})
        _, _, sums = self.evaluate(result.x)
        return sums, {"iterations": int(result.nit), "function_evaluations": self.evaluations - evaluations_before}

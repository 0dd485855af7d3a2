"""The name lists that let a job validate without TensorFlow match the installed Keras."""

import keras

from finetune import _compat, keras_names

REGISTERED = _compat.registered_keras_names()
ACTIVATIONS, LOSSES, OPTIMIZERS = REGISTERED["activations"], REGISTERED["losses"], REGISTERED["optimizers"]


def test_every_listed_optimizer_builds_and_none_is_missing():
    for name in keras_names.OPTIMIZERS:
        assert isinstance(keras.optimizers.get(name), keras.optimizers.Optimizer), name
    known = {k for k in OPTIMIZERS if k.islower()} - {"optimizer", "lossscaleoptimizer", "multioptimizer",
                                                      "optimizermap"}
    assert known == set(keras_names.OPTIMIZERS)


def test_every_listed_loss_and_activation_resolves():
    for name in keras_names.LOSSES:
        assert callable(keras.losses.get(name)), name
    assert {k for k in LOSSES if k.islower()} - {"ctc", "circle"} <= set(keras_names.LOSSES)
    for name in keras_names.ACTIVATIONS:
        assert callable(keras.activations.get(name)), name
    assert {k for k in ACTIVATIONS if k.islower()} == set(keras_names.ACTIVATIONS)


def test_every_listed_application_exists_and_none_is_missing():
    names = {n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n))}
    assert names == set(keras_names.APPLICATIONS)

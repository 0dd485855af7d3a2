"""Importing TensorFlow in a benchmark's own process without its start-up lines on the terminal."""

from __future__ import annotations

import os
import tempfile


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up lines (absl and CUDA-probe messages that no setting
    silences) kept off the user's terminal; shown only if the import fails."""
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery prints too
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf

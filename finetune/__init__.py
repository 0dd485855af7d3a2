"""finetune: fine-tune and tune Keras 3 models on Ray from one job file."""

__version__ = "0.1.0"

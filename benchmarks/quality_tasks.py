"""The tasks of the learning-quality benchmark: built from data the project already installs (PyPI wheels), in
``peft_ext.cli.tasks``, which ``peft-ext eval --write-tasks`` also writes as lm-evaluation-harness tasks."""

from peft_ext.cli.tasks import TASKS, Task

__all__ = ["TASKS", "Task"]

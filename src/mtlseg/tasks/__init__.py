"""Tasks by registry kind; importing this package registers the shipped ones."""

from mtlseg.tasks import (  # noqa: F401  (registers the tasks)
    geometry,
    hog,
    image_level,
    segmentation,
    selfsup,
    slices,
)
from mtlseg.tasks.base import TASKS, Task, TaskContext, build_task, register_task

__all__ = ["TASKS", "Task", "TaskContext", "build_task", "register_task"]

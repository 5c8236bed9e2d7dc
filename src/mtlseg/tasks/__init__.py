"""Tasks by registry kind; importing this package registers every task module in it."""

from mtlseg.registry import import_submodules
from mtlseg.tasks.base import TASKS, Task, TaskContext, build_task, register_task

import_submodules(__name__)

__all__ = ["TASKS", "Task", "TaskContext", "build_task", "register_task"]

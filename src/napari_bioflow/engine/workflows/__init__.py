"""Workflows plug into the trainer and predictor through the small `Workflow` interface (see base.py)."""

from .base import Workflow, get_workflow, list_workflows, register_workflow

__all__ = ["Workflow", "get_workflow", "register_workflow", "list_workflows"]

"""Render: views of a report (terminal renderables with rich, JSON). Views never import torch and never compute."""

from gradscope.render.check import CheckView
from gradscope.render.grads import GradsView, OverfitView, VerifyView
from gradscope.render.inspect import InspectView, RolesView
from gradscope.render.json import roles_to_json, to_json
from gradscope.render.scan import ScanView

__all__ = [
    "CheckView",
    "GradsView",
    "InspectView",
    "OverfitView",
    "RolesView",
    "ScanView",
    "VerifyView",
    "roles_to_json",
    "to_json",
]

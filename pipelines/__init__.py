"""Pipelines: routing, image processing, orchestration of models, report building. `flow.py` shows the whole path."""

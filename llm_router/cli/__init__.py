"""The ``llm-router`` command: the one composition root, and the only package that imports both the
producer and the worker.

``main`` parses the command line (``main.py``); each group of commands lives in a module of its own:
money (credits, usage, compare), serve (the HTTP API and its keys), demo, models.
"""

from llm_router.cli.main import main

__all__ = ["main"]

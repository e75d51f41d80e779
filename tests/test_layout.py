"""The direction of imports, as the README's layout draws it.

The core (``llm_router``) imports nothing of ours but ``config``; ``config`` imports nothing of ours;
``producer`` and ``worker`` never import each other; provider adapters import only the core; the
simulator imports nothing of ours; only the CLI (``llm_router.cli``) composes producer and worker.
Every ``import`` counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("llm_router", "producer", "worker", "config")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return out


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def imports_of(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from llm_router import cli` imports the submodule llm_router.cli
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if _ours(name)}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden(module: str, imported: str) -> str | None:
    """Why ``module`` may not import ``imported``, or ``None`` when it may."""
    if _within(module, "llm_router.cli"):
        return None  # the composition root
    if _within(module, "llm_router.simulator"):
        if not _within(imported, "llm_router.simulator"):
            return "the simulator imports nothing of ours"
        return None
    if _within(module, "config"):
        if not _within(imported, "config"):
            return "config imports nothing of ours"
        return None
    if _within(module, "llm_router"):
        if _within(imported, "producer") or _within(imported, "worker"):
            return "the core imports neither producer nor worker"
        if _within(imported, "llm_router.cli"):
            return "the core does not import the CLI"
        if not _within(module, "llm_router.testing") and (
            _within(imported, "llm_router.testing") or _within(imported, "llm_router.simulator")
        ):
            return "the core does not import the test harness or the simulator"
        return None
    if _within(imported, "llm_router.cli") or _within(imported, "llm_router.testing"):
        return "only the CLI composes; the test harness is not for production code"
    if _within(imported, "llm_router.simulator"):
        return "production code does not import the simulator"
    if _within(module, "producer") and _within(imported, "worker"):
        return "producer and worker never import each other"
    if _within(module, "worker") and _within(imported, "producer"):
        return "producer and worker never import each other"
    if _within(module, "worker.providers") and not (
        _within(imported, "worker.providers")
        or _within(imported, "llm_router")
        or _within(imported, "config")
    ):
        return "provider adapters import only the core (and each other)"
    return None


def test_every_import_goes_the_way_the_layout_says() -> None:
    broken = [
        f"{module} imports {imported}: {why}"
        for module, path in _modules()
        for imported in sorted(imports_of(path))
        if (why := forbidden(module, imported))
    ]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("llm_router.store", "producer.producer"),
        ("llm_router.store", "worker.app"),
        ("llm_router.credits", "llm_router.cli.main"),
        ("config.catalog", "llm_router.redact"),
        ("producer.producer", "worker.app"),
        ("worker.job_runner", "producer.validation"),
        ("llm_router.simulator.server", "llm_router.errors"),
        ("llm_router.simulator.server", "config.settings"),
        ("worker.providers.openai", "worker.job_runner"),
        ("producer.http.app", "llm_router.testing.redis_server"),
    ],
)
def test_the_rules_refuse_what_the_layout_forbids(module: str, imported: str) -> None:
    assert forbidden(module, imported) is not None


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("llm_router.cli.main", "producer.producer"),
        ("llm_router.cli.main", "worker.app"),
        ("llm_router.store", "config.settings"),
        ("producer.http.app", "producer.producer"),
        ("worker.providers.openai", "llm_router.errors"),
        ("llm_router.testing.worker_procs", "llm_router.testing.redis_server"),
    ],
)
def test_the_rules_allow_what_the_layout_allows(module: str, imported: str) -> None:
    assert forbidden(module, imported) is None


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    path = ROOT / "llm_router" / "cli" / "main.py"
    assert "worker.app" in imports_of(path)  # imported inside the worker command's handler

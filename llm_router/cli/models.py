"""The catalog as users see it: ``models --json`` objects and the ``models`` table."""

from __future__ import annotations

import sys
from typing import Any

from config.catalog import Catalog


def models_json(catalog: Catalog) -> list[dict[str, Any]]:
    """One object per model: id, capabilities, aliases, fallbacks and each deployment's labelled prices."""
    out = []
    for model_id, spec in catalog.models.items():
        deployments = [
            {
                "id": d.id,
                "provider": d.provider,
                "upstream_model": d.upstream_model,
                "format": d.format,
                "enabled": d.enabled,
                "prices": {
                    **d.price.per_mtok_usd(),
                    "tiered": len(d.price.tiers) > 1,
                    "source": d.price.source,
                },
            }
            for d in catalog.deployments(model_id, enabled_only=False)
        ]
        enabled = [d for d in deployments if d["enabled"]]
        first = (enabled or deployments)[0]["prices"]
        out.append(
            {
                "id": model_id,
                "object": "model",
                "family": spec.family,
                "vendor": spec.vendor,
                "prices": {
                    "input_usd_per_mtok": first["input_usd_per_mtok"],
                    "output_usd_per_mtok": first["output_usd_per_mtok"],
                },
                "capabilities": spec.capabilities.model_dump(),
                "aliases": spec.aliases,
                "fallbacks": spec.fallbacks,
                "deployments": deployments,
            }
        )
    return out


def print_models_table(catalog: Catalog) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="llm-router models (USD per 1M tokens, first enabled deployment)")
    for col in (
        "model",
        "family",
        "input",
        "output",
        "vision",
        "tools",
        "context",
        "deployments (* enabled)",
    ):
        table.add_column(col, justify="right" if col in ("input", "output", "context") else "left")
    for m in models_json(catalog):
        deps = " ".join(f"{d['provider']}{'*' if d['enabled'] else ''}" for d in m["deployments"])
        caps = m["capabilities"]
        table.add_row(
            m["id"],
            m["family"],
            f"{m['prices']['input_usd_per_mtok']:g}",
            f"{m['prices']['output_usd_per_mtok']:g}",
            "yes" if caps["vision"] else "",
            "yes" if caps["tools"] else "",
            f"{caps['context_window']:,}",
            deps,
        )
    # off a terminal rich assumes 80 columns and would cut model names; pipes get the whole table
    Console(width=None if sys.stdout.isatty() else 160).print(table)

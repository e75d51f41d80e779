"""What a job may cost before it runs: its prompt tokens, estimated without a tokenizer, and prices.

The estimate needs no download (no tiktoken encodings) and no per-model tokenizer, so it works on a
locked-down host and costs a microsecond a job:

* **prompt tokens** = ⌈bytes of the job's canonical JSON request / 4⌉, less the bytes of any image
  data, plus ``IMAGE_TOKENS`` per image. Four bytes a token is OpenAI's own rule of thumb for
  English; counting the JSON (keys, quotes, tool schemas) rather than the text alone leans high,
  which is the right side for a reservation.
* **worst case** = those prompt tokens plus the job's ``max_tokens`` (``max_completion_tokens``),
  or the model's maximum output when it sets none, priced at the dearest deployment of every model
  in its fallback chain. A job reserves this much of its tenant's credit.
* **prompt only** = the prompt tokens at the first deployment of its model, with no output: the
  low end of ``llm-router submit --estimate``.
"""

from __future__ import annotations

import re

from config.catalog import Catalog

# per image: above OpenAI's 765 for a 1024x1024 high-detail image and Anthropic's ~1,600 for the
# largest image it takes without resizing; Gemini counts 258
IMAGE_TOKENS = 1_600
BYTES_PER_TOKEN = 4
_DATA = re.compile(rb'"url":"(data:[^"]*|https://[^"]*)"')


def prompt_tokens(request: bytes, images: int = 0) -> int:
    """Estimated prompt tokens of a job's canonical JSON request (see the module's doc)."""
    size = len(request)
    if images:
        size -= sum(len(m.group(1)) for m in _DATA.finditer(request))
    return -(-max(size, 0) // BYTES_PER_TOKEN) + images * IMAGE_TOKENS


class CostModel:
    """Prices of the catalog's models for estimates, read once; answers in nano-USD."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # per route: its distinct (tiers as (start, input, output) picos, model's max output), so
        # a job's reservation is a few multiplications, not a price lookup per deployment
        self._rows: dict[tuple[str, ...], list[tuple[tuple[tuple[int, int, int], ...], int]]] = {}

    def _route_rows(self, route: tuple[str, ...]) -> list[tuple[tuple[tuple[int, int, int], ...], int]]:
        rows = self._rows.get(route)
        if rows is None:
            distinct: dict[tuple[tuple[tuple[int, int, int], ...], int], None] = {}
            for model_id in route:
                max_out = self.catalog.models[model_id].capabilities.max_output
                for dep in self.catalog.deployments(model_id):
                    tiers = tuple((t.start, t.input, t.output) for t in dep.price.tiers)
                    distinct[(tiers, max_out)] = None
            rows = self._rows[route] = list(distinct)
        return rows

    def worst_case(self, route: list[str] | tuple[str, ...], prompt: int, max_output: int | None) -> int:
        """The most the job can cost on any deployment of its chain: its reservation."""
        worst = 0
        for tiers, model_max in self._route_rows(tuple(route)):
            _, rate_in, rate_out = tiers[0]
            for start, tier_in, tier_out in tiers[1:]:  # as Price.tier_for: the last tier passed
                if prompt > start:
                    rate_in, rate_out = tier_in, tier_out
            out = min(max_output, model_max) if max_output else model_max
            picos = prompt * rate_in + out * rate_out
            if picos > worst:
                worst = picos
        return (worst + 500) // 1000

    def prompt_only(self, model_id: str, prompt: int) -> int:
        """The prompt alone at the model's first deployment: the least the job can cost."""
        deps = self.catalog.deployments(model_id)
        return deps[0].price.cost_nanos(prompt, 0) if deps else 0

    def typical(self, model_id: str, prompt: int, output: int) -> int:
        """A request's cost at the model's first deployment (how ``auto`` routes rank models)."""
        deps = self.catalog.deployments(model_id)
        return deps[0].price.cost_nanos(prompt, output) if deps else 1 << 62

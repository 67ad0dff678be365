"""Cost estimates in USD, from genai-prices' offline data or a per-agent override.

genai-prices takes 50-300 µs per lookup, too slow for every call, so the price of
each model is looked up once and kept as per-token rates. Cached-input and tiered
(over 200k token) prices are not modelled: estimates use the base rates.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from agent.types import Usage

log = logging.getLogger("agent.pricing")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1e6


@functools.lru_cache(maxsize=512)
def lookup_price(provider_id: str | None, model: str) -> Price | None:
    """The listed price of a model, or None when genai-prices does not know it."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    sample = 100_000  # under every provider's long-context tier
    for pid in (provider_id, None) if provider_id else (None,):
        try:
            p = calc_price(
                PriceUsage(input_tokens=sample, output_tokens=0), model_ref=model, provider_id=pid
            )
            q = calc_price(
                PriceUsage(input_tokens=0, output_tokens=sample), model_ref=model, provider_id=pid
            )
        except LookupError:
            continue
        except Exception:  # the price data is a hint; never let it fail a call
            log.debug("price lookup failed for %s/%s", pid, model, exc_info=True)
            continue
        scale = 1e6 / sample
        return Price(float(p.total_price) * scale, float(q.total_price) * scale)
    log.warning(
        "no price known for model %r (provider %r); cost estimates are 0", model, provider_id
    )
    return None

"""Cost estimates in USD, from genai-prices' offline data or a per-agent override.

genai-prices takes 50-300 µs per lookup, too slow for every call, so the price of
each model is looked up once and kept as per-token rates, cache reads and writes
included (a Claude app's prompt caching makes most input a tenth of the price). Tiered
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
    # Input read from / written to the provider's cache; None: the input price.
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, usage: Usage) -> float:
        read, written = usage.cached_input_tokens, usage.cache_write_tokens
        uncached = max(0, usage.input_tokens - read - written)
        read_price = (
            self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        )
        write_price = (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )
        return (
            uncached * self.input_per_mtok
            + read * read_price
            + written * write_price
            + usage.output_tokens * self.output_per_mtok
        ) / 1e6


@functools.lru_cache(maxsize=512)
def lookup_price(provider_id: str | None, model: str) -> Price | None:
    """The listed price of a model, or None when genai-prices does not know it."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    sample = 100_000  # under every provider's long-context tier
    for pid in (provider_id, None) if provider_id else (None,):
        try:
            p, q, read, write = (
                calc_price(PriceUsage(**tokens), model_ref=model, provider_id=pid).total_price
                for tokens in (
                    {"input_tokens": sample},
                    {"output_tokens": sample},
                    {"input_tokens": sample, "cache_read_tokens": sample},
                    {"input_tokens": sample, "cache_write_tokens": sample},
                )
            )
        except LookupError:
            continue
        except Exception:  # the price data is a hint; never let it fail a call
            log.debug("price lookup failed for %s/%s", pid, model, exc_info=True)
            continue
        scale = 1e6 / sample
        return Price(*(float(price) * scale for price in (p, q, read, write)))
    log.warning(
        "no price known for model %r (provider %r); cost estimates are 0", model, provider_id
    )
    return None

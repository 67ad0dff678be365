"""The interface each provider's wire format implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from ._common import Call, Rendered
from .behaviours import Fail, Reply


class Wire(ABC):
    """Renders one provider's HTTP API, byte for byte."""

    kind: str = ""

    @abstractmethod
    def route(self, method: str, path: str, query: Mapping[str, str]) -> tuple[str, str | None] | None:
        """(endpoint, model named in the path) for a known endpoint, else None."""

    @abstractmethod
    def check_auth(
        self, headers: Mapping[str, str], query: Mapping[str, str], api_key: str | None
    ) -> Rendered | None:
        """The provider's auth error for a missing/wrong key, else None."""

    @abstractmethod
    def validate(
        self, endpoint: str, headers: Mapping[str, str], body: Any, raw: bytes
    ) -> Rendered | None:
        """The provider's 400 for an invalid request (bad JSON, missing fields), else None."""

    @abstractmethod
    def call(
        self,
        endpoint: str,
        body: Any,
        query: Mapping[str, str],
        path_model: str | None,
        default_model: str,
    ) -> Call:
        """Request facts: model, stream, stream options, input size."""

    @abstractmethod
    def render(self, reply: Reply, call: Call) -> Rendered:
        """The success response for `reply` (ids use CORE_PLACEHOLDER)."""

    @abstractmethod
    def fail(self, fail: Fail, call: Call | None) -> Rendered:
        """The HTTP error response for `fail`."""

    @abstractmethod
    def stream_error(self, error_type: str, message: str | None) -> tuple[bytes, Fail]:
        """(the in-stream error frame, the equivalent HTTP error for a non-stream request)."""

    @abstractmethod
    def models(self, models: list[str]) -> Rendered:
        """The model-list response."""

    @abstractmethod
    def model(self, model: str) -> Rendered:
        """The single-model response."""

    @abstractmethod
    def not_found(self, method: str, path: str) -> Rendered:
        """The provider's answer to an unknown path."""

    def stream_error_for(
        self, call: Call, error_type: str, message: str | None, sequence: int
    ) -> tuple[bytes, Fail]:
        """`stream_error` for this call's endpoint, `sequence` frames into the stream."""
        return self.stream_error(error_type, message)

    def issued(self, call: Call, core: str) -> None:
        """A response with this id core was sent (a provider that stores answers keeps it)."""
        return None

    def count_tokens(self, call: Call) -> Rendered:
        return self.not_found("POST", "count_tokens")

"""Tools: Python callables (sync or async) or explicit specs the model may call."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, get_type_hints

import pydantic

from agent.errors import ConfigurationError
from agent.types import Message, ToolCall, ToolSpec
from agent.wire.base import tool_result_text

__all__ = ["Tool", "to_tool_spec", "to_tool_specs", "tool_message"]

ToolLike = Callable[..., Any] | ToolSpec | dict[str, Any]


def Tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> ToolSpec:
    """An explicit tool: a function with a custom name or description, or a bare schema
    (no function: the model's calls come back on the response for you to run)."""
    if function is not None and parameters is None:
        spec = to_tool_spec(function)
        return ToolSpec(
            name or spec.name, description or spec.description, spec.parameters, function
        )
    if not name:
        raise ConfigurationError("a tool without a function needs a name")
    return ToolSpec(
        name, description or "", parameters or {"type": "object", "properties": {}}, function
    )


def to_tool_spec(tool: ToolLike) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, dict):  # OpenAI style {"type": "function", "function": {...}} or bare
        fn = tool.get("function", tool)
        return ToolSpec(
            fn["name"],
            fn.get("description", ""),
            fn.get("parameters") or fn.get("input_schema") or {"type": "object"},
        )
    if not callable(tool):
        raise ConfigurationError(f"not a tool: {tool!r}")
    return _spec_from_callable(tool)


def to_tool_specs(tools: Iterable[ToolLike] | None) -> list[ToolSpec]:
    return [to_tool_spec(t) for t in tools or ()]


def _spec_from_callable(fn: Callable[..., Any]) -> ToolSpec:
    """Schema from the signature's annotations; description from the docstring."""
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(pname, Any)
        default = ... if param.default is param.empty else param.default
        fields[pname] = (annotation, default)
    model = pydantic.create_model(f"{fn.__name__}_args", **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    doc = inspect.getdoc(fn) or ""
    return ToolSpec(fn.__name__, doc.split("\n\n")[0].strip(), schema, fn)


def tool_message(call: ToolCall) -> Message:
    """The message that carries a tool's result back to the model."""
    return Message("tool", tool_result_text(call), tool_call_id=call.id, name=call.name)


def record_result(call: ToolCall, result: Any = None, error: BaseException | None = None) -> None:
    if error is not None:
        call.error = f"{type(error).__name__}: {error}"
    else:
        call.result = result

"""Agent Router: route LLM calls across providers.

from agent import Agent, AgentRouter
"""

from agent._base import BaseAgent, Caller
from agent.agent import Agent
from agent.errors import AgentError, RoutingError
from agent.middleware import Middleware
from agent.pricing import Price
from agent.router import AgentRouter
from agent.tools import Tool
from agent.types import (
    Done,
    Message,
    Reasoning,
    ReasoningDelta,
    Request,
    Response,
    RouteResult,
    Started,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    Usage,
)

__all__ = [
    "Agent",
    "AgentError",
    "AgentRouter",
    "BaseAgent",
    "Caller",
    "Done",
    "Message",
    "Middleware",
    "Price",
    "Reasoning",
    "ReasoningDelta",
    "Request",
    "Response",
    "RouteResult",
    "RoutingError",
    "Started",
    "StreamEvent",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolResult",
    "Usage",
]

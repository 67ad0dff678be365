"""Continuing a broken stream on the next agent (`stream_recovery="continue"`).

What the next agent is asked (`continuing`), what the caller already holds and what the
broken attempts cost (`Resume`), and the cut of what the next model repeats (`Overlap`).
The router decides when (see `AgentRouter._continues`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.types import Continuation, Message, Request, Response, Usage

if TYPE_CHECKING:
    from agent.pricing import Price

# What an agent that cannot take a prefilled answer is told after the answer so far.
CONTINUE = (
    "Your answer above was cut off. Continue it exactly where it stopped: do not repeat "
    "any of it, do not comment, just write the rest."
)


def continuing(request: Request, so_far: str, wire: str) -> Request:
    """`request` asking for the rest of an answer another agent began (`so_far`).
    Anthropic continues an assistant turn the request ends with (its prefill, which must
    not end in whitespace); the others get the turn and an instruction to go on."""
    if wire == "anthropic":
        tail = [Message("assistant", so_far.rstrip())]
    else:
        tail = [Message("assistant", so_far), Message("user", CONTINUE)]
    return request.copy(messages=[*request.messages, *tail], continues=None, relay=None)


class Resume:
    """A stream being continued: the answer so far, what the broken attempts cost
    (estimated: a stream cut short never reports its usage), and each continuation."""

    __slots__ = ("continuations", "cost", "text", "usage")

    def __init__(self) -> None:
        self.text = ""
        self.usage = Usage()
        self.cost = 0.0
        self.continuations: list[Continuation] = []

    def broke(
        self,
        text: str,
        failed: str,
        agent: str,
        price: Price | None,
        request: Request,
        error: BaseException,
    ) -> None:
        """Agent `failed` broke off with the caller holding `text`; `agent` goes on."""
        # The library's estimate (4 characters a token) for what the cut stream used.
        usage = Usage(request.approx_input_tokens(), (len(text) - len(self.text)) // 4 + 1)
        self.usage = self.usage + usage
        self.cost += price.cost(usage) if price else 0.0
        self.continuations.append(Continuation(failed, agent, len(text), str(error)))
        self.text = text

    def finish(self, response: Response[Any], text: str, request: Request) -> None:
        """The continuing agent's answer, made the whole answer: all its text, every
        attempt's usage and cost, the exchange as the caller asked it."""
        response.text = response.output = text
        response.usage = response.usage + self.usage
        response.cost_estimate += self.cost
        response.messages = [*request.messages, Message("assistant", text)]


class Overlap:
    """Cuts what a continuing model repeats of the answer so far from the start of its
    text. It holds the new text while it could still be such a repeat, then cuts the
    longest end of the answer its start repeats: whole when at least `SURE` characters
    long, else only from the start of a word (so "fo" then "fox" reads "fox", but "aa"
    then "ab" reads "aab")."""

    SURE = 8
    __slots__ = ("_done", "_held", "_so_far")

    def __init__(self, so_far: str) -> None:
        self._so_far = so_far
        self._held = ""
        self._done = False

    def feed(self, text: str) -> str:
        """What of `text` goes on now ("" while held)."""
        if self._done:
            return text
        self._held += text
        so_far, held = self._so_far, self._held
        if so_far.find(held, 0, len(so_far) - 1) != -1:
            return ""  # all of it is in the answer so far: it may still be a repeat
        return self.flush()

    def flush(self) -> str:
        """Decide now: the held text without its repeat."""
        if self._done:
            return ""
        self._done = True
        so_far, held = self._so_far, self._held
        cut = 0
        for k in range(min(len(held), len(so_far)), 0, -1):
            if so_far.endswith(held[:k]):
                begins_word = (
                    k == len(so_far) or not so_far[-k - 1].isalnum() or not held[0].isalnum()
                )
                if k >= self.SURE or begins_word:
                    cut = k
                    break
        rest = held[cut:]
        if not cut and so_far[-1:].isspace():
            rest = rest.lstrip()  # the space the answer so far ends with, not twice
        return rest

"""One module per wire format, each holding both halves of what it knows: the client
half (build a request, parse an answer, decode a stream: the library's codecs) and the
server half (parse an inbound request, render an answer, encode a stream: what the
sidecar serves), sharing one set of tables (field names, part kinds, finish reasons,
tool choice, usage). Pure functions, no I/O.

* `base`: the codec contract and the helpers every format uses.
* `carry`: what each format cannot carry of the engine's request.
* `inbound`: the server half's contract (a parsed call, a caller's failure).
* `openai_chat`, `openai_responses`, `anthropic`, `gemini`: the formats.
"""

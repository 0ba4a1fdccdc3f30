"""Serving many soft prompts on one frozen base model: ``peft-ext serve``, an OpenAI-compatible HTTP server.

One request's way through: :mod:`.app` (HTTP, OpenAI's shapes: :mod:`.openai_schema`, :mod:`.http_errors`) ->
:mod:`.service` (the model a request names, via :mod:`.prompts`; encoding; text out via :mod:`.text`) ->
:mod:`.scheduler` (continuous batching on :class:`peft_ext.engine.decode_batch.DecodeBatch`, sampling in
:mod:`.sampling`). :mod:`.metrics` counts for ``/metrics``, :mod:`.server` runs it all on uvicorn and :mod:`.cli` is
the command. Nothing is imported here: the HTTP stack (the ``serve`` extra) loads only when a server starts.
"""

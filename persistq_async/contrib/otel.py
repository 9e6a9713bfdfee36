"""OpenTelemetry tracing for persistq_async (``pip install 'persistq_async[otel]'``).

:func:`instrument` registers a :class:`PersistqTracer` for this process:

- every ``put``/``put_many`` runs in a PRODUCER span ``send {queue}``, whose trace context is
  written into the job's headers (``traceparent``, ``tracestate``: the configured propagator's
  fields), so it travels with the job through the database to whichever process runs it;
- every handler run is a CONSUMER span ``process {queue}``, whose parent is the context found
  in the job's headers, so the trace goes on across processes.

Attributes follow the OpenTelemetry messaging conventions: ``messaging.system`` = ``persistq``,
``messaging.destination.name`` (the queue), ``messaging.message.id`` (the job id; on a put of
one job), ``messaging.batch.message_count`` (put_many), ``messaging.operation.name``
(``send``/``process``), ``messaging.operation.type`` (``send``/``process``), and ``error.type``
(the exception's class) when a handler raised or was cancelled.

The SDK (exporters, sampling) is the application's to set up; this module needs only
``opentelemetry-api`` and does nothing visible until a tracer provider is configured.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, TracerProvider

from .. import __version__
from ..metrics import hub

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["MESSAGING_SYSTEM", "PersistqTracer", "instrument", "uninstrument"]

#: The ``messaging.system`` attribute of every span.
MESSAGING_SYSTEM = "persistq"


class _PutSpan:
    def __init__(self, span: Span, count: int) -> None:
        self._span = span
        self._count = count

    def set_job_ids(self, job_ids: Sequence[int], /) -> None:
        if len(job_ids) == 1:
            self._span.set_attribute("messaging.message.id", str(job_ids[0]))


class PersistqTracer:
    """A :class:`persistq_async.metrics.Tracer` that makes OpenTelemetry spans.

    :param tracer_provider: where spans go; the global provider by default.
    :param propagator: writes and reads the trace context in headers; the global one (W3C
        trace context by default).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            "persistq_async", __version__, tracer_provider=tracer_provider
        )
        self._propagator = propagator

    def _textmap(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    def put_span(
        self, queue: str, headers: MutableMapping[str, str], count: int
    ) -> AbstractContextManager[_PutSpan]:
        """A PRODUCER span around a put; writes its context into ``headers``."""
        return self._put_span(queue, headers, count)

    @contextmanager
    def _put_span(
        self, queue: str, headers: MutableMapping[str, str], count: int
    ) -> Iterator[_PutSpan]:
        attributes: dict[str, str | int] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": queue,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        }
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        with self._tracer.start_as_current_span(
            f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            self._textmap().inject(headers)
            yield _PutSpan(span, count)

    def process_span(self, job: Job, pool: str) -> AbstractContextManager[Span]:
        """A CONSUMER span around one handler run, continuing the put's trace."""
        return self._process_span(job, pool)

    @contextmanager
    def _process_span(self, job: Job, pool: str) -> Iterator[Span]:
        # The producer's context becomes the parent (the conventions allow parent or link;
        # a link as well would only repeat it, and costs per job).
        context = self._textmap().extract(job.headers) if job.headers else None
        attributes: dict[str, str | int] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": pool,
        }
        with self._tracer.start_as_current_span(
            f"process {job.queue}",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                raise


def instrument(
    tracer_provider: TracerProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> PersistqTracer:
    """Trace this process's puts and handler runs from now on; returns the tracer, for
    :func:`uninstrument`."""
    tracer = PersistqTracer(tracer_provider, propagator)
    hub.add_tracer(tracer)
    return tracer


def uninstrument(tracer: PersistqTracer) -> None:
    """Stop tracing with ``tracer``."""
    hub.remove_tracer(tracer)

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

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

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
        self._last_parent: tuple[Mapping[str, str], TextMapPropagator, Context] | None = None

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
        return _ProcessSpan(self, job, pool)

    def _parent(self, headers: Mapping[str, str]) -> Context | None:
        """The producer's context from a job's headers.

        The jobs of one ``put_many`` share one headers object (decoded once), and a pool claims
        them one after another: remembering the last extraction saves parsing it per job."""
        if not headers:
            return None
        textmap = self._textmap()
        last = self._last_parent
        if last is not None and last[0] is headers and last[1] is textmap:
            return last[2]
        context = textmap.extract(headers)
        self._last_parent = (headers, textmap, context)
        return context


class _ProcessSpan:
    """The CONSUMER span of one handler run, entered without the SDK's generator-based
    context managers (two of them per job cost as much as the span itself)."""

    __slots__ = ("_job", "_pool", "_span", "_token", "_tracer")

    def __init__(self, tracer: PersistqTracer, job: Job, pool: str) -> None:
        self._tracer = tracer
        self._job = job
        self._pool = pool

    def __enter__(self) -> Span:
        job = self._job
        # The producer's context becomes the parent (the conventions allow parent or link;
        # a link as well would only repeat it, and costs per job).
        span = self._tracer._tracer.start_span(
            f"process {job.queue}",
            context=self._tracer._parent(job.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": job.queue,
                "messaging.message.id": str(job.id),
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": self._pool,
            },
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            otel_context.detach(self._token)
            if exc is not None and span.is_recording():
                span.set_attribute("error.type", type(exc).__qualname__)
                # As the SDK's own span context manager does: errors, not cancellation.
                if isinstance(exc, Exception):
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            span.end()


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

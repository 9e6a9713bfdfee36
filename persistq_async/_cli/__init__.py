"""The parts of the ``persistq`` command beside :mod:`persistq_async.cli` (which keeps the
parser's entry point, ``demo`` and ``worker``): durations, output (``rich`` on a terminal when it
is installed, plain text otherwise, JSON on request), the inspection and bulk commands, and the
live view.
"""

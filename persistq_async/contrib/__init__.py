"""Optional integrations, each behind its own extra: :mod:`.prometheus` (``[prometheus]``) and
:mod:`.otel` (``[otel]``). They import the core; the core never imports them (an import-linter
contract says so), so ``pip install persistq_async`` needs neither."""

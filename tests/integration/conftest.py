"""Fixtures of the pool, supervisor and service tests: ``backend_url``, ``queue`` and ``clock``
come from tests/conftest.py (``queue`` is a plain ``async with`` fixture: pytest-asyncio sets it
up and tears it down in two different tasks, which a queue allows)."""

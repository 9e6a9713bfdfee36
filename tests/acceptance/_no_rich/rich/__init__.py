# Stands in for a missing `rich` (the cli extra not installed) in tests/acceptance.
raise ImportError("rich is hidden by tests/acceptance/_no_rich")

"""A throw-away pipeline that exists only in the tests: it counts a series' instances and keeps one result record
per series in a table of its own. Everything it needs is in this folder: its pipeline, settings, record type and
table (`pipeline.py`), its migration (`migrations/`) and its test, which registers it in one line
(`Registry.with_pipeline`). No other file of the project names it (`test_pipeline.py` checks)."""

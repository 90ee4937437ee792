"""The repository's experiments on the built-in data, under their command lines in scripts/: the runs'
settings (`builtin_runs.py`), reading and summarising a run's records (`runs.py`), keeping them
(`records.py`), the curves of runs (`curves.py`), the decisive experiment's protocol
(`decisive_protocol.py`), its finished runs (`decisive_runs.py`) and their post-hoc readings
(`decisive_posthoc.py`). None of them imports torch or Ray: the scripts that only read records stay
light."""

"""Benchmark scripts run by ``tasks.py``: the scale-out figures (``perf_scale``) and the prepared GPU check
(``gpu_check``). They sit above the API (nothing in Gauntlet imports them)."""

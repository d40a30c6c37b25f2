"""``vlmfleet bench``: a bounded load test of the chat endpoint (Locust), reported as CSV and a PNG plot.

``workload`` is what each simulated user sends and how it reads the streamed answer (pure Python), ``locustfile``
wires it into Locust (loaded by absolute path in a ``python -m locust`` subprocess), ``report`` turns the
per-request rows into percentiles, rates and a plot, and ``run`` resolves the targets from an inventory or URLs,
runs Locust with a hard time bound and writes the report. See docs/bench.md.
"""

"""
The benchmark suite against portend: ``python -m benchmarks`` (``tox -e
bench``). Loopback only; every loop bounded in count and time.
"""

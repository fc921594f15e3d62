"""`make bench`: the performance suite behind BENCHMARKS.md (issue 7).

Run everything with `python -m bench` (results in bench/results/*.json and *.png), one part
with `python -m bench unary` etc., or custom points with `driver-service bench ...`.
"""

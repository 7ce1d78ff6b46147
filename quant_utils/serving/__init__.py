"""Serving study: arrival workloads, serving policies, a discrete-event simulator driven by the
performance model, the same trace against a live in-process generator, and metrics.

Nothing here touches torch: the simulator reads `PerfModel`, the live runner takes a plain
`generate(prompts, seeds, height, width)` callable.
"""

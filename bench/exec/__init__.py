"""Executing a suite: the driver, its pre-flight checks, the executors (local and Ray Tune) and the trial body.

The only package of binbench that imports Ray: everything else reaches Ray through ``bench.exec.ray_tune``.
"""

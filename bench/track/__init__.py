"""Tracking in MLflow: the store and its schema, the tracked run, what a run records, and reading runs back
(``binbench evaluate``, ``binbench replay``).

The only package of binbench that imports MLflow: everything else reaches it through here.
"""

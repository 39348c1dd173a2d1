"""The paper's method: video I/O, the inflated UNet's attention, tuning, DDIM, adapters, base models.

Imports nothing above it (no store, jobs or CLI): plain tensors, paths and frozen dataclasses.
"""

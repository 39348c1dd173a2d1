"""Speed machinery applied to the method from outside: precision, CUDA graphs, compile, fused kernels.

Imports nothing from the method, the application or the faces.
"""

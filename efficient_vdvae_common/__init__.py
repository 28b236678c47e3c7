"""Framework-agnostic pieces shared by the PyTorch and JAX implementations.

Everything here works on numpy arrays, files and plain Python values: data
discovery and splits, image files, temperature settings, variate masks and the
encodings file format. Neither torch nor jax is imported from this package.
"""

"""Benchmarks of diffusion_core against its peers (diffusers, pytorch-fid); ``python -m bench.run_all``."""

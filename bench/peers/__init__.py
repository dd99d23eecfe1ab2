"""Measuring against peer servers: the real ComfyUI (`bench.peers.comfyui`)."""

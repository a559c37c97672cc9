"""The three networks of the release: the multi-mask DiT, the causal video VAE and the UMT5 text encoder."""

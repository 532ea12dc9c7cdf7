"""SilentSTaR-JAX: GPT-2 that thinks in latent space before every token (see DESIGN in README)."""

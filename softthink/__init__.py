"""SofT-GRPO: Gumbel-reparameterized soft-thinking policy optimization on Hugging Face causal LMs."""
__version__ = "0.1.0"

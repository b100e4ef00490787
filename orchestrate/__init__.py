"""orchestrate: multi-node vLLM on bare-metal GPU hosts, and the same plan for k8s and compose."""

__version__ = "0.1.0"

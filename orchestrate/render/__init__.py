"""Renderers: a Plan in, data out (Kubernetes objects, compose files, Docker SDK kwargs)."""

"""Readers of the node's container runtime: Podman's API, cgroup files, /proc."""

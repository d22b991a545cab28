"""piccolo-agent: the per-node monitoring daemon of PICCOLO."""

__version__ = "0.1.0"

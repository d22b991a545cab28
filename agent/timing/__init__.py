"""ASIL timing supervision: instrumented reports and the outside-in tracer."""

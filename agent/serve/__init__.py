"""The read side: the REST query API and the Prometheus endpoint (ARCHITECTURE.md, "Read side")."""

"""The local buffer and the central etcd store."""

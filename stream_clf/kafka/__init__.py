"""Kafka in the serving core: the connection that makes every client, security, topics and their limits,
and the control plane's records and protocol."""

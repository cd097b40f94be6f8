"""Kafka: the clients' settings, security, topics, the CLI's producer and tail, and the local broker."""

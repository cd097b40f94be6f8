"""Scoring models like the reference cards, directly and through Kafka."""

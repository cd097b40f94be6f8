"""Operations: metrics, logs, and the web endpoints (health, readiness, dashboard)."""

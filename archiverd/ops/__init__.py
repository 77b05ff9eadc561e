"""Operations: metrics, logs, health checks, memory tuning."""

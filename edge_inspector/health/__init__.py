"""Station health: Prometheus metrics (metrics.py), the /metrics + /healthz endpoint (server.py)
and the one liveness rule both they and the systemd watchdog use (liveness.py)."""

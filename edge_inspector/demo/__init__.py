"""`edge-inspector demo`: synthetic parts (synthetic.py), an embedded MQTT broker (broker.py) and
the runner that trains, starts the daemon and prints what an MES sees (runner.py)."""

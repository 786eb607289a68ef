"""Health of the running lane: checks, alarms, degraded modes, and systemd notification
(``sdnotify``: READY / STATUS / WATCHDOG / STOPPING over the NOTIFY_SOCKET)."""

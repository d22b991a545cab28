"""Alerts: the lifecycle (`alerts`, pure) and delivery over MQTT (`mqtt`, the only aiomqtt user).

`agent.alerts.mqtt` is not imported here, so using the lifecycle does not load the MQTT client.
"""

from agent.alerts.alerts import Alert, AlertKey, AlertManager, AlertSeverity, AlertStats

__all__ = ["Alert", "AlertKey", "AlertManager", "AlertSeverity", "AlertStats"]

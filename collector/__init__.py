"""iot-collector: a CoAP collector for IoT device fleets."""

__version__ = "0.1.0"

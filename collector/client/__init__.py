"""``iot-client``: send events to an iot-collector over CoAP, check it, simulate a fleet.

The CLI lives in :mod:`collector.client.cli`; the reusable parts are the CoAP client
endpoint (:mod:`collector.client.endpoint`) and the event/body builders
(:mod:`collector.client.payloads`).
"""

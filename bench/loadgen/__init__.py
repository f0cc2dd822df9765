"""Building blocks of bench/loadtest.py: the open-loop CoAP load generator.

``histogram`` (log-bucketed latency histogram), ``schedule`` (the open-loop clock),
``wire`` (pre-encoded request datagrams and minimal response parsing), ``generator``
(the send/receive loop and its processes), ``servers`` (peers, collector replicas,
network namespaces, start-up time) and ``report`` (tables, JSON, plots).
"""

"""The proxy's wire codecs, without I/O.

The control channel's JSON lines (`control`), the handover document (`handover`), the
authenticated carried-flow announcements and challenges of the forward link (`carry`), the
connection offset record they carry (`offset`), and the
nfnetlink_queue messages with their verdict planner (`nfqueue_msgs`): bytes or text in,
values out. This room imports only pure standard-library modules and itself, never
`kernel`, `service` or `cli` (tests/unit/proxy/test_rooms.py); the orchestrator imports
it to speak to the proxy.
"""

"""The proxy's kernel adapters: the only modules doing kernel I/O.

The bcc datapath and its tc programs (`datapath`, `bpf/`), the NFQUEUE netlink socket
(`nfqueue`), the iptables rules (`netfilter`) and the forward link's AF_PACKET socket
(`packet_socket`). Only this room imports bcc or pyroute2 or opens packet and netlink
sockets (tests/unit/proxy/test_rooms.py). It may import `wire` for the messages and
records it reads and writes; never `compare`, `service` or `cli`.
"""

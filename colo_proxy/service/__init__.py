"""The proxy service: what joins the kernel adapters, the comparator and the orchestrator.

The two proxies (`primary`, `secondary`) with their modes as one transition table
(`modes`), the epoll loop (`loop`), the control socket (`control_socket`), the handover
file (`handover_file`), settings, metrics, and `run`, which builds the real I/O objects
and serves until stopped. It may import `compare`, `wire` and `kernel`, the last only in
`run`: the proxies are handed their I/O objects, so unit tests drive them with fakes. It
never imports `cli`.
"""

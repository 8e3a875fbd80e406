from colo_lab import packet_trace

VM = "10.99.0.10"


def line(t: float, src: str, sport: int, dst: str, dport: int, flags: str, length: int) -> str:
    return (f"{t:.6f} IP {src}.{sport} > {dst}.{dport}: Flags [{flags}], seq 1:2, ack 3, "
            f"win 502, options [nop,nop,TS val 1 ecr 2], length {length}")


def exchange(t0: float, port: int, lag: float) -> list[str]:
    """One request as a point `lag` seconds behind the client sees it."""
    c = "10.99.0.2"
    return [
        line(t0 + lag, c, port, VM, 80, "S", 0),
        line(t0 + lag + 0.001, VM, 80, c, port, "S.", 0),
        line(t0 + lag + 0.002, c, port, VM, 80, "P.", 78),
        line(t0 + lag + 0.010, VM, 80, c, port, "P.", 65),
        line(t0 + lag + 0.011, c, port, VM, 80, ".", 0),
        line(t0 + lag + 0.020, VM, 80, c, port, "P.", 17),
        line(t0 + lag + 0.030, c, port, VM, 80, "F.", 0),
    ]


def test_parse_skips_what_is_not_an_ipv4_tcp_line() -> None:
    segs = packet_trace.parse([
        "1.5 ARP, Request who-has 10.99.0.10 tell 10.99.0.2, length 28",
        line(2.0, "10.99.0.2", 4000, VM, 80, "S", 0),
        "tcpdump: listening on eth0",
    ])
    assert segs == [packet_trace.Segment(2.0, "10.99.0.2", 4000, VM, 80, "S", 0)]


def test_each_step_of_each_request_at_each_point() -> None:
    points = {"client": packet_trace.parse(exchange(100.0, 4000, 0) + exchange(101.0, 4001, 0)),
              "svm": packet_trace.parse(exchange(100.0, 4000, 0.005))}
    ev = packet_trace.request_events(points, VM)
    assert set(ev) == {4000, 4001}
    rel = packet_trace.relative(ev[4000])
    assert rel["client.in.syn"] == 0
    assert rel["client.out.data1"] == 10.0
    assert rel["client.in.ack_of_data"] == 11.0
    assert rel["client.out.data2"] == 20.0
    assert rel["client.out.last_data"] == 20.0
    assert rel["client.in.fin"] == 30.0
    assert rel["svm.in.request"] == 7.0
    assert rel["svm.out.data1"] == 15.0
    assert "svm.in.syn" not in packet_trace.relative(ev[4001])


def test_a_port_never_seen_opening_at_the_client_is_not_a_request() -> None:
    points = {"client": [], "pvm": packet_trace.parse(exchange(1.0, 4000, 0))}
    assert packet_trace.request_events(points, VM) == {}


def test_medians_in_time_order() -> None:
    med = packet_trace.medians([{"a": 1.0, "b": 9.0}, {"a": 3.0, "b": 5.0}, {"a": 2.0}])
    assert list(med.items()) == [("a", 2.0), ("b", 7.0)]


def test_steps_wait_for_the_later_twin_and_skip_what_was_not_seen() -> None:
    ev = {"client.in.syn": 10.0, "client.out.synack": 10.002, "pvm.out.data1": 10.040,
          "fwd.out.data1": 10.140, "client.out.data1": 10.1403}
    st = packet_trace.steps(ev)
    assert st["handshake (client SYN to SYN-ACK)"] == 2.0
    assert st["SVM's headers after the PVM's"] == 100.0
    assert st["headers released (later twin to client)"] == 0.3
    assert "STOP to RESUME" not in st
    early = packet_trace.steps({**ev, "fwd.out.data1": 10.030})
    assert early["SVM's headers after the PVM's"] == -10.0
    assert early["headers released (later twin to client)"] == 100.3

"""The orchestrator daemon: everything that runs, around the pure core.

`runner` holds the reconciliation loop (`Orchestrator`); `actions`, `proxy_supervision`
and `watchers` its action bodies, the local colo-proxy process and the observer and
SVM-watch threads; `heartbeat`, `arbiter`, `proxy_link`, `api` and `metrics` its links
to the peer, the lease, the proxy, the operator and Prometheus. It may import the core,
the backend interface (`colo_orch.backends.base`, never a concrete backend: the CLI
chooses one) and the proxy's wire format (`colo_proxy.wire`); `metrics_doc`, which writes
docs/metrics.md, also reads the proxy's metric registry. Never a CLI or the test bed.
"""

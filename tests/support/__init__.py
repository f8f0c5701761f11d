"""What the tests share: importable as `support` (pytest's `pythonpath`), never from a test.

- `system`: the repository root, system binaries and root (skip on a laptop, fail when
  CI=true), free ports
- `certs`: a throwaway certificate authority issuing server and client certificates
- `targets`: real HTTP, TCP and DNS servers on loopback that misbehave on request
- `probe_runs`: one probe built from a real agent config and run once
- `login_server`: a small website with a login journey (CSRF form, session cookie, JSON
  API) and fault switches, over HTTP or HTTPS, for `flow` probes
- `collector_client`: a collector in-process, test agents speaking the wire protocol, API and
  metric readers
- `mosquitto`: a real Mosquitto broker from its Debian binary, and subscribers
- `collector_process`: `probenet collector` as a child process (restart, kill -9, SIGTERM)
- `processes`: any child process with its log in a file, stopped with SIGTERM then SIGKILL
- `netns`: network namespaces with veth pairs in 198.18.0.0/15 and nftables partitions
  (root; skip on a laptop, fail when CI=true)
- `classifier_fleet`: a small fake fleet driving the pure classifier, round by round
- `classifier_timeline`: a fleet on a timeline, every probe run at its own moment
- `e2e_fleet`: real collector and agent processes (`probenet.lab`) with a fault table the
  tests edit
- `deploy_queries`: every PromQL expression of the shipped dashboards and rules
- `pushing_collector`: a minimal real Ingest server that pushes the ProbeConfig messages a
  test controls and records each agent's Hello, results and ConfigStatus
- `browser`: Debian's chromium through Playwright, a page's console and requests, and a fleet
  whose collector serves the status page (tests/browser, a pytest process of its own)
"""

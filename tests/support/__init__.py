"""What the tests share: importable as `support` (pytest's `pythonpath`), never from a test.

- `system`: the repository root, system binaries and root (skip on a laptop, fail when
  CI=true), free ports
- `certs`: a throwaway certificate authority issuing server and client certificates
- `targets`: real HTTP, TCP and DNS servers on loopback that misbehave on request
- `probe_runs`: one probe built from a real agent config and run once
- `collector_client`: a collector in-process, test agents speaking the wire protocol, API and
  metric readers
- `mosquitto`: a real Mosquitto broker from its Debian binary, and subscribers
- `classifier_fleet`: a small fake fleet driving the pure classifier, round by round
- `e2e_fleet`: real collector and agent processes (`probenet.lab`) with a fault table the
  tests edit
- `deploy_queries`: every PromQL expression of the shipped dashboards and rules
"""

"""The probenet collector: ingest, classification, journal, metrics, HTTP API, events."""

"""Railcar ``streams``: events. Trace event building and OTLP encoding, the Kafka producer with its spool, the
consumer group, findings, the security fileset and the findings topic."""

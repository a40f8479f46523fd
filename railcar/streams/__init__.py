"""Railcar ``streams``: events. The span layout (``schema``), answer reassembly (``answer``), the trace recorder
(``recorder``) and its wiring for ``railcar serve`` (``recording``), OTLP encoding (``otlp``), the Kafka producer
with its spool (``producer``, ``spool``), the consumer logic (``processor``) built from the config in one place
(``pipeline``), run by the consumer group (``consumer``) or in-process (``embedded``), findings and the security
fileset (``findings``, ``fileset``)."""

"""Tools that are not a room's concept: the replay upstream, the mock Kafka cluster, the HTML report, demo data."""

"""Everything that talks to Kafka outside the Faust app: admin, broker, producers, sinks."""

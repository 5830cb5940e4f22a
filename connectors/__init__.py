"""Everything that talks to Kafka outside the Faust app: admin, embedded broker, producers, sinks."""

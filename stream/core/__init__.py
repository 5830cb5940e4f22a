"""Pure pipeline logic: no Kafka, no Faust, no model imports."""

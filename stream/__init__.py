"""sentistream: real-time sentiment on Kafka message streams."""

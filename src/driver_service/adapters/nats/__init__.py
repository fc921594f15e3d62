"""NATS adapters: the event log published to a JetStream stream (`jetstream.JetStreamSink`)."""

"""The ground floor: logging, durable files, durations and config machinery, event types,
the Service vocabulary, the error root. Imports nothing of lifeline above it."""

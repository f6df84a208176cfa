//! Durable store-and-forward queues: a checksummed segment log with group commit.

//! From decoded events to written batches: the [`router`] picks pipelines by channel,
//! each sink has its own bounded [`queue`], and a [`runner`] per sink batches, writes with
//! bounded concurrency, retries retryable failures with backoff ([`retry`]) and
//! dead-letters the rest. [`ack`] tells the source when every sink is done with an event.

pub mod ack;
pub mod queue;
pub mod retry;
pub mod router;
pub mod runner;

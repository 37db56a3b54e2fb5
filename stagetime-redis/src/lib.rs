//! Redis adapter for stagetime.
//!
//! This crate will hold `RedisStore`, the shared state of revision runs and
//! the work queue (Streams with consumer groups) that lets many workers drive
//! runs from one Redis. It exposes nothing yet.

//! End-to-end tests for bitmig live in `e2e/`.

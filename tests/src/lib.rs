//! Integration tests for MMSB live in `tests/`.

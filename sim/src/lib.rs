//! Stratum V1 simulators (mock pool, hashing miners). Being written.

//! Pure Stratum V1 logic.

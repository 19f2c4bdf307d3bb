//! Loka Stratum proxy.

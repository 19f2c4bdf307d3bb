//! Proxy configuration.

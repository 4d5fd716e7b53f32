//! Pulling a producer snapshot over HTTP: pagination, retries, streaming, spill.

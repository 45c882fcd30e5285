//! Integration tests: the real gateway over TCP in front of a real mock provider.
//! One test binary (shorter link times); each module covers one area.

mod support;

mod cuts;
mod errors;
mod framing;
mod non_stream;
mod streaming;

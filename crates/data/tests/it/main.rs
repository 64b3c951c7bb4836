//! Integration tests of recallseg-data (one test binary, several modules).

mod bad_input;
mod formats;
mod loader;
mod other_datasets;
mod resize_antialias;
mod stats;
mod synthia;
mod transforms;
mod util;

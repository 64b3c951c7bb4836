//! Integration tests of recallseg-data (one test binary, several modules).

mod loader;
mod synthia;
mod util;

//! The `recallseg` command line.

fn main() {
    eprintln!("recallseg: the command line is being built (issue #6); nothing to run yet.");
    std::process::exit(2);
}

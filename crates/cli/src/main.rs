//! `recallseg`: train, evaluate and run semantic segmentation models with Recall loss.
//! The commands are defined in the `recallseg_cli` library target.

fn main() {
    use clap::Parser;
    // `RUST_BACKTRACE=1` is for panics; without this, candle would also capture a backtrace
    // into every error and the message would be followed by its frames. Set before any thread
    // starts; `RUST_LIB_BACKTRACE=1` still asks for them.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    recallseg_cli::runtime::tune_cpu_runtime();
    let cli = recallseg_cli::Cli::parse();
    match recallseg_cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Standard error may be closed (`… 2>&1 | head`): the exit status still says it.
            recallseg_trainer::console::note_line(format_args!(
                "error: {}",
                recallseg_trainer::error_text::error_chain_text(&e)
            ));
            std::process::exit(1);
        }
    }
}

//! `recallseg`: train, evaluate and run semantic segmentation models with Recall loss.
//! The commands are defined in `recallseg_trainer::cli`.

fn main() {
    use clap::Parser;
    recallseg_trainer::runtime::tune_cpu_runtime();
    let cli = recallseg_trainer::cli::Cli::parse();
    match recallseg_trainer::cli::run(cli) {
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

//! `cargo xtask reproduce synthia|cityscapes` (issue #6).

use clap::Args;

/// Arguments of `cargo xtask reproduce`.
#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// Dataset: `synthia` or `cityscapes`.
    pub dataset: String,
    /// Run the scaled-down comparison on the generated synthetic Synthia-format dataset.
    #[arg(long)]
    pub quick: bool,
}

/// Entry point of `cargo xtask reproduce`.
pub fn run(args: &ReproduceArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`cargo xtask reproduce {}{}` needs the trainer crate, which is not built yet (issue #6)",
        args.dataset,
        if args.quick { " --quick" } else { "" }
    )
}

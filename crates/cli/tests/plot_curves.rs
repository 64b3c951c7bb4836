//! `recallseg plot`: training curves of two tiny runs, drawn through the command line.

mod common;

use clap::Parser;
use common::{quiet, tiny_config, tiny_dataset};
use recallseg_cli::Cli;
use recallseg_trainer::train::train;

#[test]
fn plot_draws_two_runs_as_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let a = dir.path().join("run_ce");
    let b = dir.path().join("run_recall");
    for (out, loss) in [(&a, "cross_entropy"), (&b, "recall_ce")] {
        let cfg = tiny_config(
            &root,
            out,
            &[&format!("loss.name={loss}"), "train.checkpoint_every=0"],
        );
        train(&cfg, &quiet()).unwrap();
    }
    let out = dir.path().join("curves");
    let cli = Cli::try_parse_from([
        "recallseg".as_ref(),
        "plot".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .unwrap();
    assert_eq!(recallseg_cli::run(cli).unwrap(), 0);
    let svg = std::fs::read_to_string(out.join("training.svg")).unwrap();
    for text in [
        "run_ce",
        "run_recall",
        "training loss",
        "learning rate",
        "val mean accuracy",
        "val recall: ",
    ] {
        assert!(svg.contains(text), "training.svg lacks {text:?}");
    }
    let png = image::open(out.join("training.png")).unwrap();
    let curves = [a.clone(), b.clone()]
        .iter()
        .map(|d| recallseg_compare::read_run_curves(d).unwrap())
        .collect::<Vec<_>>();
    assert!(curves
        .iter()
        .all(|c| c.loss.len() == 4 && c.mean_iou.len() == 2));
    let size = recallseg_report::training_curves::figure_size(&curves);
    assert_eq!((png.width(), png.height()), size);

    // Default --out: the first run folder.
    let cli = Cli::try_parse_from(["recallseg".as_ref(), "plot".as_ref(), a.as_os_str()]).unwrap();
    recallseg_cli::run(cli).unwrap();
    assert!(a.join("training.png").is_file() && a.join("training.svg").is_file());

    // A folder without log.jsonl: an error naming it.
    let empty = dir.path().join("not_a_run");
    std::fs::create_dir_all(&empty).unwrap();
    let cli =
        Cli::try_parse_from(["recallseg".as_ref(), "plot".as_ref(), empty.as_os_str()]).unwrap();
    let err = format!("{:#}", recallseg_cli::run(cli).unwrap_err());
    assert!(
        err.contains("not_a_run") && err.contains("log.jsonl"),
        "{err}"
    );
    if let Ok(keep) = std::env::var("RECALLSEG_KEEP_PLOT") {
        std::fs::copy(out.join("training.png"), keep).unwrap();
    }
}

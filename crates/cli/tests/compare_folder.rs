//! `recallseg compare` end to end on a generated folder dataset (not Synthia, not Cityscapes):
//! command-line parsing, one run per loss, the report with its tables and figures.

mod common;

use clap::Parser;
use recallseg_cli::{run, Cli};
use recallseg_report::Comparison;
use recallseg_trainer::config::Preset;

#[test]
fn compare_runs_on_a_folder_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let classes = common::tiny_folder_dataset(&dir.path().join("mine"));
    // The user's config: a folder dataset and a tiny model, written as a TOML file.
    let overrides: Vec<String> = vec![
        "data.kind=\"folder\"".into(),
        format!("data.root={:?}", classes.display().to_string()),
        "data.generate_synthetic=false".into(),
        "data.height=32".into(),
        "data.width=64".into(),
        "data.workers=1".into(),
        "model.backbone_width=4".into(),
        "model.head_channels=8".into(),
        "model.low_level_channels=4".into(),
        "train.batch_size=2".into(),
        "train.iters=2".into(),
        "train.val_every=0".into(),
        "train.log_every=1".into(),
    ];
    let cfg = Preset::SynthiaQuick.config(&overrides).unwrap();
    let config = dir.path().join("my.toml");
    std::fs::write(&config, cfg.to_toml().unwrap()).unwrap();
    let out = dir.path().join("report");
    let cli = Cli::try_parse_from([
        "recallseg",
        "compare",
        "--config",
        config.to_str().unwrap(),
        "--losses",
        "ce,weighted_ce,focal,recall",
        "--out",
        out.to_str().unwrap(),
        "--examples",
        "2",
        "--no-progress",
    ])
    .unwrap();
    assert_eq!(run(cli).unwrap(), 0);
    for f in [
        "report.md",
        "results.json",
        "fig1_acc_vs_iou.svg",
        "fig1_acc_vs_iou.png",
        "fig4_class_weights.svg",
        "fig4_class_weights.png",
        "examples.png",
        "runs/recall_ce/metrics.csv",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let cmp: Comparison =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(cmp.setting.dataset, "folder");
    assert_eq!(cmp.class_names, ["background", "road stripe", "dot"]);
    assert_eq!(
        cmp.runs
            .iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>(),
        ["CE", "WeightedCE", "Focal", "Recall"]
    );
    // 12 images split 70/10/20: 3 test images (round-off of the shuffle protocol aside).
    assert!(cmp.setting.test_images >= 2);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("# Loss comparison on `"), "{md}");
    assert!(md.contains("| road stripe |"), "{md}");
    assert!(md.contains("## Minority classes"), "{md}");
    assert!(!md.contains("paper's numbers"), "{md}");
    // Every loss has a column in the examples: image, ground truth, four predictions.
    let img = image::open(out.join("examples.png")).unwrap();
    assert_eq!(img.width(), 6 * 192 + 7 * 4);
    // A loss given twice is refused before anything runs.
    let cli = Cli::try_parse_from([
        "recallseg",
        "compare",
        "--config",
        config.to_str().unwrap(),
        "--losses",
        "ce,cross_entropy",
    ])
    .unwrap();
    let e = run(cli).unwrap_err().to_string();
    assert!(e.contains("each loss runs once"), "{e}");
}

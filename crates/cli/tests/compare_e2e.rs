//! The comparison runner end to end on a tiny generated dataset: report files, reuse of
//! finished runs.

use recallseg_compare::{
    loss_run, run_comparison, CompareOptions, CompareOutcome, ComparisonPlan, Evaluate,
};
use recallseg_data::{generate_synthia, SyntheticConfig};
use recallseg_trainer::config::Preset;

#[test]
fn comparison_writes_a_report_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    generate_synthia(
        &root,
        &SyntheticConfig {
            seed: 5,
            width: 64,
            height: 32,
            cameras: vec!["Omni_F".into()],
            sides: vec!["Stereo_Left".into()],
            frames_per_folder: 10,
            ..SyntheticConfig::default()
        },
    )
    .unwrap();
    let o: Vec<String> = [
        format!("data.root={:?}", root.display().to_string()),
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
    ]
    .into_iter()
    .collect();
    let base = Preset::SynthiaQuick.config(&o).unwrap();
    let out = dir.path().join("results");
    let plan = ComparisonPlan {
        title: "tiny".into(),
        base,
        losses: vec![
            loss_run("ce").unwrap(),
            loss_run("weighted").unwrap(),
            loss_run("recall").unwrap(),
        ],
        out_dir: out.clone(),
        examples: 2,
        synthetic: true,
        notes: vec![],
        evaluate: Evaluate::Final,
    };
    let opts = CompareOptions {
        quiet: true,
        ..CompareOptions::default()
    };
    let CompareOutcome::Done(cmp, written) = run_comparison(&plan, &opts).unwrap() else {
        panic!("interrupted")
    };
    assert!(written.warnings.is_empty(), "{:?}", written.warnings);
    assert_eq!(cmp.runs.len(), 3);
    assert_eq!(
        cmp.runs
            .iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>(),
        ["CE", "WeightedCE", "Recall"]
    );
    assert_eq!(cmp.setting.test_images, 2);
    assert!(
        cmp.runs[2].class_weights.len() == 2,
        "recall weights logged at both steps"
    );
    for f in [
        "report.md",
        "results.json",
        "fig1_acc_vs_iou.svg",
        "fig1_acc_vs_iou.png",
        "fig4_class_weights.png",
        "examples.png",
        "confusion_cross_entropy.svg",
        "confusion_recall_ce.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Each run keeps its test confusion matrix, the one its report was computed from.
    for r in &cmp.runs {
        let m = r.confusion.as_ref().expect("confusion matrix kept");
        assert_eq!(m.report_with_names(&cmp.class_names).unwrap(), r.test);
    }
    let img = image::open(out.join("examples.png")).unwrap();
    // 5 columns of 64 px scaled ×3 (192 / 64); 2 rows of 96 px, each with its zoom row when a
    // rare class is present, and the legend below.
    assert_eq!(img.width(), 5 * 192 + 6 * 4);
    assert!(img.height() > 28 + 2 * (96 + 4) + 4);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("This comparison ran on synthetic data"));
    assert!(md.contains("| WeightedCE |"));
    // Run again: every run is reused, nothing retrained.
    let summary = out.join("runs/recall_ce/summary.json");
    let before = std::fs::metadata(&summary).unwrap().modified().unwrap();
    let CompareOutcome::Done(cmp2, _) = run_comparison(&plan, &opts).unwrap() else {
        panic!("interrupted")
    };
    assert_eq!(
        std::fs::metadata(&summary).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(cmp2.runs, cmp.runs);
    // The second invocation's wall time adds to the first's (comparison-time.json): a
    // comparison interrupted and resumed counts every part.
    assert!(
        cmp2.wall_seconds >= cmp.wall_seconds,
        "{} after {}",
        cmp2.wall_seconds,
        cmp.wall_seconds
    );
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison-time.json")).unwrap())
            .unwrap();
    assert!(kept["seconds"].as_f64().unwrap() >= cmp2.wall_seconds);
    assert!(cmp.runs.iter().all(|r| r.evaluated == "final"));
    // Asking for both weights re-evaluates the finished runs (no retraining: the final
    // checkpoint is at the last step) and reports the final weights beside the best ones.
    let log = out.join("runs/recall_ce/log.jsonl");
    let log_before = std::fs::read(&log).unwrap();
    let both = ComparisonPlan {
        evaluate: Evaluate::Both,
        ..plan.clone()
    };
    let CompareOutcome::Done(cmp3, _) = run_comparison(&both, &opts).unwrap() else {
        panic!("interrupted")
    };
    assert_eq!(std::fs::read(&log).unwrap(), log_before, "retrained");
    for r in &cmp3.runs {
        assert_eq!(r.evaluated, "best");
        assert!(r.test_other.is_some());
    }
    // val_every = 0: the only validation is the final one, so best and final coincide.
    assert_eq!(cmp3.runs[0].test_other.as_ref(), Some(&cmp.runs[0].test));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## With the final weights"), "{md}");
    assert!(md.contains("with the best-validation weights"), "{md}");
    // Another configuration in the same folder: refused, the finished runs kept; replaced
    // only with `overwrite`.
    let mut changed = plan.clone();
    changed.base.optim.lr = 0.01;
    let last = out.join("runs/cross_entropy/last.safetensors");
    let last_before = std::fs::read(&last).unwrap();
    let e = format!("{:#}", run_comparison(&changed, &opts).unwrap_err());
    assert!(
        e.contains("another configuration") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        last_before,
        "a finished run was replaced"
    );
    let overwrite = CompareOptions {
        overwrite: true,
        ..opts.clone()
    };
    let CompareOutcome::Done(cmp4, _) = run_comparison(&changed, &overwrite).unwrap() else {
        panic!("interrupted")
    };
    assert_ne!(cmp4.runs[0].test, cmp.runs[0].test, "not retrained");
}

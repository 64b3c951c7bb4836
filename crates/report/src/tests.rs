//! Report writer on a small hand-made comparison.

use super::*;
use recallseg_metrics::ConfusionMatrix;

const NAMES: [&str; 4] = ["road", "car", "pole", "bicycle"];

/// A report where predictions equal the ground truth except `wrong[c]` pixels of class c
/// predicted as road, and `fp` road pixels predicted as bicycle.
fn matrix(wrong: [usize; 4], fp: usize) -> ConfusionMatrix {
    let mut gt = Vec::new();
    let mut pred = Vec::new();
    for (c, n) in [(0u8, 200usize), (1, 60), (2, 30), (3, 10)] {
        for i in 0..n {
            gt.push(c);
            pred.push(if i < wrong[c as usize] { 0 } else { c });
        }
    }
    for p in pred.iter_mut().take(fp) {
        *p = 3;
    }
    let mut m = ConfusionMatrix::new(4);
    m.update(&gt, &pred).unwrap();
    m
}

/// A run whose test report (and kept confusion matrix) is `matrix(wrong, fp)`'s.
fn run(name: &str, label: &str, (wrong, fp): ([usize; 4], usize), weights: bool) -> RunSummary {
    let m = matrix(wrong, fp);
    let rep = m.report_with_names(&NAMES).unwrap();
    RunSummary {
        loss_name: name.into(),
        label: label.into(),
        loss_config: serde_json::json!({ "name": name }),
        test: rep,
        evaluated: "final".into(),
        test_other: None,
        confusion: Some(m),
        best_val: Some((0.5, 20)),
        iters: 30,
        train_seconds: 12.0,
        class_weights: if weights {
            (1..=3)
                .map(|s| {
                    (
                        10 * s,
                        vec![
                            Some(0.1),
                            Some(0.2 * s as f32),
                            (s != 2).then_some(0.3),
                            Some(0.4 / s as f32),
                        ],
                    )
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// A run with the given test report and no confusion matrix.
fn run_with(name: &str, label: &str, rep: Report, weights: bool) -> RunSummary {
    RunSummary {
        test: rep,
        confusion: None,
        ..run(name, label, ([0; 4], 0), weights)
    }
}

pub(crate) fn comparison(synthetic: bool) -> Comparison {
    Comparison {
        title: "Loss comparison".into(),
        setting: Setting {
            dataset: "synthia".into(),
            data_root: "data/synthia-synthetic".into(),
            synthetic,
            backbone: "resnet18".into(),
            backbone_width: if synthetic { 8 } else { 64 },
            head: "deeplabv3plus".into(),
            output_stride: 16,
            pretrained: if synthetic { "none" } else { "imagenet" }.into(),
            train_size: if synthetic { (32, 64) } else { (384, 768) },
            eval_size: (32, 64),
            batch_size: 2,
            iters: if synthetic { 30 } else { 100_000 },
            optimizer: "adam, lr 0.001, constant".into(),
            device: "cpu".into(),
            seed: 0,
            test_split: "test".into(),
            test_images: 3,
        },
        class_names: NAMES.iter().map(|s| s.to_string()).collect(),
        palette: vec![[128, 64, 128], [0, 0, 142], [153, 153, 153], [119, 11, 32]],
        class_frequency: Some(vec![0.6, 0.2, 0.15, 0.05]),
        runs: vec![
            run("cross_entropy", "CE", ([0, 20, 3, 8], 0), false),
            run("weighted_ce", "WeightedCE", ([0, 2, 0, 0], 40), false),
            run("focal", "Focal", ([0, 18, 3, 7], 0), true),
            run("recall_ce", "Recall", ([0, 8, 2, 2], 4), true),
        ],
        wall_seconds: 61.0,
        notes: vec!["a note".into()],
        metrics: Default::default(),
    }
}

fn examples() -> ExampleSet {
    let (h, w) = (8, 16);
    // Four stripes of 4 columns (road, car, pole, pole) with a 2x2 bicycle at x 12-13, y 2-3.
    let gt: Vec<u8> = (0..h * w)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            match (x / 4) as u8 {
                3 if (12..14).contains(&x) && (2..4).contains(&y) => 3,
                3 => 2,
                c => c,
            }
        })
        .collect();
    let mut pred = gt.clone();
    pred[0] = 255;
    ExampleSet {
        height: h,
        width: w,
        columns: vec!["CE".into(), "Recall".into()],
        rows: vec![ExampleRow {
            id: "000001".into(),
            image: (0..h * w * 3).map(|i| (i % 251) as u8).collect(),
            ground_truth: gt.clone(),
            predictions: vec![gt, pred],
        }],
    }
}

#[test]
fn minority_classes_follow_the_ce_iou_rule() {
    let cmp = comparison(true);
    // CE: road IoU = 200/231 < 0.8? road gets 31 false positives: 200/(200+31) = 0.866 -> not.
    // car 40/60, pole 27/30, bicycle 2/10 -> car, bicycle below 0.8; pole 0.9 not.
    assert_eq!(cmp.minority_classes(), vec![1, 3]);
}

#[test]
fn writes_every_file_of_a_synthetic_report() {
    let dir = tempfile::tempdir().unwrap();
    let cmp = comparison(true);
    let written = write_report(dir.path(), &cmp, Some(&examples())).unwrap();
    assert!(written.warnings.is_empty(), "{:?}", written.warnings);
    for f in [
        "report.md",
        "results.json",
        "fig1_acc_vs_iou.svg",
        "fig1_acc_vs_iou.png",
        "fig4_class_weights.svg",
        "fig4_class_weights.png",
        "examples.png",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("This comparison ran on synthetic data"));
    assert!(md.contains("does **not** match the paper's"));
    assert!(md.contains("synthetic generated data"));
    assert!(md.contains("no ImageNet pre-training"));
    assert!(md.contains("## Minority classes (Table II style)"));
    assert!(md.contains("| accuracy (%) | car | bicycle | ave. |"));
    // CE's minority accuracy: car 40/60, bicycle 2/10 -> 66.67, 20.00, ave 43.33.
    assert!(md.contains("| CE | 66.67 | 20.00 | 43.33 |"), "{md}");
    // Precision of the minority classes: WeightedCE's 40 false bicycles give 10/50 = 20%.
    assert!(
        md.contains("| precision (%) | car | bicycle | ave. |"),
        "{md}"
    );
    assert!(
        md.contains("| WeightedCE | 100.00 | 20.00 | 60.00 |"),
        "{md}"
    );
    // The paper's Table II is shown for orientation.
    assert!(md.contains("| Recall | 98.28 | 83.94 | 87.37 | 72.69 | 89.19 | 87.24 | 84.09 |"));
    assert!(md.contains("(reference)"));
    assert!(md.contains("acc. ↑"));
    assert!(md.contains("![mean accuracy vs mean IoU](fig1_acc_vs_iou.svg)"));
    assert!(md.contains("Columns: image, ground truth, CE, Recall."));
    // results.json round-trips.
    let back: Comparison =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(back, cmp);
    // Figures carry the loss labels and class names.
    let svg = std::fs::read_to_string(dir.path().join("fig1_acc_vs_iou.svg")).unwrap();
    if std::env::var("PEEK").is_ok() {
        std::fs::copy(dir.path().join("fig1_acc_vs_iou.svg"), "/tmp/peek_fig1.svg").unwrap();
        for f in [
            "fig1_acc_vs_iou.png",
            "fig4_class_weights.png",
            "examples.png",
            "report.md",
        ] {
            std::fs::copy(dir.path().join(f), format!("/tmp/peek_{f}")).unwrap();
        }
    }
    for l in ["CE", "WeightedCE", "Focal", "Recall"] {
        assert!(svg.contains(&format!(">\n{l}\n<")), "{l} not in fig1");
    }
    let svg4 = std::fs::read_to_string(dir.path().join("fig4_class_weights.svg")).unwrap();
    assert!(svg4.contains("recall / focal weight ratio"));
    assert!(svg4.contains(">\nbicycle\n<"));
    // The example picture: 2 + 2 columns of 16 px scaled by 4 (4, since 192/16 = 12 > 4).
    let img = image::open(dir.path().join("examples.png"))
        .unwrap()
        .to_rgb8();
    // Rows: title, the example, its zoom on the rarest class (bicycle, 5%), the legend (4
    // classes, one entry of 150 px per line of 276 px -> 4 lines).
    assert_eq!(img.width() as usize, 4 * 64 + 5 * 4);
    assert_eq!(
        img.height() as usize,
        28 + (32 + 4) + (32 + 4) + 4 + 4 * 20 + 4
    );
    // Ground-truth tile, second pixel: class 0 -> road colour.
    let gx = 4 + 64 + 4 + 1;
    assert_eq!(img.get_pixel(gx as u32, 29).0, [128, 64, 128]);
    // Recall's prediction has an ignore pixel at (0, 0): black.
    let rx = 4 + 3 * (64 + 4);
    assert_eq!(img.get_pixel(rx as u32, 28).0, [0, 0, 0]);
    // The zoom row magnifies the window (10, 1, 4, 2) around the bicycle (x 12-13, y 2-3) by 16:
    // source pixel (12, 2) is at (32.., 16..) of the zoomed ground-truth tile.
    let (_, win) =
        zoom_window(&examples().rows[0].ground_truth, 16, 8, &cmp.zoom_classes()).unwrap();
    assert_eq!(win, (10, 1, 4, 2));
    let zy = 28 + 32 + 4 + 20;
    assert_eq!(img.get_pixel(gx as u32 - 1 + 40, zy).0, [119, 11, 32]);
    // The window is outlined in yellow on the full-size ground truth.
    let (_, (zx, wy, _, _)) =
        zoom_window(&examples().rows[0].ground_truth, 16, 8, &cmp.zoom_classes()).unwrap();
    assert_eq!(
        img.get_pixel((gx - 1 + 4 * zx) as u32, (28 + 4 * wy) as u32)
            .0,
        [255, 221, 0]
    );
    // The legend's first swatch is road's colour.
    let ly = 28 + 2 * (32 + 4) + 4 + 5;
    assert_eq!(img.get_pixel(4 + 5, ly as u32).0, [128, 64, 128]);
}

#[test]
fn paper_setting_gets_side_by_side_numbers() {
    let cmp = comparison(false);
    assert!(cmp.setting.matching_paper_table().is_some());
    let md = render_markdown(&cmp, &[], None);
    assert!(md.contains("## Side by side with the paper"));
    assert!(!md.contains("synthetic data"));
    // Our Recall row maps `bicycle` to the paper's bike column: 8/10 = 80.00.
    assert!(md.contains("| Recall (paper) | 98.28 |"));
    let ours = md
        .lines()
        .find(|l| l.starts_with("| Recall (ours) |"))
        .unwrap();
    // pole, sign(-), pedestrian(-), bike, car, light(-)
    assert_eq!(
        ours,
        "| Recall (ours) | 93.33 | - | - | 80.00 | 86.67 | - |"
    );
}

#[test]
fn inconsistent_inputs_are_rejected() {
    let mut cmp = comparison(true);
    cmp.palette.pop();
    let dir = tempfile::tempdir().unwrap();
    let e = write_report(dir.path(), &cmp, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("palette"), "{e}");
    let bad = ExampleSet {
        rows: vec![ExampleRow {
            image: vec![0; 3],
            ..examples().rows[0].clone()
        }],
        ..examples()
    };
    let cmp = comparison(true);
    let e = render_examples(
        &bad,
        &cmp.class_names,
        &cmp.palette,
        &[],
        &dir.path().join("x.png"),
    )
    .unwrap_err();
    assert!(e.contains("000001"), "{e}");
}

#[test]
fn the_zoom_window_surrounds_the_rarest_class_present() {
    // A 40x20 label map: road everywhere, one 2x3 pole at (30, 5), one bicycle pixel at (3, 18).
    let (w, h) = (40, 20);
    let mut gt = vec![0u8; w * h];
    for y in 5..8 {
        for x in 30..32 {
            gt[y * w + x] = 2;
        }
    }
    gt[18 * w + 3] = 3;
    // Bicycle first: a quarter-size window inside the image around (3, 18).
    let (c, (x0, y0, zw, zh)) = zoom_window(&gt, w, h, &[3, 2]).unwrap();
    assert_eq!((c, zw, zh), (3, 10, 5));
    assert!(x0 <= 3 && 3 < x0 + zw && y0 <= 18 && 18 < y0 + zh);
    assert!(x0 + zw <= w && y0 + zh <= h);
    // A class that is absent is skipped; none present gives no window.
    let (c, (x0, y0, _, _)) = zoom_window(&gt, w, h, &[7, 2]).unwrap();
    assert_eq!(c, 2);
    assert!(x0 <= 30 && y0 <= 5);
    assert_eq!(zoom_window(&gt, w, h, &[7]), None);
}

#[test]
fn fig1_labels_do_not_overlap() {
    // Four losses, two of them on the same spot and a third right next to them.
    let points = [(100, 100), (100, 100), (104, 98), (300, 50)];
    let sizes = [(40, 18), (100, 18), (60, 18), (40, 18)];
    let offs = plots::place_labels(&points, &sizes, 7);
    let rects: Vec<(i32, i32, i32, i32)> = points
        .iter()
        .zip(&sizes)
        .zip(&offs)
        .map(|((p, s), o)| (p.0 + o.0, p.1 + o.1, p.0 + o.0 + s.0, p.1 + o.1 + s.1))
        .collect();
    for i in 0..rects.len() {
        for j in 0..i {
            let (a, b) = (rects[i], rects[j]);
            let overlap = a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
            assert!(!overlap, "labels {i} and {j} overlap: {a:?} {b:?}");
        }
    }
    // An isolated point keeps the default place (up and to the right).
    assert_eq!(offs[3], (10, -20));
}

#[test]
fn normalised_weights_sum_to_one() {
    let n = plots::normalise(&[Some(1.0), None, Some(3.0)]);
    assert_eq!(n, vec![Some(0.25), None, Some(0.75)]);
    assert_eq!(plots::normalise(&[Some(0.0), None]), vec![Some(0.0), None]);
    // Gaps split a line into segments.
    let segs = plots::segments(&[Some((1.0, 0.5)), None, Some((3.0, 0.1)), Some((4.0, 0.2))]);
    assert_eq!(segs, vec![vec![(1.0, 0.5)], vec![(3.0, 0.1), (4.0, 0.2)]]);
}

#[test]
fn headline_means_follow_the_metrics_section() {
    use recallseg_metrics::ReportSettings;
    use recallseg_metrics::{Average, ZeroDivision};
    let headline = |md: &str, label: &str| -> Vec<String> {
        md.lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap()
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let mut cmp = comparison(true);
    let md = render_markdown(&cmp, &[], None);
    assert!(md.contains("like the paper's `numpy.nanmean`"), "{md}");
    assert!(md.contains("| mean F1 (%) |"), "{md}");
    let ce = cmp.baseline().unwrap().test.clone();
    let row = headline(&md, "CE");
    // Default: the report's own nanmeans; F1 = mean Dice.
    assert_eq!(
        row[2],
        format!("{:.2}", 100.0 * ce.mean_accuracy.value.unwrap())
    );
    assert_eq!(row[3], format!("{:.2}", 100.0 * ce.mean_iou.value.unwrap()));
    assert_eq!(
        row[4],
        format!("{:.2}", 100.0 * ce.mean_dice.value.unwrap())
    );

    // Micro averaging: mean accuracy becomes pixel accuracy; β = 2 renames the F column and
    // adds a per-class F2 table.
    cmp.metrics = ReportSettings {
        average: Average::Micro,
        zero_division: ZeroDivision::Fill(0.0),
        beta: 2.0,
        ..Default::default()
    };
    let md = render_markdown(&cmp, &[], None);
    let row = headline(&md, "CE");
    assert_eq!(row[2], format!("{:.2}", 100.0 * ce.pixel_accuracy.unwrap()));
    assert!(md.contains("| mean F2 (%) |"), "{md}");
    assert!(md.contains("F2 (F-beta, β = 2), %:"), "{md}");
    assert!(md.contains("Means are micro averages"), "{md}");
    assert!(
        md.contains("counts as 0 (torchmetrics' `zero_division`)"),
        "{md}"
    );
    // torchmetrics' default is named as such.
    cmp.metrics.average = Average::Macro;
    let md = render_markdown(&cmp, &[], None);
    assert!(md.contains("`zero_division`, its default"), "{md}");
}

/// A folder dataset with many classes (names with `|` and spaces): the minority tables turn to a
/// row per class; a dataset where CE is good everywhere says there are no minority classes.
#[test]
fn minority_tables_work_for_any_class_set() {
    let n = 15;
    let names: Vec<String> = (0..n).map(|c| format!("class {c}|x")).collect();
    // Class c: 20 pixels, the first `wrong` of them predicted as class 0.
    let rep = |wrong: usize| {
        let (mut gt, mut pred) = (Vec::new(), Vec::new());
        for c in 0..n as u8 {
            for i in 0..20 {
                gt.push(c);
                pred.push(if c > 0 && i < wrong { 0 } else { c });
            }
        }
        let mut m = ConfusionMatrix::new(n);
        m.update(&gt, &pred).unwrap();
        m.report_with_names(&names).unwrap()
    };
    let mut cmp = comparison(false);
    cmp.setting.dataset = "folder".into();
    cmp.class_names = names.clone();
    cmp.palette = (0..n).map(|c| [c as u8 * 10, 0, 0]).collect();
    cmp.class_frequency = None;
    cmp.runs = vec![
        run_with("cross_entropy", "CE", rep(10), false),
        run_with("recall_ce", "Recall", rep(2), false),
    ];
    // Every class but 0 has IoU 10/20 with CE; class 0 gets 140 false positives.
    assert_eq!(cmp.minority_classes(), (0..n).collect::<Vec<_>>());
    let md = render_markdown(&cmp, &[], None);
    assert!(md.contains("a row per class and a column per loss"), "{md}");
    assert!(md.contains("| accuracy (%) | CE | Recall |"), "{md}");
    assert!(md.contains("| class 3\\|x | 50.00 | 90.00 |"), "{md}");
    assert!(!md.contains("paper's numbers"), "{md}");
    // CE perfect: no minority class, said so.
    cmp.runs[0] = run_with("cross_entropy", "CE", rep(0), false);
    assert!(cmp.minority_classes().is_empty());
    let md = render_markdown(&cmp, &[], None);
    assert!(md.contains("there is no minority-class table"), "{md}");
}

#[test]
fn confusion_matrices_are_drawn_and_tabled_per_run() {
    use recallseg_metrics::Normalize;
    let dir = tempfile::tempdir().unwrap();
    let mut cmp = comparison(true);
    // A run recorded before matrices were kept has no figure.
    cmp.runs[2].confusion = None;
    let written = write_report(dir.path(), &cmp, None).unwrap();
    assert!(written.warnings.is_empty(), "{:?}", written.warnings);
    for stem in [
        "confusion_cross_entropy",
        "confusion_weighted_ce",
        "confusion_recall_ce",
    ] {
        for ext in ["svg", "png"] {
            assert!(
                dir.path().join(format!("{stem}.{ext}")).is_file(),
                "{stem}.{ext}"
            );
        }
    }
    assert!(!dir.path().join("confusion_focal.png").exists());
    if let Ok(keep) = std::env::var("KEEP_CONFUSION_FIGURE") {
        std::fs::copy(dir.path().join("confusion_weighted_ce.png"), &keep).unwrap();
    }
    let png = image::open(dir.path().join("confusion_cross_entropy.png"))
        .unwrap()
        .to_rgb8();
    // The darkest blue of the scale is there (road's diagonal cell, 100%), and the class
    // colours of the palette (the swatches beside the names).
    let has = |c: [u8; 3]| png.pixels().any(|p| p.0 == c);
    assert!(has([8, 48, 107]));
    for c in &cmp.palette {
        assert!(has(*c), "{c:?}");
    }
    let svg = std::fs::read_to_string(dir.path().join("confusion_weighted_ce.svg")).unwrap();
    for name in NAMES {
        assert!(svg.contains(name), "{name}");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("## Confusion matrices (test split)"), "{md}");
    assert!(
        md.contains("![CE confusion matrix](confusion_cross_entropy.svg)"),
        "{md}"
    );
    assert!(!md.contains("![Focal confusion matrix]"), "{md}");
    // CE: 20 of 60 cars predicted as road -> row car: 33.3 road, 66.7 car.
    assert!(md.contains("| car | 33.3 | 66.7 | 0.0 | 0.0 |"), "{md}");
    // Over the predictions: WeightedCE's 40 road pixels predicted as bicycle are 80% of the
    // bicycle column (40 of 50).
    cmp.metrics.confusion_normalize = Normalize::Pred;
    let md = render_markdown(&cmp, &[], None);
    assert!(md.contains("the diagonal is precision"), "{md}");
    assert!(md.contains("| road | 98.8 | 0.0 | 0.0 | 80.0 |"), "{md}");
    // A matrix of another class count is refused.
    cmp.runs[0].confusion = Some(ConfusionMatrix::new(3));
    let e = write_report(dir.path(), &cmp, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3-class confusion matrix"), "{e}");
}

#[test]
fn many_classes_draw_without_cell_values() {
    // 40 classes: too many to write values; the figure still draws, names and all.
    let n = 40;
    let mut m = ConfusionMatrix::new(n);
    let gt: Vec<u8> = (0..4000).map(|i| (i % n) as u8).collect();
    let pred: Vec<u8> = (0..4000).map(|i| ((i * 7 / 5) % n) as u8).collect();
    m.update(&gt, &pred).unwrap();
    let names: Vec<String> = (0..n).map(|c| format!("class {c}")).collect();
    let palette: Vec<[u8; 3]> = (0..n)
        .map(|c| [c as u8 * 6, 100, 200 - c as u8 * 4])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for ext in ["png", "svg"] {
        let path = dir.path().join(format!("m.{ext}"));
        confusion::draw_confusion(&m, &names, &palette, Default::default(), "t", &path).unwrap();
        if let Ok(keep) = std::env::var("KEEP_CONFUSION_FIGURE") {
            std::fs::copy(&path, format!("{keep}.40.{ext}")).unwrap();
        }
        assert!(path.is_file());
    }
    let e = confusion::draw_confusion(
        &m,
        &names[..3],
        &palette,
        Default::default(),
        "t",
        &dir.path().join("x.png"),
    )
    .unwrap_err();
    assert!(e.contains("3 class names"), "{e}");
    let e = confusion::draw_confusion(
        &ConfusionMatrix::new(n),
        &names,
        &palette,
        Default::default(),
        "t",
        &dir.path().join("x.png"),
    )
    .unwrap_err();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn fig4_lines_are_distinct_and_steps_whole() {
    use super::plots::line_style;
    let first: Vec<_> = (0..20).map(line_style).collect();
    for (i, (a, da)) in first.iter().enumerate() {
        assert!(!da);
        for (b, _) in &first[i + 1..] {
            // Every pair differs by a clearly visible amount in some channel.
            let d = [(a.0, b.0), (a.1, b.1), (a.2, b.2)]
                .iter()
                .map(|&(x, y)| (x as i32 - y as i32).abs())
                .max()
                .unwrap();
            assert!(d >= 40, "{a:?} vs {b:?}");
        }
    }
    assert_eq!(line_style(20), (first[0].0, true));
    assert_eq!(super::plots::step_label(&50.0), "50");
}

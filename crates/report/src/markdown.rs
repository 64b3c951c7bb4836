//! `report.md`.

use super::paper::{same_class, PaperTable};
use super::{Comparison, ExampleSet, RunSummary};
use recallseg_metrics::{Average, Score, ZeroDivision};
use std::fmt::Write;

/// The F-beta score's name: `F1`, `F2`, `F0.5`.
pub(crate) fn fbeta_name(beta: f64) -> String {
    format!("F{beta}")
}

/// One sentence on how the means of the report are taken.
fn averaging_sentence(cmp: &Comparison) -> String {
    let m = &cmp.metrics;
    let how = match m.average {
        Average::Macro => {
            "Means are macro means over the classes present in the ground truth or \
                           the prediction"
        }
        Average::Micro => {
            "Means are micro averages (the score of the counts summed over \
                           classes; micro recall is pixel accuracy)"
        }
        Average::Weighted => "Means are weighted by each class's ground-truth pixels",
        Average::None => "Means are per class",
    };
    let undefined = match m.zero_division {
        ZeroDivision::Skip => {
            "; a class whose score is undefined (0/0, e.g. the recall of a class absent from the \
             ground truth) is left out, like the paper's `numpy.nanmean`"
                .to_string()
        }
        ZeroDivision::Fill(v) => format!(
            "; a class whose score is undefined (0/0) counts as {v} (torchmetrics' \
             `zero_division`{})",
            if m.average == Average::Macro && v == 0.0 {
                ", its default"
            } else {
                ""
            }
        ),
    };
    format!("{how}{undefined} (`[metrics]` in the configuration).")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v))
}

fn signed(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:+.2}")
    }
}

/// Why a setting is not the paper's (empty when it is).
fn mismatches(cmp: &Comparison) -> Vec<String> {
    let s = &cmp.setting;
    let mut out = Vec::new();
    if s.synthetic {
        out.push("synthetic generated data instead of the real dataset".to_string());
    }
    if s.backbone != "resnet18" {
        out.push(format!(
            "backbone {} (the tables use ResNet-18)",
            s.backbone
        ));
    }
    if s.backbone_width != 64 {
        out.push(format!(
            "a thin backbone (first-stage width {} instead of 64)",
            s.backbone_width
        ));
    }
    if s.pretrained == "none" {
        out.push("no ImageNet pre-training (trained from scratch)".to_string());
    }
    let (want_size, want_iters) = match s.dataset.as_str() {
        "cityscapes" => ((769, 769), 90_000),
        _ => ((384, 768), 100_000),
    };
    if s.train_size != want_size {
        out.push(format!(
            "{}×{} training images instead of {}×{}",
            s.train_size.1, s.train_size.0, want_size.1, want_size.0
        ));
    }
    if s.iters < want_iters {
        out.push(format!("{} iterations instead of {}", s.iters, want_iters));
    }
    out
}

/// Renders `report.md`. `figures` lists the figure stems that were drawn.
pub fn render_markdown(
    cmp: &Comparison,
    figures: &[String],
    examples: Option<&ExampleSet>,
) -> String {
    let mut md = String::new();
    setting_section(&mut md, cmp);
    means_section(&mut md, cmp);
    other_weights_section(&mut md, cmp);
    minority_section(&mut md, cmp);
    paper_section(&mut md, cmp);
    figures_section(&mut md, figures, examples);
    confusion_section(&mut md, cmp, figures);
    per_class_section(&mut md, cmp);
    md
}

/// Mean accuracy (mean recall) of a run, in percent, averaged as the report says.
fn mean_acc(cmp: &Comparison, r: &RunSummary) -> f64 {
    cmp.mean_pct(r, Score::Recall)
}

/// Mean IoU of a run, in percent, averaged as the report says.
fn mean_iou(cmp: &Comparison, r: &RunSummary) -> f64 {
    cmp.mean_pct(r, Score::Iou)
}

/// The title, the synthetic-data warning, the setting table and the notes.
fn setting_section(md: &mut String, cmp: &Comparison) {
    let s = &cmp.setting;
    let _ = writeln!(md, "# {}\n", cmp.title);
    if s.synthetic {
        let _ = writeln!(
            md,
            "> **This comparison ran on synthetic data.** The images are the generated \
             Synthia-format dataset in `{}`, not SYNTHIA, and the model and schedule are scaled \
             down to run on a CPU in minutes. Its numbers cannot be compared with the paper's; \
             only the qualitative pattern (which loss trades what) can.\n",
            s.data_root.display()
        );
    }

    let _ = writeln!(md, "## Setting\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let rows = [
        (
            "dataset",
            format!("{} (`{}`)", s.dataset, s.data_root.display()),
        ),
        (
            "model",
            format!(
                "{} on {} (first-stage width {}), output stride {}",
                s.head, s.backbone, s.backbone_width, s.output_stride
            ),
        ),
        ("pretrained backbone", s.pretrained.clone()),
        (
            "training input",
            format!("{}×{} (width×height)", s.train_size.1, s.train_size.0),
        ),
        (
            "evaluation input",
            format!("{}×{}", s.eval_size.1, s.eval_size.0),
        ),
        ("batch size", s.batch_size.to_string()),
        ("iterations per loss", s.iters.to_string()),
        ("optimiser", s.optimizer.clone()),
        ("device", s.device.clone()),
        ("seed", s.seed.to_string()),
        (
            "evaluated on",
            format!(
                "`{}` split, {} images, with the {} weights{}",
                s.test_split,
                s.test_images,
                match cmp.runs.first().map(|r| r.evaluated.as_str()) {
                    Some("best") => "best-validation",
                    _ => "final",
                },
                if cmp.runs.iter().any(|r| r.test_other.is_some()) {
                    " (the other weights are reported below)"
                } else {
                    ""
                }
            ),
        ),
        (
            "wall time of the comparison",
            recallseg_metrics::format_seconds(cmp.wall_seconds),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    md.push('\n');
    for n in &cmp.notes {
        let _ = writeln!(md, "- {n}");
    }
    if !cmp.notes.is_empty() {
        md.push('\n');
    }
}

/// Mean accuracy, mean IoU and mean F-beta of every run, with Δ to cross entropy.
fn means_section(md: &mut String, cmp: &Comparison) {
    // Means.
    let base = cmp.baseline();
    let _ = writeln!(
        md,
        "## Mean accuracy and mean IoU (test split, all classes)\n"
    );
    let fb = fbeta_name(cmp.metrics.beta);
    let _ = writeln!(
        md,
        "Mean accuracy is the mean per-class recall TP/(TP+FN); mean IoU is the mean of \
         TP/(TP+FN+FP); {fb} is the F-beta score (1+β²)·TP/((1+β²)·TP+β²·FN+FP) with β = {} \
         (F1 = Dice). {} Δ columns are differences to cross entropy in percentage points; the \
         quadrant says where the loss lies relative to CE in the Fig. 1 plot.\n",
        cmp.metrics.beta,
        averaging_sentence(cmp)
    );
    let _ = writeln!(
        md,
        "| loss | mean acc. (%) | mean IoU (%) | mean {fb} (%) | Δ acc. | Δ IoU | quadrant vs CE | pixel acc. (%) | best val. mIoU (%) @ step | training time |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    let acc = |r: &RunSummary| mean_acc(cmp, r);
    let iou = |r: &RunSummary| mean_iou(cmp, r);
    for r in &cmp.runs {
        let (da, di) = match base {
            Some(b) => (acc(r) - acc(b), iou(r) - iou(b)),
            None => (f64::NAN, f64::NAN),
        };
        let quadrant = match base {
            Some(b) if b.loss_name == r.loss_name => "(reference)".to_string(),
            Some(_) if da.is_nan() || di.is_nan() => "-".to_string(),
            Some(_) => match (da >= 0.0, di >= 0.0) {
                (true, true) => "acc. ↑ IoU ↑ (upper right)",
                (true, false) => "acc. ↑ IoU ↓",
                (false, true) => "acc. ↓ IoU ↑",
                (false, false) => "acc. ↓ IoU ↓",
            }
            .to_string(),
            None => "-".to_string(),
        };
        let best = r
            .best_val
            .map_or("-".to_string(), |(v, s)| format!("{:.2} @ {s}", 100.0 * v));
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.label,
            acc(r),
            iou(r),
            cmp.mean_pct(r, Score::FBeta),
            signed(da),
            signed(di),
            quadrant,
            pct(r.test.pixel_accuracy),
            best,
            recallseg_metrics::format_seconds(r.train_seconds)
        );
    }
    md.push('\n');
}

/// The other weights (best-validation vs final), when both were evaluated.
fn other_weights_section(md: &mut String, cmp: &Comparison) {
    let acc = |r: &RunSummary| mean_acc(cmp, r);
    let iou = |r: &RunSummary| mean_iou(cmp, r);
    // The other weights (best-validation vs final), when both were evaluated.
    if let Some(first) = cmp.runs.iter().find(|r| r.test_other.is_some()) {
        let other = first.other_weights();
        let _ = writeln!(
            md,
            "## With the {} weights\n\nThe same runs evaluated with the {} weights ({}); Δ is \
             against the table above.\n",
            other,
            other,
            if other == "best" {
                "the checkpoint of the best validation mean IoU, what the paper's `test.py` \
                 evaluates"
            } else {
                "after the last step"
            }
        );
        let _ = writeln!(
            md,
            "| loss | mean acc. (%) | mean IoU (%) | Δ acc. | Δ IoU |\n|---|---:|---:|---:|---:|"
        );
        for r in &cmp.runs {
            let Some(t) = &r.test_other else { continue };
            let of = |s| {
                let v = Comparison::mean_pct_of(&cmp.metrics, t, s);
                (!v.is_nan()).then_some(v)
            };
            let (acc_o, iou_o) = (of(Score::Recall), of(Score::Iou));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                r.label,
                acc_o.map_or("-".into(), |v| format!("{v:.2}")),
                iou_o.map_or("-".into(), |v| format!("{v:.2}")),
                acc_o.map_or("-".into(), |v| signed(v - acc(r))),
                iou_o.map_or("-".into(), |v| signed(v - iou(r))),
            );
        }
        md.push('\n');
    }
}

/// The minority classes' tables, Table II style (or why there are none).
fn minority_section(md: &mut String, cmp: &Comparison) {
    let base = cmp.baseline();
    // Minority classes, Table II style.
    let minority = cmp.minority_classes();
    if minority.is_empty() && !cmp.runs.is_empty() {
        let _ = writeln!(md, "## Minority classes (Table II style)\n");
        let _ = writeln!(
            md,
            "No class present in the test split has a test IoU below 80% with {} (the paper's † \
             rule), so there is no minority-class table; the per-class tables below have every \
             class.\n",
            if base.is_some() {
                "cross entropy"
            } else {
                "the first loss"
            }
        );
    }
    if !minority.is_empty() && !cmp.runs.is_empty() {
        let names: Vec<&str> = minority
            .iter()
            .map(|&c| cmp.class_names[c].as_str())
            .collect();
        let _ = writeln!(md, "## Minority classes (Table II style)\n");
        let _ = writeln!(
            md,
            "Classes whose test IoU with {} is below 80% (the paper's † rule): {}. \
             \"ave.\" is their mean. Accuracy is the class's recall (missed pixels are its \
             false negatives); precision is the share of the pixels predicted as the class that \
             are the class (its false positives); IoU combines both.\n",
            if base.is_some() {
                "cross entropy"
            } else {
                "the first loss"
            },
            names.join(", ")
        );
        if minority.len() > MAX_WIDE_COLUMNS {
            let _ = writeln!(
                md,
                "With {} minority classes the tables have a row per class and a column per \
                 loss.\n",
                minority.len()
            );
        }
        minority_table(md, cmp, &minority, "accuracy", |r, c| {
            r.test.classes[c].recall
        });
        minority_table(md, cmp, &minority, "IoU", |r, c| r.test.classes[c].iou);
        // The paper's argument is false negatives against false positives: accuracy (recall)
        // counts the first, precision the second.
        minority_table(md, cmp, &minority, "precision", |r, c| {
            r.test.classes[c].precision
        });
    }
}

/// The paper's numbers: side by side when the setting matches, for orientation otherwise.
fn paper_section(md: &mut String, cmp: &Comparison) {
    let s = &cmp.setting;
    // The paper's numbers.
    if let Some(table) = s.matching_paper_table() {
        let _ = writeln!(md, "## Side by side with the paper\n");
        let _ = writeln!(
            md,
            "This run follows the paper's protocol, so its numbers are set beside the paper's \
             ({}).\n",
            table.caption
        );
        side_by_side(md, cmp, table);
    } else if let Some(table) = s.dataset_paper_table() {
        let why = mismatches(cmp);
        let _ = writeln!(md, "## The paper's numbers (not comparable here)\n");
        let _ = writeln!(
            md,
            "This setting does **not** match the paper's: {}. The paper's table is shown for \
             orientation only; compare the pattern, not the values. {}.\n",
            if why.is_empty() {
                "the schedule or image size differs".to_string()
            } else {
                why.join("; ")
            },
            table.caption
        );
        paper_table(md, table);
    }
}

/// The figures: Fig. 1, Fig. 4 and the example predictions.
fn figures_section(md: &mut String, figures: &[String], examples: Option<&ExampleSet>) {
    // Figures.
    if !figures.is_empty() || examples.is_some() {
        let _ = writeln!(md, "## Figures\n");
    }
    if figures.iter().any(|f| f == "fig1_acc_vs_iou") {
        let _ = writeln!(
            md,
            "Mean accuracy vs mean IoU per loss (like the paper's Fig. 1); the dashed lines are \
             cross entropy's values, so the upper-right quadrant holds losses that improve both.\n\n\
             ![mean accuracy vs mean IoU](fig1_acc_vs_iou.svg)\n"
        );
    }
    if figures.iter().any(|f| f == "fig4_class_weights") {
        let _ = writeln!(
            md,
            "Per-class loss weights over training, normalised to sum to one across classes (like \
             the paper's Fig. 4): the focal weight is the class's mean (1 − p)^γ, the recall \
             weight its 1 − recall on the batch.\n\n\
             ![normalised class weights](fig4_class_weights.svg)\n"
        );
    }
    if let Some(ex) = examples {
        let _ = writeln!(
            md,
            "Example test predictions (like the paper's Fig. 3). Columns: image, ground truth, {}.\n\n\
             ![example predictions](examples.png)\n",
            ex.columns.join(", ")
        );
    }
}

/// One confusion matrix per run: the figure and the numbers.
fn confusion_section(md: &mut String, cmp: &Comparison, figures: &[String]) {
    // Confusion matrices.
    let with_matrix: Vec<&RunSummary> = cmp.runs.iter().filter(|r| r.confusion.is_some()).collect();
    if !with_matrix.is_empty() {
        let norm = cmp.metrics.confusion_normalize;
        let _ = writeln!(md, "## Confusion matrices (test split)\n");
        let _ = writeln!(
            md,
            "Rows are the ground truth, columns the prediction, {} (`[metrics] \
             confusion_normalize = \"{}\"`). Classes absent from both the ground truth and the \
             predictions are left out; a class absent from the ground truth only has an empty \
             row (its name is grey in the figures).\n",
            super::confusion::normalize_caption(norm),
            norm
        );
        for r in with_matrix {
            let stem = super::confusion_stem(r);
            if figures.contains(&stem) {
                let _ = writeln!(md, "![{} confusion matrix]({stem}.svg)\n", r.label);
            }
            if let Some(m) = &r.confusion {
                let _ = writeln!(
                    md,
                    "<details><summary>{}: the matrix in numbers{}</summary>\n\n{}\n</details>\n",
                    r.label,
                    if norm == recallseg_metrics::Normalize::None {
                        ""
                    } else {
                        " (%)"
                    },
                    super::confusion::markdown_table(m, &cmp.class_names, norm)
                );
            }
        }
    }
}

/// Per-class accuracy, IoU and F-beta of every run.
fn per_class_section(md: &mut String, cmp: &Comparison) {
    let fb = fbeta_name(cmp.metrics.beta);
    // All classes.
    if !cmp.runs.is_empty() {
        let _ = writeln!(md, "## Per-class results (test split, all classes)\n");
        let fb_what = format!("{fb} (F-beta, β = {})", cmp.metrics.beta);
        // F-beta with the report's β (a stored report holds β = 1).
        let tests: Vec<recallseg_metrics::Report> = cmp
            .runs
            .iter()
            .map(|r| {
                r.test
                    .clone()
                    .with_beta(cmp.metrics.beta)
                    .unwrap_or_else(|_| r.test.clone())
            })
            .collect();
        for (what, get) in [
            ("Accuracy (recall)", Score::Recall),
            ("IoU", Score::Iou),
            (fb_what.as_str(), Score::FBeta),
        ] {
            let _ = writeln!(md, "{what}, %:\n");
            let mut head = "| class |".to_string();
            let mut rule = "|---|".to_string();
            if cmp.class_frequency.is_some() {
                head.push_str(" train pixels (%) |");
                rule.push_str("---:|");
            }
            for r in &cmp.runs {
                let _ = write!(head, " {} |", r.label);
                rule.push_str("---:|");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            for (c, name) in cmp.class_names.iter().enumerate() {
                let _ = write!(md, "| {} |", cell(name));
                if let Some(f) = &cmp.class_frequency {
                    let _ = write!(md, " {:.3} |", 100.0 * f.get(c).copied().unwrap_or(0.0));
                }
                for t in &tests {
                    let _ = write!(md, " {} |", pct(t.classes[c].get(get)));
                }
                md.push('\n');
            }
            md.push('\n');
        }
    }
}

/// Above this many minority classes the minority tables are transposed (a row per class), so
/// a dataset with many classes still gives a readable table.
const MAX_WIDE_COLUMNS: usize = 12;

/// A class name as a Markdown table cell (`|` escaped).
fn cell(name: &str) -> String {
    name.replace('|', "\\|")
}

fn minority_table(
    md: &mut String,
    cmp: &Comparison,
    minority: &[usize],
    what: &str,
    get: impl Fn(&RunSummary, usize) -> Option<f64>,
) {
    let ave = |r: &RunSummary| {
        let def: Vec<f64> = minority.iter().filter_map(|&c| get(r, c)).collect();
        (!def.is_empty()).then(|| def.iter().sum::<f64>() / def.len() as f64)
    };
    if minority.len() > MAX_WIDE_COLUMNS {
        let _ = write!(md, "| {what} (%) |");
        for r in &cmp.runs {
            let _ = write!(md, " {} |", cell(&r.label));
        }
        let _ = writeln!(md, "\n|---|{}", "---:|".repeat(cmp.runs.len()));
        for &c in minority {
            let _ = write!(md, "| {} |", cell(&cmp.class_names[c]));
            for r in &cmp.runs {
                let _ = write!(md, " {} |", pct(get(r, c)));
            }
            md.push('\n');
        }
        let _ = write!(md, "| ave. |");
        for r in &cmp.runs {
            let _ = write!(md, " {} |", pct(ave(r)));
        }
        md.push_str("\n\n");
        return;
    }
    let _ = write!(md, "| {what} (%) |");
    for &c in minority {
        let _ = write!(md, " {} |", cell(&cmp.class_names[c]));
    }
    let _ = writeln!(md, " ave. |");
    let _ = writeln!(md, "|---|{}---:|", "---:|".repeat(minority.len()));
    for r in &cmp.runs {
        let _ = write!(md, "| {} |", cell(&r.label));
        for &c in minority {
            let _ = write!(md, " {} |", pct(get(r, c)));
        }
        let _ = writeln!(md, " {} |", pct(ave(r)));
    }
    md.push('\n');
}

fn paper_table(md: &mut String, t: &PaperTable) {
    for (what, acc) in [("accuracy", true), ("IoU", false)] {
        let _ = write!(md, "| paper {what} (%) |");
        for (c, a) in t.classes.iter().zip(t.averaged) {
            let _ = write!(md, " {c}{} |", if *a { "†" } else { "" });
        }
        let _ = writeln!(md, " ave.† |");
        let _ = writeln!(md, "|---|{}---:|", "---:|".repeat(t.classes.len()));
        for r in t.rows {
            let _ = write!(md, "| {} |", r.loss);
            for v in if acc { r.accuracy } else { r.iou } {
                let _ = write!(md, " {v:.2} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
}

fn side_by_side(md: &mut String, cmp: &Comparison, t: &PaperTable) {
    // Map paper columns to our classes.
    let cols: Vec<Option<usize>> = t
        .classes
        .iter()
        .map(|p| cmp.class_names.iter().position(|o| same_class(p, o)))
        .collect();
    for (what, acc) in [("accuracy", true), ("IoU", false)] {
        let _ = write!(md, "| {what} (%) |");
        for c in t.classes {
            let _ = write!(md, " {c} |");
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "|---|{}", "---:|".repeat(t.classes.len()));
        for row in t.rows {
            let _ = write!(md, "| {} (paper) |", row.loss);
            let vals = if acc { row.accuracy } else { row.iou };
            for v in &vals[..t.classes.len()] {
                let _ = write!(md, " {v:.2} |");
            }
            md.push('\n');
            if let Some(r) = cmp.runs.iter().find(|r| r.loss_name == row.loss_name) {
                let _ = write!(md, "| {} (ours) |", row.loss);
                for c in &cols {
                    let v = c.and_then(|c| {
                        let sc = &r.test.classes[c];
                        if acc {
                            sc.recall
                        } else {
                            sc.iou
                        }
                    });
                    let _ = write!(md, " {} |", pct(v));
                }
                md.push('\n');
            }
        }
        md.push('\n');
    }
}

//! A confusion matrix and its report from label maps (ground truth and prediction as `u8`
//! train ids, 255 = void). Run with `cargo run -p recallseg-metrics --example confusion`.

use recallseg_metrics::{Average, Averaging, ConfusionMatrix, Normalize, Score, ZeroDivision};

fn main() -> Result<(), recallseg_metrics::MetricsError> {
    let names = ["road", "car", "pole"];
    // Two 2×4 images, row by row; 255 is void (not counted).
    let gt: [[u8; 8]; 2] = [[0, 0, 0, 1, 1, 2, 255, 0], [0, 1, 1, 1, 2, 2, 0, 0]];
    let pred: [[u8; 8]; 2] = [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 2, 0, 0, 0]];
    let mut cm = ConfusionMatrix::new(names.len());
    for (g, p) in gt.iter().zip(&pred) {
        cm.update(g, p)?;
    }
    let report = cm.report_with_names(&names)?;
    println!("{report}");
    println!(
        "mean IoU {:.4}, mean accuracy {:.4}, ignored pixels {}",
        report.mean_iou.value.unwrap_or(f64::NAN),
        report.mean_accuracy.value.unwrap_or(f64::NAN),
        cm.ignored_pixels()
    );
    // torchmetrics' micro average and the matrix normalised over the ground truth.
    let micro = report.average(
        Score::Iou,
        Averaging::new(Average::Micro, ZeroDivision::Skip),
    );
    println!("micro IoU {:?}", micro.value());
    let norm = cm.normalized(Normalize::True);
    println!("pole row, over its ground truth: {:?}", norm.row(2));
    assert_eq!(cm.get(2, 0), Some(2)); // two pole pixels predicted as road
    Ok(())
}

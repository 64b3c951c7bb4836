//! A combined loss (`[loss] name = "combined"` with `[[loss.terms]]`) trains, and `log.jsonl`
//! holds each term's value next to the total; a term needing pixel counts gets them.

mod common;

use common::{quiet, tiny_config, tiny_dataset};
use recallseg_trainer::log::{read_log, LogRecord};
use recallseg_trainer::train::train;

#[test]
fn combined_loss_logs_each_term() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let mut cfg = tiny_config(&root, &out, &["train.iters=2", "train.log_every=1"]);
    cfg.loss = toml::from_str(
        "name = \"combined\"\n\
         [[terms]]\nweight = 0.5\nname = \"recall_ce\"\n\
         [[terms]]\nweight = 0.5\nname = \"lovasz\"\nper_image = true\n\
         [[terms]]\nweight = 0.1\nname = \"weighted_ce\"",
    )
    .unwrap();
    let o = train(&cfg, &quiet()).unwrap();
    assert!(o.finished);
    let log = read_log(&out.join("log.jsonl")).unwrap();
    let mut seen = 0;
    for r in &log {
        if let LogRecord::Train {
            loss, loss_terms, ..
        } = r
        {
            let t = loss_terms.as_ref().expect("a combined loss logs its terms");
            let keys: Vec<&str> = t.keys().map(String::as_str).collect();
            assert_eq!(keys, ["lovasz", "recall_ce", "weighted_ce"]);
            // log_every = 1: the logged loss is that step's, the weighted sum of its terms.
            let sum = 0.5 * t["recall_ce"] + 0.5 * t["lovasz"] + 0.1 * t["weighted_ce"];
            assert!(
                (sum - loss).abs() < 1e-5 * loss.abs().max(1.0),
                "{sum} vs {loss}"
            );
            assert!(t.values().all(|v| v.is_finite() && *v >= 0.0));
            seen += 1;
        }
    }
    assert_eq!(seen, 2);
}

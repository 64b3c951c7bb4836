//! Data-parallel training with ranks as threads of this process (`LocalGroup`): two ranks give
//! the same model as one process accumulating two micro-batches of the same global batch, the
//! recall weights come from the whole batch, a run resumes with another number of ranks, an
//! interrupt on one rank stops every rank after the same step, and diverged replicas are caught.
//! The same code runs over MPI (`tests/mpi.rs`, feature `mpi`).

mod common;

use candle_core::Device;
use common::{max_rel_diff, quiet, tiny_config, tiny_dataset, train_records, trained_params};
use recallseg_distributed::{LocalGroup, SharedCommunicator};
use recallseg_trainer::checkpoint::Checkpoint;
use recallseg_trainer::config::TrainConfig;
use recallseg_trainer::log::{read_log, LogRecord};
use recallseg_trainer::train::{train, TrainOptions, TrainOutcome};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const RUN: &[&str] = &[
    "loss.name=recall_ce",
    "optim.kind=sgd",
    "optim.lr=0.01",
    "optim.momentum=0.9",
    "train.batch_size=4",
    "train.iters=3",
    "train.val_every=3",
    "train.checkpoint_every=1",
];

fn config(root: &Path, out: &Path, extra: &[&str]) -> TrainConfig {
    let all: Vec<&str> = RUN.iter().chain(extra).copied().collect();
    tiny_config(root, out, &all)
}

/// Trains `cfgs[r]` on rank `r` of an in-process group, each rank on its own thread.
fn train_ranks(
    cfgs: Vec<TrainConfig>,
    opts: impl Fn(usize) -> TrainOptions + Sync,
) -> Vec<anyhow::Result<TrainOutcome>> {
    let ranks = LocalGroup::new(cfgs.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .zip(cfgs)
            .enumerate()
            .map(|(r, (comm, cfg))| {
                let opts = &opts;
                s.spawn(move || {
                    let comm: SharedCommunicator = Arc::new(comm);
                    let o = TrainOptions {
                        communicator: Some(comm),
                        ..opts(r)
                    };
                    train(&cfg, &o)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_ranks_equal_one_process_accumulating_two_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let (single, dp) = (dir.path().join("single"), dir.path().join("dp"));
    let o = train(&config(&root, &single, &["train.accumulate=2"]), &quiet()).unwrap();
    assert!(o.finished && o.step == 3);
    let cfg = config(&root, &dp, &["train.check_replicas_every=1"]);
    let outs = train_ranks(vec![cfg.clone(), cfg], |_| quiet());
    for o in &outs {
        let o = o.as_ref().unwrap();
        assert!(o.finished && o.step == 3);
    }
    let diff = max_rel_diff(
        &trained_params(&single.join("last.safetensors")),
        &trained_params(&dp.join("last.safetensors")),
    );
    assert!(
        diff < 1e-5,
        "2 ranks vs accumulate = 2: relative difference {diff}"
    );
    // The recall weights come from the counts of the whole batch, summed over the ranks: the
    // same as one process measuring them on its two micro-batches, exactly.
    let (a, b) = (train_records(&single), train_records(&dp));
    assert_eq!(a.len(), 3);
    for ((sa, la, wa), (sb, lb, wb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs(),
            "step {sa}: loss {la} vs {lb}"
        );
        assert!(wa.is_some());
        assert_eq!(wa, wb, "step {sa}: recall weights");
    }
    // Only rank 0 wrote: one log, whose header is there once and says how many ranks trained.
    let headers: Vec<Option<u64>> = read_log(&dp.join("log.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            LogRecord::Header { ranks, .. } => Some(*ranks),
            _ => None,
        })
        .collect();
    assert_eq!(headers, [Some(2)]);
}

#[test]
fn a_run_resumes_with_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    train(&config(&root, &whole, &["train.accumulate=2"]), &quiet()).unwrap();
    // Two steps on two ranks, then the last step on one process accumulating two.
    let cfg = config(&root, &split, &[]);
    let outs = train_ranks(vec![cfg.clone(), cfg], |_| TrainOptions {
        stop_after: Some(2),
        ..quiet()
    });
    for o in outs {
        let o = o.unwrap();
        assert!(!o.finished && o.step == 2);
    }
    let resumed = TrainOptions {
        resume: true,
        ..quiet()
    };
    let o = train(&config(&root, &split, &["train.accumulate=2"]), &resumed).unwrap();
    assert!(o.finished && o.step == 3);
    let diff = max_rel_diff(
        &trained_params(&whole.join("last.safetensors")),
        &trained_params(&split.join("last.safetensors")),
    );
    assert!(
        diff < 1e-5,
        "resumed on another rank count: relative difference {diff}"
    );
}

#[test]
fn an_interrupt_on_one_rank_stops_every_rank_after_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = config(&root, &out, &["train.checkpoint_every=0"]);
    let outs = train_ranks(vec![cfg.clone(), cfg], |r| TrainOptions {
        // Rank 1 is interrupted before it starts (a signal); rank 0 is not.
        interrupt: Some(Arc::new(AtomicBool::new(r == 1))),
        ..quiet()
    });
    for o in outs {
        let o = o.unwrap();
        assert!(!o.finished);
        assert_eq!(o.step, 1, "both ranks stop after the step that told them");
    }
    let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ck.meta.step, 1);
}

#[test]
fn replicas_that_diverge_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    // Rank 1 was launched with another learning rate: the same gradients, other updates.
    let cfgs = vec![
        config(&root, &out, &["train.check_replicas_every=1"]),
        config(
            &root,
            &out,
            &["train.check_replicas_every=1", "optim.lr=0.02"],
        ),
    ];
    for o in train_ranks(cfgs, |_| quiet()) {
        let e = format!("{:#}", o.unwrap_err());
        assert!(
            e.contains("differs from rank 0") && e.contains("after step 1"),
            "{e}"
        );
    }
}

#[test]
fn a_batch_that_does_not_divide_over_the_ranks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = config(&root, &out, &["train.batch_size=3"]);
    for o in train_ranks(vec![cfg.clone(), cfg], |_| quiet()) {
        let e = format!("{:#}", o.unwrap_err());
        assert!(
            e.contains("train.batch_size: 3") && e.contains("2 rank(s)"),
            "{e}"
        );
    }
    let overrides = [
        "train.batch_size=4".to_string(),
        "train.accumulate=3".into(),
    ];
    let e = recallseg_trainer::config::Preset::SynthiaQuick
        .config(&overrides)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("train.accumulate"), "{e}");
}

#[test]
fn sync_batch_norm_ranks_equal_one_process_on_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let (single, dp) = (dir.path().join("single"), dir.path().join("dp"));
    // Without dropout, the only difference left between one process on the batch of 4 and
    // two ranks on 2 + 2 is BatchNorm's statistics, which SyncBatchNorm takes over both ranks.
    let no_dropout = ["model.dropout=0.0", "model.decoder_dropout=[0.0, 0.0]"];
    train(&config(&root, &single, &no_dropout), &quiet()).unwrap();
    let mut sync = no_dropout.to_vec();
    sync.push("train.sync_batch_norm=true");
    let cfg = config(&root, &dp, &sync);
    for o in train_ranks(vec![cfg.clone(), cfg], |_| quiet()) {
        assert!(o.unwrap().finished);
    }
    let diff = max_rel_diff(
        &trained_params(&single.join("last.safetensors")),
        &trained_params(&dp.join("last.safetensors")),
    );
    // SyncBatchNorm sums the moments in another order than one process's fused BatchNorm
    // kernel: round-off, grown by three momentum steps.
    assert!(
        diff < 1e-4,
        "SyncBatchNorm on 2 ranks vs 1 process: relative difference {diff}"
    );
    // Per-rank statistics (the default) are another computation.
    let per_rank = dir.path().join("per_rank");
    let cfg = config(&root, &per_rank, &no_dropout);
    for o in train_ranks(vec![cfg.clone(), cfg], |_| quiet()) {
        assert!(o.unwrap().finished);
    }
    let diff = max_rel_diff(
        &trained_params(&single.join("last.safetensors")),
        &trained_params(&per_rank.join("last.safetensors")),
    );
    assert!(diff > 1e-2, "per-rank BatchNorm should differ, got {diff}");
}

#[test]
fn statistics_from_the_labels_alone_shard_exactly_too() {
    // Cross entropy with class-balanced weights: its statistics are label counts only (the
    // logits' shape stands in for the logits), summed over micro-batches and ranks.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let (single, dp) = (dir.path().join("single"), dir.path().join("dp"));
    let extra = [
        "loss.name=balanced_ce",
        "train.iters=2",
        "train.val_every=2",
    ];
    let one: Vec<&str> = extra
        .iter()
        .copied()
        .chain(["train.accumulate=2"])
        .collect();
    train(&config(&root, &single, &one), &quiet()).unwrap();
    let cfg = config(&root, &dp, &extra);
    for o in train_ranks(vec![cfg.clone(), cfg], |_| quiet()) {
        assert!(o.unwrap().finished);
    }
    let diff = max_rel_diff(
        &trained_params(&single.join("last.safetensors")),
        &trained_params(&dp.join("last.safetensors")),
    );
    assert!(diff < 1e-5, "relative difference {diff}");
    let (a, b) = (train_records(&single), train_records(&dp));
    assert_eq!(a.len(), 2);
    for ((sa, la, wa), (_, lb, wb)) in a.iter().zip(&b) {
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs(),
            "step {sa}: loss {la} vs {lb}"
        );
        assert_eq!(wa, wb, "step {sa}: class weights");
    }
}

#[test]
fn ranks_validate_their_share_and_log_the_whole_splits_metrics() {
    use recallseg_trainer::eval::{evaluate, evaluate_with_loss};
    use recallseg_trainer::predict::{Predictor, PredictorOptions};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("dp");
    // The 7 training images as validation split: 2 batches of 4 (and 3) images, one per rank.
    let cfg = config(&root, &out, &["data.val_split=train"]);
    for (rank, images) in [(0, 4), (1, 3)] {
        let shard = recallseg_data::Shard {
            index: rank,
            count: 2,
        };
        let d = recallseg_trainer::train::open_run_data_shard(&cfg, shard).unwrap();
        assert!(d.val_sharded);
        assert_eq!(d.val.unwrap().dataset().len(), images);
    }
    for o in train_ranks(vec![cfg.clone(), cfg.clone()], |_| quiet()) {
        assert!(o.unwrap().finished);
    }
    let logged = read_log(&out.join("log.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Val {
                step: 3,
                loss,
                mean_iou,
                iou,
                recall,
                ..
            } => Some((loss.unwrap(), mean_iou, iou, recall)),
            _ => None,
        })
        .next()
        .expect("a validation at step 3");
    // The final model evaluated on the whole split by one process.
    let p = Predictor::open(&out.join("last.safetensors"), &PredictorOptions::default()).unwrap();
    let d = recallseg_trainer::train::open_run_data(&cfg).unwrap();
    let whole = d.val.unwrap();
    assert_eq!(whole.dataset().len(), 7);
    let rep = evaluate(p.model(), &whole, &Device::Cpu, 0)
        .unwrap()
        .matrix
        .report_with_names(&d.classes.names)
        .unwrap();
    assert_eq!(logged.1, rep.mean_iou.value);
    assert_eq!(
        logged.2,
        rep.classes.iter().map(|c| c.iou).collect::<Vec<_>>()
    );
    assert_eq!(
        logged.3,
        rep.classes.iter().map(|c| c.recall).collect::<Vec<_>>()
    );
    let mut loss =
        recallseg_trainer::train::build_loss(&cfg, &d.classes, &d.class_pixel_counts).unwrap();
    let (_, one) =
        evaluate_with_loss(p.model(), &whole, &Device::Cpu, 0, loss.as_mut(), None).unwrap();
    let one = one.unwrap();
    assert!(
        (logged.0 - one).abs() <= 1e-9 * one.abs(),
        "validation loss {} vs one process {one}",
        logged.0
    );
}

/// One rank whose communicator says it is bound to the CPU (as NCCL's is bound to a GPU).
#[derive(Debug)]
struct BoundToCpu;

impl recallseg_distributed::Communicator for BoundToCpu {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "bound-to-cpu"
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> candle_core::Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> candle_core::Result<()> {
        Ok(())
    }
    fn all_reduce_sum_u64(&self, _: &mut [u64]) -> candle_core::Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>, _: usize) -> candle_core::Result<()> {
        Ok(())
    }
    fn barrier(&self) -> candle_core::Result<()> {
        Ok(())
    }
    fn device(&self) -> Option<Device> {
        Some(Device::Cpu)
    }
}

#[test]
fn a_communicator_bound_to_a_device_decides_where_the_run_trains() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let opts = || TrainOptions {
        communicator: Some(Arc::new(BoundToCpu) as SharedCommunicator),
        ..quiet()
    };
    // train.device names another device than the communicator's: refused before anything runs.
    let out = dir.path().join("elsewhere");
    let cfg = config(&root, &out, &["train.device=cuda:1", "train.iters=1"]);
    let e = format!("{:#}", train(&cfg, &opts()).unwrap_err());
    assert!(
        e.contains("train.device: `cuda:1`")
            && e.contains("bound-to-cpu communicator is bound to Cpu"),
        "{e}"
    );
    // The same device: the run trains there.
    let out = dir.path().join("run");
    let cfg = config(&root, &out, &["train.iters=1", "train.val_every=1"]);
    let o = train(&cfg, &opts()).unwrap();
    assert!(o.finished && o.step == 1);
}

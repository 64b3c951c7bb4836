//! The auxiliary FCN head (`model.aux_head`): mmseg's parameter count, torchvision's names, the
//! main logits untouched, inference without it, and loading files that lack it.

mod common;

use common::{build, fill};
use recallseg_models::ParamKind;
use recallseg_models::{AuxHeadConfig, Backbone, DeepLab, Head, ModelConfig};

fn thin(head: Head, aux: Option<AuxHeadConfig>) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet18,
        head,
        n_classes: 5,
        backbone_width: 8,
        head_channels: 8,
        low_level_channels: 4,
        aux_head: aux,
        ..ModelConfig::default()
    }
}

fn aux_params(model: &DeepLab) -> Vec<(String, Vec<usize>, ParamKind)> {
    model
        .named_vars()
        .iter()
        .filter(|v| v.name.starts_with("aux_classifier."))
        .map(|v| (v.name.clone(), v.var.dims().to_vec(), v.kind))
        .collect()
}

/// mmseg's FCNHead (`num_convs = 1`, `concat_input = False`, BN) has
/// `in·c·9 + 2c + c·n + n` parameters. torchvision's FCNHead is the same layer sequence with
/// `c = in / 4`; its counts, printed by
/// `sum(p.numel() for p in torchvision.models.segmentation.fcn.FCNHead(in, n).parameters())`
/// (torchvision 0.29), are 2 364 691 for (1024, 19) — mmseg's DeepLabV3-R50 auxiliary head,
/// c = 256 — and 148 624 for (256, 16) (c = 64).
#[test]
fn parameter_count_is_mmseg_fcn_head_and_names_are_torchvision() {
    let mmseg = AuxHeadConfig::default();
    assert_eq!((mmseg.channels, mmseg.dropout), (256, 0.1));
    assert_eq!(mmseg.parameter_count(1024, 19), 2_364_691);
    let c64 = AuxHeadConfig {
        channels: 64,
        ..mmseg
    };
    assert_eq!(c64.parameter_count(256, 16), 148_624);

    let aux = AuxHeadConfig {
        channels: 12,
        dropout: 0.1,
    };
    let cfg = thin(Head::DeepLabV3Plus, Some(aux));
    let (model, _vm) = build(&cfg);
    assert!(model.has_aux_head());
    let layer3 = Backbone::Resnet18.stage_channels(2, 8);
    let params = aux_params(&model);
    let names: Vec<&str> = params.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "aux_classifier.0.weight",
            "aux_classifier.1.weight",
            "aux_classifier.1.bias",
            "aux_classifier.1.running_mean",
            "aux_classifier.1.running_var",
            "aux_classifier.4.weight",
            "aux_classifier.4.bias",
        ]
    );
    assert_eq!(params[0].1, [12, layer3, 3, 3]);
    assert_eq!(params[5].1, [5, 12, 1, 1]);
    let trainable: usize = params
        .iter()
        .filter(|(_, _, k)| *k != ParamKind::BnStat)
        .map(|(_, d, _)| d.iter().product::<usize>())
        .sum();
    assert_eq!(trainable, aux.parameter_count(layer3, 5));
    // They are trained (and frozen BN keeps its affine out, as in the rest of the model).
    let trainable_ids: Vec<_> = model
        .trainable_vars()
        .iter()
        .map(|v| v.as_tensor().id())
        .collect();
    let in_optimiser = model
        .named_vars()
        .iter()
        .filter(|v| v.name.starts_with("aux_classifier."))
        .filter(|v| trainable_ids.contains(&v.var.as_tensor().id()))
        .count();
    assert_eq!(in_optimiser, 5);
    // Without the option there is no such parameter.
    let (plain, _vm) = build(&thin(Head::DeepLabV3Plus, None));
    assert!(!plain.has_aux_head() && aux_params(&plain).is_empty());
}

/// The auxiliary head changes neither the other parameters nor the main logits, in training
/// (dropout included) or inference; its own logits have the input's size.
#[test]
fn main_logits_are_those_of_the_model_without_it() {
    let x = fill("input.aux", &[2, 3, 32, 48]);
    for head in [Head::DeepLabV3, Head::DeepLabV3Plus] {
        let (with, _a) = build(&thin(head, Some(AuxHeadConfig::default())));
        let (without, _b) = build(&thin(head, None));
        for train in [false, true] {
            let (main, aux) = with.forward_t_with_aux(&x, train, 17).unwrap();
            let plain = without.forward_t_with(&x, train, 17).unwrap();
            let bits = |t: &candle_core::Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&main), bits(&plain), "{head:?} train {train}");
            let aux = aux.expect("the model has an auxiliary head");
            assert_eq!(aux.dims(), &[2, 5, 32, 48]);
            assert!(aux
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite()));
            // Inference entry points do not run it.
            assert_eq!(
                bits(&with.forward_t_with(&x, train, 17).unwrap()),
                bits(&plain)
            );
        }
        let (_, none) = without.forward_t_with_aux(&x, true, 1).unwrap();
        assert!(none.is_none());
    }
}

/// A full DeepLab file without the auxiliary head loads into a model with one (which keeps its
/// initialisation); a file with it round-trips it.
#[test]
fn deeplab_files_with_and_without_it_load() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, vm_plain) = build(&thin(Head::DeepLabV3Plus, None));
    let _ = plain;
    let file = dir.path().join("plain.safetensors");
    vm_plain.save(&file).unwrap();
    let (with, vm_with) = build(&thin(Head::DeepLabV3Plus, Some(AuxHeadConfig::default())));
    let report = with.load_safetensors(&file).unwrap();
    assert_eq!(report.kept_initialisation.len(), 7, "{report:?}");
    assert!(report
        .kept_initialisation
        .iter()
        .all(|n| n.starts_with("aux_classifier.")));
    let full = dir.path().join("with.safetensors");
    vm_with.save(&full).unwrap();
    let (again, _vm) = build(&thin(Head::DeepLabV3Plus, Some(AuxHeadConfig::default())));
    let report = again.load_safetensors(&full).unwrap();
    assert!(report.kept_initialisation.is_empty());
    assert!(report.loaded.iter().any(|n| n == "aux_classifier.4.bias"));
}

#[test]
fn bad_aux_settings_name_the_field() {
    let bad = |aux: AuxHeadConfig| {
        thin(Head::DeepLabV3, Some(aux))
            .validate()
            .unwrap_err()
            .to_string()
    };
    let e = bad(AuxHeadConfig {
        channels: 0,
        dropout: 0.1,
    });
    assert!(e.contains("aux_head.channels"), "{e}");
    let e = bad(AuxHeadConfig {
        channels: 8,
        dropout: 1.0,
    });
    assert!(e.contains("aux_head.dropout"), "{e}");
}

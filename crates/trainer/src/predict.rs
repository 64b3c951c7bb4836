//! Prediction on single images: resize, normalise, run the model, resize the labels back.

use candle_core::{Device, Tensor};
use recallseg_data::transform::{normalize_chw, resize_bilinear_rgb, resize_nearest};
use recallseg_data::Normalize;
use recallseg_models::DeepLab;

/// Predicts train ids for an RGB image (`height × width × 3` bytes): the image is resized to
/// the network input `(net_h, net_w)`, normalised with `norm`, segmented, and the label map is
/// resized back to the image's size (nearest neighbour). Returns `height × width` train ids.
#[allow(clippy::too_many_arguments)]
pub fn predict_rgb(
    model: &DeepLab,
    device: &Device,
    norm: &Normalize,
    rgb: &[u8],
    width: usize,
    height: usize,
    net_h: usize,
    net_w: usize,
) -> anyhow::Result<Vec<u8>> {
    if rgb.len() != width * height * 3 {
        anyhow::bail!(
            "image buffer of {} bytes does not match {width}x{height} RGB",
            rgb.len()
        );
    }
    let resized = resize_bilinear_rgb(rgb, width, height, net_w, net_h)?;
    let mut planar = vec![0f32; net_w * net_h * 3];
    normalize_chw(&resized, net_w, net_h, norm, &mut planar)?;
    let x = Tensor::from_vec(planar, (1, 3, net_h, net_w), device)?;
    let logits = model.forward_t(&x, false)?;
    let pred = crate::eval::argmax_labels(&logits)?;
    Ok(resize_nearest(&pred, net_w, net_h, width, height, 1)?)
}

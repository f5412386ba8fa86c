//! Whole UNet2DModel forward passes through the CUDA backend (emulated device; GPU 0 too when
//! present) against diffusers' outputs, on the tiny random-weight fixtures of
//! tools/make_unet_fixtures.py (every supported block type, class conditioning, one and several
//! heads). The network runs in f16 storage with f32 accumulation, so the tolerance is the
//! f16 one: max abs error <= 5e-3 x max |output| (the CPU backend meets 1e-4, tests/unet_parity.rs).

use crate::common;

use std::sync::Arc;

use common::{fixture, max_abs, max_abs_diff, npy};
use uqengine::backend::cuda::gpu::GpuDevice;
use uqengine::backend::cuda::CudaBackend;
use uqengine::backend::Backend;
use uqengine::layout::{nchw_to_nhwc, nhwc_to_nchw};
use uqengine::models::unet::UNet;

const MODELS: [&str; 3] = [
    "cifar_like_old_names_f32",
    "gray_cond_multihead_f16",
    "attn_first_cosine_bf16",
];
const REL_TOL: f32 = 5e-3;

fn devices() -> Vec<CudaBackend> {
    let mut v = Vec::new();
    #[cfg(feature = "emu")]
    v.push(CudaBackend::new(Arc::new(
        uqengine::backend::cuda::emu::EmuDevice::new(),
    )));
    #[cfg(not(feature = "emu"))]
    eprintln!("skipping the emulated device: build with --features emu");
    match GpuDevice::new(0) {
        Ok(d) => v.push(CudaBackend::new(Arc::new(d))),
        Err(e) => eprintln!("skipping GPU: {e}"),
    }
    v
}

#[test]
fn unet_forward_on_the_cuda_backend_matches_diffusers_within_f16_tolerance() {
    for b in devices() {
        for name in MODELS {
            let m = UNet::load(&b, &fixture(&format!("unet/{name}/model"))).unwrap();
            let x = npy(&format!("unet/{name}/forward_x.npy"));
            let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
            let t: Vec<f32> = npy(&format!("unet/{name}/forward_t.npy")).to_f32();
            let cls_file = format!("unet/{name}/forward_class.npy");
            let cls = fixture(&cls_file)
                .exists()
                .then(|| npy(&cls_file).to_usize());
            let xt = b
                .upload(&[n, h, w, c], &nchw_to_nhwc(&x.to_f32(), n, c, h, w))
                .unwrap();
            let y = m.forward(&b, &xt, &t, cls.as_deref()).unwrap();
            let (_, _, _, co) = y.nhwc();
            let got = nhwc_to_nchw(&b.download(&y).unwrap(), n, h, w, co);
            let want = npy(&format!("unet/{name}/forward_out.npy")).to_f32();
            let err = max_abs_diff(&got, &want);
            let tol = REL_TOL * max_abs(&want);
            println!(
                "{} {name}: forward max abs err {err:.3e} (tolerance {tol:.3e})",
                b.name()
            );
            assert!(
                err <= tol,
                "{} {name}: forward max abs err {err} > {tol}",
                b.name()
            );
        }
    }
}

//! The device features under the kernels (warp shuffles and votes, exited threads at barriers,
//! dynamic shared memory, ldmatrix + f16 mma fragment layouts, half conversions), checked on the
//! emulated device and, when present, on GPU 0, against plain host computations. A GPU run thus
//! also shows that the emulator's layouts are the hardware's.

use std::sync::Arc;

use uqengine::backend::cuda::device::{DevBuf, Device, LaunchCfg, F16};
use uqengine::backend::cuda::gpu::GpuDevice;
use uqengine::backend::cuda::kernels;

fn devices() -> Vec<Arc<dyn Device>> {
    let mut v: Vec<Arc<dyn Device>> = Vec::new();
    #[cfg(feature = "emu")]
    v.push(Arc::new(uqengine::backend::cuda::emu::EmuDevice::new()));
    #[cfg(not(feature = "emu"))]
    eprintln!("skipping the emulated device: build with --features emu");
    match GpuDevice::new(0) {
        Ok(d) => v.push(Arc::new(d)),
        Err(e) => eprintln!("skipping GPU: {e}"),
    }
    v
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn warp_shuffles_and_votes_follow_cuda_semantics() {
    for dev in devices() {
        let d = dev.as_ref();
        let threads = 64usize;
        let mut out = DevBuf::<i32>::zeros(d, threads * 8).unwrap();
        kernels::selftest_warp(
            d,
            LaunchCfg::linear(1, threads as u32),
            kernels::SelftestWarpArgs { out: out.ptr_mut() },
        )
        .unwrap();
        let got = out.to_host(d).unwrap();
        for t in 0..threads {
            let (lane, base) = (t % 32, t - t % 32);
            let o = &got[t * 8..t * 8 + 8];
            let odd_mask = 0xaaaa_aaaau32 as i32;
            let expect = [
                ((base + 5) * 10) as i32,
                ((base + (lane ^ 3)) * 10) as i32,
                (if lane + 4 < 32 { (t + 4) * 10 } else { t * 10 }) as i32,
                (if lane >= 2 { (t - 2) * 10 } else { t * 10 }) as i32,
                odd_mask,
                (base == 0) as i32,
                1,
                (base..base + 32).sum::<usize>() as i32,
            ];
            assert_eq!(o, expect, "{}: thread {t}", d.name());
        }
    }
}

#[test]
fn block_reduction_survives_exited_threads() {
    for dev in devices() {
        let d = dev.as_ref();
        let (blocks, per_block, threads) = (3usize, 1000usize, 256u32);
        let x: Vec<f32> = values(blocks * per_block, 7);
        let xb = DevBuf::from_host(d, &x).unwrap();
        let mut out = DevBuf::<f32>::zeros(d, blocks).unwrap();
        let cfg = LaunchCfg::linear(blocks as u32, threads).with_smem(threads * 4);
        kernels::selftest_block_sum(
            d,
            cfg,
            kernels::SelftestBlockSumArgs {
                x: xb.ptr(),
                out: out.ptr_mut(),
                per_block: per_block as i32,
                exit_from: 96,
            },
        )
        .unwrap();
        let got = out.to_host(d).unwrap();
        for b in 0..blocks {
            let want: f64 = x[b * per_block..(b + 1) * per_block]
                .iter()
                .map(|&v| v as f64)
                .sum();
            assert!(
                (got[b] as f64 - want).abs() < 1e-3,
                "{}: block {b}: {} vs {want}",
                d.name(),
                got[b]
            );
        }
    }
}

#[test]
fn ldmatrix_and_mma_fragments_multiply_f16_tiles() {
    for dev in devices() {
        let d = dev.as_ref();
        let a: Vec<F16> = values(256, 1)
            .iter()
            .map(|&v| F16::from_f32(v * 4.0))
            .collect();
        let b: Vec<F16> = values(128, 2)
            .iter()
            .map(|&v| F16::from_f32(v * 4.0))
            .collect(); // [16][8]
        let mut bt = vec![F16::ZERO; 128]; // [8][16]
        for kk in 0..16 {
            for n in 0..8 {
                bt[n * 16 + kk] = b[kk * 8 + n];
            }
        }
        let (ab, bb, btb) = (
            DevBuf::from_host(d, &a).unwrap(),
            DevBuf::from_host(d, &b).unwrap(),
            DevBuf::from_host(d, &bt).unwrap(),
        );
        let mut c = DevBuf::<f32>::zeros(d, 128).unwrap();
        let mut c2 = DevBuf::<f32>::zeros(d, 128).unwrap();
        kernels::selftest_mma(
            d,
            LaunchCfg::linear(1, 32),
            kernels::SelftestMmaArgs {
                a: ab.ptr(),
                bt: btb.ptr(),
                b: bb.ptr(),
                c: c.ptr_mut(),
                c2: c2.ptr_mut(),
            },
        )
        .unwrap();
        let (c, c2) = (c.to_host(d).unwrap(), c2.to_host(d).unwrap());
        for m in 0..16 {
            for n in 0..8 {
                // Products of f16 values are exact in f32; sums of 16 such values differ by
                // summation order only.
                let want: f64 = (0..16)
                    .map(|kk| a[m * 16 + kk].to_f64() * b[kk * 8 + n].to_f64())
                    .sum();
                let tol = 1e-5 * (1.0 + want.abs());
                assert!(
                    (c[m * 8 + n] as f64 - want).abs() <= tol,
                    "{}: C[{m}][{n}] {} vs {want}",
                    d.name(),
                    c[m * 8 + n]
                );
                assert!(
                    (c2[m * 8 + n] as f64 - want).abs() <= tol,
                    "{}: trans C[{m}][{n}] {} vs {want}",
                    d.name(),
                    c2[m * 8 + n]
                );
            }
        }
    }
}

/// Edge cases of rounding plus a spread of magnitudes (normal, subnormal in f16, overflow).
fn conversion_inputs() -> Vec<f32> {
    let mut x = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        1.0039062,
        1.0117188,
        65504.0,
        65519.0,
        65520.0,
        1e6,
        -1e6,
        6.0e-8,
        3.0e-8,
        2.98e-8,
        1e-5,
        6.1035156e-5,
        6.1e-5,
        3.4e38,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-40,
    ];
    let mut s = 12345u64;
    for i in 0..20000 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bits = (s >> 32) as u32;
        let v = f32::from_bits(bits);
        if v.is_finite() {
            x.push(v);
        }
        // Values near half-way points of bf16 and f16.
        x.push((i as f32 - 10000.0) * 0.00390625 + 1.0 / 512.0);
        x.push((i as f32) * 1.0e-7);
    }
    x
}

#[test]
fn half_conversions_round_to_nearest_even_bit_exactly() {
    let x = conversion_inputs();
    for dev in devices() {
        let d = dev.as_ref();
        let xb = DevBuf::from_host(d, &x).unwrap();
        let mut y = DevBuf::<u32>::zeros(d, x.len()).unwrap();
        kernels::selftest_convert(
            d,
            LaunchCfg::for_items(x.len(), 256),
            kernels::SelftestConvertArgs {
                x: xb.ptr(),
                y: y.ptr_mut(),
                n: x.len() as i32,
            },
        )
        .unwrap();
        let y = y.to_host(d).unwrap();
        for (i, &v) in x.iter().enumerate() {
            let (bf, hf) = ((y[i] & 0xffff) as u16, (y[i] >> 16) as u16);
            assert_eq!(
                bf,
                half::bf16::from_f32(v).to_bits(),
                "{}: bf16({v:e})",
                d.name()
            );
            assert_eq!(
                hf,
                half::f16::from_f32(v).to_bits(),
                "{}: f16({v:e})",
                d.name()
            );
        }
    }
}

#[cfg(feature = "emu")]
#[test]
fn emulated_f16_to_f32_is_exact_for_every_encoding() {
    use uqengine::backend::cuda::emu::emu_f16_bits_to_f32;
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let got = emu_f16_bits_to_f32(&bits);
    for (b, g) in bits.iter().zip(got) {
        let want = half::f16::from_bits(*b).to_f32();
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "f16 {b:#06x}: {g} vs {want}"
        );
    }
}

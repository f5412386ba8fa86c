//! Member schedules (`--uq-schedule`): the step modes each schedule gives, and the batched
//! generator against a per-sample, per-member reference written from the definitions (each
//! member's trajectory stepped on its own: `Map` steps follow the MAP trajectory, `SharedTrunk`
//! steps apply member `k`'s last layer to the trunk features of the MAP member's input, `Full`
//! steps run the trunk on the member's own input), on the CPU backend and on the emulated CUDA
//! backend. Bad schedule names and split points are errors naming them.

use crate::common;

use common::{assert_close, fixture, max_abs_diff};
use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::{Backend, Conv2d};
use uqengine::member_schedule::{MemberSchedule, StepMode};
use uqengine::models::unet::UNet;
use uqengine::models::weights::Weights;
use uqengine::pipeline::{initial_noise, step_noise, BatchInput, Generator};
use uqengine::sampler::{Sampler, SamplerKind, SchedulerConfig};

use StepMode::{Full, Map, SharedTrunk};

fn modes(s: &str, steps: usize) -> Vec<StepMode> {
    MemberSchedule::parse(s).unwrap().modes(steps).unwrap()
}

#[test]
fn schedules_give_the_documented_step_modes() {
    assert_eq!(modes("full", 4), vec![SharedTrunk, Full, Full, Full]);
    assert_eq!(
        modes("branch:2", 5),
        vec![Map, Map, SharedTrunk, Full, Full]
    );
    // 0.5 of 5 steps rounds to 3 shared steps (round half away from zero: 2.5 -> 3).
    assert_eq!(
        modes("branch:0.5", 5),
        vec![Map, Map, Map, SharedTrunk, Full]
    );
    assert_eq!(modes("branch:0.0", 3), modes("full", 3));
    assert_eq!(modes("branch:0", 3), modes("full", 3));
    assert_eq!(modes("shared-trunk", 3), vec![SharedTrunk; 3]);
    assert_eq!(
        modes("shared-trunk:2", 4),
        vec![Map, Map, SharedTrunk, SharedTrunk]
    );
    assert_eq!(modes("shared-trunk:4", 4), modes("shared-trunk", 4));
    assert_eq!(
        modes("early-full:3", 5),
        vec![SharedTrunk, Full, Full, SharedTrunk, SharedTrunk]
    );
    // 0.3 of 10 steps: full for the first 3.
    assert_eq!(modes("early-full:0.3", 10), {
        let mut m = vec![SharedTrunk, Full, Full];
        m.extend([SharedTrunk; 7]);
        m
    });
    assert_eq!(
        modes("interleaved:2", 5),
        vec![SharedTrunk, SharedTrunk, Full, SharedTrunk, Full]
    );
    for name in [
        "interleaved:10",
        "full",
        "branch:0.25",
        "branch:7",
        "shared-trunk",
        "shared-trunk:3",
        "early-full:0.2",
        "early-full:5",
    ] {
        assert_eq!(MemberSchedule::parse(name).unwrap().name(), name);
    }
    // Trunk rows per sample: 50 steps, K = 6.
    let rows = |s: &str| {
        MemberSchedule::parse(s)
            .unwrap()
            .trunk_rows_per_sample(50, 6)
            .unwrap()
    };
    assert_eq!(rows("full"), 1 + 49 * 6);
    assert_eq!(rows("branch:40"), 40 + 1 + 9 * 6);
    assert_eq!(rows("shared-trunk"), 50);
    assert_eq!(rows("early-full:5"), 1 + 4 * 6 + 45);
    assert_eq!(rows("interleaved:10"), 4 * 6 + 46);
}

#[test]
fn bad_schedules_are_errors_naming_them() {
    for (s, needle) in [
        ("fast", "unknown schedule"),
        ("branch", "unknown schedule"),
        ("branch:1.5", "[0, 1)"),
        ("branch:-1", "step index"),
        ("branch:x.y", "fraction"),
        ("shared-trunk:0", "at least 1"),
        ("shared-trunk:two", "L"),
        ("full:3", "unknown schedule"),
        ("early-full", "unknown schedule"),
        ("early-full:0", "at least 1"),
        ("early-full:1.0", "(0, 1)"),
        ("early-full:0.0", "(0, 1)"),
        ("interleaved:1", "at least 2"),
        ("interleaved:x", "R"),
    ] {
        let e = MemberSchedule::parse(s).unwrap_err().to_string();
        assert!(e.contains(s) && e.contains(needle), "{s}: {e}");
    }
    for (s, steps, needle) in [
        ("branch:10", 10, "step 10"),
        ("branch:0.99", 10, "step 10"),
        ("shared-trunk:11", 10, "L = 11"),
        ("early-full:10", 10, "step 10"),
        ("interleaved:10", 10, "R = 10"),
        ("early-full:0.01", 10, "step 0"),
    ] {
        let e = MemberSchedule::parse(s)
            .unwrap()
            .modes(steps)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && e.contains("10-step"), "{s}: {e}");
    }
}

const MODEL: &str = "unet/gray_cond_multihead_f16/model";
const STEPS: usize = 4;
const SEED: u64 = 5;
const SAMPLES: [usize; 3] = [0, 7, 2];
const CLASSES: [usize; 3] = [1, 0, 3];

/// The model, a 4-step DDPM sampler (stochastic steps: the step noise must follow each
/// member), and K = 3 members: the MAP last layer and two perturbed copies.
fn setup(be: &dyn Backend) -> (UNet, Sampler, Vec<Conv2d>) {
    let dir = fixture(MODEL);
    let unet = UNet::load(be, &dir).unwrap();
    let sched = SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let sampler = Sampler::new(&sched, SamplerKind::Ddpm, STEPS).unwrap();
    let spec = unet.conv_out.spec;
    let weights = Weights::open(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let w = weights
        .root()
        .get("conv_out.weight", &[spec.cout, spec.cin, 3, 3])
        .unwrap();
    let b = weights.root().get("conv_out.bias", &[spec.cout]).unwrap();
    let mut members = vec![unet.conv_out.clone()];
    for m in 1..3 {
        let scale = w.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let wm: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.3 * scale * (((i * 7 + m * 13) % 11) as f32 / 5.0 - 1.0))
            .collect();
        members.push(be.prepare_conv(spec, &wm, Some(&b)).unwrap());
    }
    (unet, sampler, members)
}

/// The batch, its starting noise generated by the backend from the seed (the reference draws
/// it on the host with `initial_noise`).
fn input() -> BatchInput {
    BatchInput {
        indices: SAMPLES.to_vec(),
        classes: Some(CLASSES.to_vec()),
        noise: None,
    }
}

/// The members' final samples by the definitions, one sample and one member at a time on the
/// CPU backend: `[B*K]` rows, sample-major.
fn reference(schedule: &str) -> Vec<f32> {
    let be = CpuBackend::new();
    let (unet, sampler, members) = setup(&be);
    let (c, s) = (unet.config.in_channels, unet.config.sample_size);
    // The model output of `member` on the trunk features of `trunk_input`.
    let eps = |class: usize, step: usize, member: &Conv2d, trunk_input: &[f32]| -> Vec<f32> {
        let xt = be.upload(&[1, s, s, c], trunk_input).unwrap();
        let t = [sampler.timesteps()[step] as f32];
        let h = unet.trunk(&be, &xt, &t, Some(&[class])).unwrap();
        be.download(&be.conv2d(&h, member, None).unwrap()).unwrap()
    };
    let modes = modes(schedule, STEPS);
    let mut out = Vec::new();
    for (j, &i) in SAMPLES.iter().enumerate() {
        let z = initial_noise(SEED, i, c, s);
        let mut xs: Vec<Vec<f32>> = vec![z; members.len()];
        for (step, mode) in modes.iter().enumerate() {
            let noise = sampler
                .needs_noise(step)
                .then(|| step_noise(SEED, i, step, c, s));
            let map_input = xs[0].clone();
            for (m, member) in members.iter().enumerate() {
                let e = match mode {
                    Map => eps(CLASSES[j], step, &members[0], &map_input),
                    SharedTrunk => eps(CLASSES[j], step, member, &map_input),
                    Full => eps(CLASSES[j], step, member, &xs[m].clone()),
                };
                sampler
                    .step(step, &e, &mut xs[m], noise.as_deref())
                    .unwrap();
            }
        }
        for x in xs {
            out.extend(x);
        }
    }
    out
}

fn generate(be: &dyn Backend, schedule: &str) -> Vec<f32> {
    let (unet, sampler, members) = setup(be);
    let g = Generator {
        backend: be,
        unet: &unet,
        sampler: &sampler,
        members: be.prepare_members(&members).unwrap(),
        schedule: MemberSchedule::parse(schedule).unwrap(),
        seed: SEED,
    };
    g.run(&input(), |_| {}).unwrap()
}

const SCHEDULES: [&str; 8] = [
    "full",
    "branch:2",
    "branch:0.25",
    "branch:3",
    "shared-trunk",
    "shared-trunk:2",
    "early-full:2",
    "interleaved:2",
];

#[test]
fn every_schedule_matches_its_definition_on_the_cpu() {
    let be = CpuBackend::new();
    let mut results = Vec::new();
    for schedule in SCHEDULES {
        let got = generate(&be, schedule);
        let want = reference(schedule);
        println!("{schedule}: max abs diff {:.3e}", max_abs_diff(&got, &want));
        assert_close(schedule, &got, &want, 1e-5, 1e-5);
        results.push(got);
    }
    // The schedules are different methods: none collapses onto `full`.
    for (name, r) in SCHEDULES.iter().zip(&results).skip(1) {
        assert!(max_abs_diff(r, &results[0]) > 1e-3, "{name} equals full");
    }
}

/// The same schedules through the CUDA backend's kernels on the emulated device, against the
/// CPU reference (f16 activations: ~2e-3, as the emulated pipeline test).
#[cfg(feature = "emu")]
#[test]
fn every_schedule_runs_on_the_emulated_cuda_backend() {
    let (be, _) = uqengine::backend::cuda::select_backend("emu").unwrap();
    for schedule in [
        "full",
        "branch:2",
        "shared-trunk",
        "early-full:2",
        "interleaved:2",
    ] {
        let got = generate(be.as_ref(), schedule);
        let want = reference(schedule);
        println!(
            "{schedule} (emu): max abs diff {:.3e}",
            max_abs_diff(&got, &want)
        );
        assert_close(schedule, &got, &want, 6e-3, 6e-3);
    }
}

#[test]
fn sample_records_the_schedule_and_refuses_bad_ones_without_output() {
    use common::{arg, uqengine_cli};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let base = [
        "sample",
        "--num",
        "2",
        "--steps",
        "3",
        "--draws",
        "2",
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ];
    let (ok, log) = uqengine_cli(&[&base[..], &["--uq-schedule", "branch:1"]].concat());
    assert!(ok, "{log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["uncertainty"]["uq_schedule"], "branch:1");
    // One trunk row per sample for the shared step and the split step, K = 3 rows after.
    assert_eq!(summary["uncertainty"]["trunk_rows_per_sample"], 1 + 1 + 3);

    let bad = tmp.path().join("bad");
    let base = [
        "sample",
        "--num",
        "2",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--out",
        arg(&bad),
    ];
    for (extra, needle) in [
        (vec!["--uq-schedule", "fast"], "unknown schedule"),
        (
            vec!["--uq-schedule", "branch:3"],
            "outside the 3-step schedule",
        ),
        (vec!["--uq-schedule", "shared-trunk:4"], "L = 4"),
        (
            vec!["--uq-schedule", "shared-trunk", "--no-uncertainty"],
            "needs a posterior",
        ),
    ] {
        let (ok, log) = uqengine_cli(&[&base[..], &extra[..]].concat());
        assert!(!ok && log.contains(needle), "{extra:?}: {log}");
        assert!(
            !bad.exists() && !tmp.path().join("bad.partial").exists(),
            "{extra:?} left output"
        );
    }
}

/// `--draw-seed` draws other members from the same noise: the MAP samples are the run's, the
/// scores change; the run's own seed as draw seed is the default.
#[test]
fn draw_seed_changes_the_members_not_the_samples() {
    use common::{arg, uqengine_cli};
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let base = [
            "sample",
            "--num",
            "3",
            "--steps",
            "3",
            "--draws",
            "2",
            "--seed",
            "4",
            "--device",
            "cpu",
            "--out",
            arg(&out),
        ];
        let (ok, log) = uqengine_cli(&[&base[..], extra].concat());
        assert!(ok, "{log}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let samples = std::fs::read(out.join("samples.npy")).unwrap();
        let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = head.iter().position(|h| *h == "uncertainty").unwrap();
        let scores: Vec<f64> = lines
            .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
            .collect();
        (summary, samples, scores)
    };
    let (s0, x0, u0) = run("default", &[]);
    let (s4, x4, u4) = run("same", &["--draw-seed", "4"]);
    let (s9, x9, u9) = run("other", &["--draw-seed", "9"]);
    assert_eq!(s0["uncertainty"]["draw_seed"], 4);
    assert_eq!(s9["uncertainty"]["draw_seed"], 9);
    assert_eq!(s4["uncertainty"]["draw_seed"], 4);
    assert_eq!(x0, x4);
    assert_eq!(u0, u4);
    assert_eq!(x0, x9, "the MAP samples do not depend on the draws");
    assert!(
        u0.iter().zip(&u9).all(|(a, b)| (a - b).abs() > 1e-6),
        "other draws, other scores: {u0:?} {u9:?}"
    );
}

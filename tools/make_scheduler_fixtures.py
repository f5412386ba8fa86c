#!/usr/bin/env python3
"""Reference outputs of diffusers' DDIMScheduler / DDPMScheduler for tests/sampler_parity.rs.

Writes into tests/fixtures/scheduler/ (or --out):
  cases.json             per case: the scheduler_config.json diffusers writes, sampler kind and eta,
                         the set_timesteps result for 10 and 50 steps, probe steps (row into
                         steps.npy, step index, timestep, whether diffusers adds noise) and the
                         trajectory row; plus the schedules and digest layouts.
  steps.npy              f32 [probes, 4, N]: x_t, model_output, noise, diffusers' prev_sample.
  trajectories.npy       f32 [cases, 12, N]: x_T, the noise of each of 10 steps, final sample of a
                         10-step run with the toy model `toy_model` below.
  schedules.npy          f32 [3, 2, 1000]: betas and alphas_cumprod of linear (1e-4, 0.02),
                         scaled_linear (0.00085, 0.012) and squaredcos_cap_v2 at T = 1000.
  timestep_digest.npy    i32 [3, 1000, 2]: for spacing leading (steps_offset 1), trailing, linspace
                         at T = 1000 and steps 1..1000: [len, sum_i (i + 1) * t_i], len = -1 when
                         diffusers yields a timestep outside 0..T.
  scheduler_config.json  one config as diffusers' save_config writes it.

DDIM noise is passed as `variance_noise`; DDPM noise by replacing `randn_tensor` in
diffusers.schedulers.scheduling_ddpm. Run: python3 tools/make_scheduler_fixtures.py
"""
import argparse
import json
import pathlib
import tempfile

import numpy as np
import torch
import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm
from diffusers import DDIMScheduler, DDPMScheduler

N = 64  # elements per probe
SHAPE = (1, 4, 4, 4)
PROBES = {10: (0, 4, 9), 50: (1, 30, 49)}
TRAJ_STEPS = 10

SCALED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
COS = dict(beta_schedule="squaredcos_cap_v2")

CASES = [
    ("ddim_defaults", "ddim", 0.0, {}),
    ("ddim_scaled_offset_eta", "ddim", 0.7,
     dict(SCALED, steps_offset=1, set_alpha_to_one=False, clip_sample=False)),
    ("ddim_cos_trailing_v_eta", "ddim", 0.7,
     dict(COS, timestep_spacing="trailing", clip_sample=False, prediction_type="v_prediction")),
    ("ddim_t500_linspace_sample", "ddim", 0.0,
     dict(num_train_timesteps=500, beta_start=0.0002, beta_end=0.03, timestep_spacing="linspace",
          set_alpha_to_one=False, clip_sample_range=1.5, prediction_type="sample")),
    ("ddim_scaled_v_clip", "ddim", 0.0, dict(SCALED, prediction_type="v_prediction")),
    ("ddpm_defaults", "ddpm", None, {}),
    ("ddpm_cos_large_offset_v", "ddpm", None,
     dict(COS, variance_type="fixed_large", steps_offset=1, clip_sample=False,
          prediction_type="v_prediction")),
    ("ddpm_scaled_trailing_sample", "ddpm", None,
     dict(SCALED, timestep_spacing="trailing", clip_sample_range=2.0, prediction_type="sample")),
    ("ddpm_linspace_large_eps", "ddpm", None,
     dict(timestep_spacing="linspace", variance_type="fixed_large", clip_sample=False)),
]


def toy_model(x, t):
    """A smooth stand-in for a denoiser, f32; tests/sampler_parity.rs computes the same."""
    bias = np.float32(0.05 * (t % 7) - 0.1)
    return 0.7 * x + 0.2 * x / (1.0 + x * x) + bias


class InjectedNoise:
    """Replaces randn_tensor in scheduling_ddpm so DDPM.step adds a given noise tensor."""

    def __init__(self):
        self.noise = None
        self.calls = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, **kwargs):
        self.calls += 1
        return self.noise.reshape(shape).to(dtype)


def make_scheduler(kind, config):
    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    return cls(**config)


def step(scheduler, kind, eta, model_out, t, x, noise, inject):
    """diffusers' prev_sample, and whether the step added noise."""
    if kind == "ddim":
        out = scheduler.step(model_out, t, x, eta=eta, variance_noise=noise).prev_sample
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        variance = float(scheduler._get_variance(t, t - ratio))
        return out, bool(eta > 0 and variance > 0)
    inject.noise = noise
    before = inject.calls
    out = scheduler.step(model_out, t, x).prev_sample
    return out, inject.calls > before


def timestep_digest(spacing, steps_offset, t_train=1000):
    rows = []
    for steps in range(1, t_train + 1):
        s = DDIMScheduler(num_train_timesteps=t_train, timestep_spacing=spacing,
                          steps_offset=steps_offset)
        s.set_timesteps(steps)
        ts = s.timesteps.numpy().astype(np.int64)
        wsum = int(((np.arange(len(ts)) + 1) * ts).sum())
        bad = (ts < 0).any() or (ts >= t_train).any()
        rows.append([-1 if bad else len(ts), wsum])
    return np.array(rows, dtype=np.int32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=pathlib.Path, default=root / "tests/fixtures/scheduler")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20250)
    inject = InjectedNoise()
    scheduling_ddpm.randn_tensor = inject

    def randn(scale=1.0):
        return (torch.randn(SHAPE, generator=gen, dtype=torch.float32) * scale).contiguous()

    cases, step_rows, traj_rows = [], [], []
    for name, kind, eta, overrides in CASES:
        scheduler = make_scheduler(kind, overrides)
        config = json.loads(scheduler.to_json_string())
        entry = dict(name=name, kind=kind, eta=eta, config=config, timesteps={}, probes=[])
        for steps in (10, 50):
            scheduler = make_scheduler(kind, overrides)
            scheduler.set_timesteps(steps)
            ts = [int(t) for t in scheduler.timesteps]
            entry["timesteps"][str(steps)] = ts
            for i in PROBES[steps]:
                t = ts[i]
                x = randn(1.0 if config["prediction_type"] != "sample" else 1.2)
                model_out = randn(1.5 if config["prediction_type"] == "sample" else 1.0)
                noise = randn()
                prev, noise_used = step(scheduler, kind, eta, model_out, t, x, noise, inject)
                entry["probes"].append(dict(row=len(step_rows), steps=steps, index=i, timestep=t,
                                            noise_used=noise_used))
                step_rows.append(torch.stack([x, model_out, noise, prev]).reshape(4, N).numpy())
        # A whole 10-step run with the toy model.
        scheduler = make_scheduler(kind, overrides)
        scheduler.set_timesteps(TRAJ_STEPS)
        x = randn()
        rows = [x.reshape(N).numpy().copy()]
        for t in scheduler.timesteps:
            t = int(t)
            noise = randn()
            rows.append(noise.reshape(N).numpy().copy())
            m = torch.from_numpy(toy_model(x.numpy(), t)).to(torch.float32)
            x, _ = step(scheduler, kind, eta, m, t, x, noise, inject)
        rows.append(x.reshape(N).numpy().copy())
        entry["trajectory_row"] = len(traj_rows)
        traj_rows.append(np.stack(rows))
        cases.append(entry)

    schedules = []
    for cfg in (dict(), SCALED, COS):
        s = DDIMScheduler(**cfg)
        schedules.append(np.stack([s.betas.numpy(), s.alphas_cumprod.numpy()]))
    digests = [("leading", 1), ("trailing", 0), ("linspace", 0)]
    digest = np.stack([timestep_digest(sp, off) for sp, off in digests])

    meta = dict(
        elements=N,
        cases=cases,
        schedules=[dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear"),
                   dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
                   dict(beta_schedule="squaredcos_cap_v2")],
        digests=[dict(timestep_spacing=sp, steps_offset=off, num_train_timesteps=1000)
                 for sp, off in digests],
    )
    (args.out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.save(args.out / "steps.npy", np.stack(step_rows).astype(np.float32))
    np.save(args.out / "trajectories.npy", np.stack(traj_rows).astype(np.float32))
    np.save(args.out / "schedules.npy", np.stack(schedules).astype(np.float32))
    np.save(args.out / "timestep_digest.npy", digest)
    with tempfile.TemporaryDirectory() as tmp:
        make_scheduler("ddim", CASES[1][3]).save_config(tmp)
        cfg_text = (pathlib.Path(tmp) / "scheduler_config.json").read_text()
    (args.out / "scheduler_config.json").write_text(cfg_text)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(cases)} cases, {len(step_rows)} probes to {args.out} ({total} bytes)")


if __name__ == "__main__":
    main()

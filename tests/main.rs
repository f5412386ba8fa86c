//! The integration tests, one test binary (`cargo test --test integration`): one link instead
//! of one per file, and the files' tests run in parallel. Each file is a module; select one with
//! a name filter, e.g. `cargo test --release --features emu --test integration kernels_emu::`.

mod common;

mod adm_cli;
mod adm_convert;
mod adm_parity;
mod bad_input;
mod build_signatures;
mod cli_eval;
mod cli_sample;
mod cli_uncertainty;
mod clip_parity;
mod config_reader;
mod device_sampler;
mod emu_pipeline;
mod emu_selftest;
mod emu_unet;
mod eval_parity;
mod fuzz_readers;
mod guided_sampler;
mod io_outputs;
mod keep_policy;
mod kernels_emu;
mod laplace_parity;
mod member_schedules;
mod reliability;
mod sampler_parity;
mod shards;
mod uncertainty_parity;
mod unet_parity;

//! The tensors of a guided-diffusion `UNetModel` state dict and the diffusers `UNet2DModel`
//! tensors made from them: [`plan`] walks the model as `UNetModel.__init__` builds it and
//! lists, per diffusers tensor, its checkpoint source, both shapes and how its values are taken.
//!
//! Module by module (L levels, `nrb = num_res_blocks`):
//!
//! | guided-diffusion | diffusers |
//! |---|---|
//! | `time_embed.0`, `time_embed.2` | `time_embedding.linear_1`, `.linear_2` |
//! | `label_emb` | `class_embedding` |
//! | `input_blocks.0.0` | `conv_in` |
//! | `input_blocks.{1 + l(nrb+1) + i}.0` / `.1` | `down_blocks.l.resnets.i` / `.attentions.i` |
//! | `input_blocks.{1 + l(nrb+1) + nrb}.0` (`.op` for a convolution) | `down_blocks.l.downsamplers.0` (`.conv`) |
//! | `middle_block.0`, `.1`, `.2` | `mid_block.resnets.0`, `.attentions.0`, `.resnets.1` |
//! | `output_blocks.{r(nrb+1) + i}.0` / `.1` | `up_blocks.r.resnets.i` / `.attentions.i` (r = 0 the deepest level) |
//! | last module of `output_blocks.{r(nrb+1) + nrb}` (`.conv` for a convolution) | `up_blocks.r.upsamplers.0` (`.conv`) |
//! | `out.0`, `out.2` | `conv_norm_out`, `conv_out` (the layer the uncertainty method makes Bayesian) |
//!
//! Inside a `ResBlock`: `in_layers.0` -> `norm1`, `in_layers.2` -> `conv1`, `emb_layers.1` ->
//! `time_emb_proj`, `out_layers.0` -> `norm2`, `out_layers.3` -> `conv2`, `skip_connection`
//! -> `conv_shortcut`. Inside an `AttentionBlock`: `norm` -> `group_norm`, `proj_out` (a
//! Conv1d `[C, C, 1]`) -> `to_out.0` (`[C, C]`), and `qkv` (`[3C, C, 1]`) split by rows into
//! `to_q`, `to_k`, `to_v` (see [`qkv_rows`]).

use super::flags::AdmArch;

/// Which rows of `qkv` make `to_q`, `to_k` or `to_v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvPart {
    Q,
    K,
    V,
}

impl QkvPart {
    fn index(self) -> usize {
        match self {
            QkvPart::Q => 0,
            QkvPart::K => 1,
            QkvPart::V => 2,
        }
    }
}

/// The rows of an attention block's `qkv` (`[3C, C, 1]` weight or `[3C]` bias; `C =
/// channels`) that form `part`, in the order of the diffusers projection's rows: row `j` of
/// `to_q` is `qkv` row `qkv_rows(..)[j]`.
///
/// - New order (`QKVAttention`): `qkv` is q, k, v one after another, each already head-major:
///   q is rows `[0, C)`, k `[C, 2C)`, v `[2C, 3C)`.
/// - Legacy order (`QKVAttentionLegacy`): `qkv` is split into `heads` groups of `3 * ch` rows
///   (`ch = C / heads`) first; group `h` holds head `h`'s q, then its k, then its v, `ch` rows
///   each. Row `h * ch + c` of `to_q` is `qkv` row `h * 3ch + c`, of `to_k` row `h * 3ch + ch
///   + c`, of `to_v` row `h * 3ch + 2ch + c`.
pub fn qkv_rows(channels: usize, heads: usize, new_order: bool, part: QkvPart) -> Vec<usize> {
    let p = part.index();
    if new_order {
        return (p * channels..(p + 1) * channels).collect();
    }
    let ch = channels / heads;
    (0..heads)
        .flat_map(|h| (0..ch).map(move |c| h * 3 * ch + p * ch + c))
        .collect()
}

/// How a diffusers tensor's values come from its checkpoint tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Take {
    /// All values in their order (a Conv1d `[C, C, 1]` read as a `[C, C]` matrix included).
    All,
    /// The checkpoint tensor viewed as rows of `numel / rows` values, these rows in this order.
    Rows(Vec<usize>),
}

/// What a tensor is, for explaining a checkpoint that does not match the flags: which flag
/// most probably differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `time_embed.*`: its width is `num_channels` (x4).
    TimeEmbed,
    /// `label_emb`: present with `class_cond`.
    ClassEmbed,
    /// `skip_connection`: present where a resnet changes the channel count.
    Shortcut,
    /// A tensor of an attention block: present where `attention_resolutions` asks for one.
    Attention,
    /// A downsampler or upsampler: a resnet with `resblock_updown`, else a convolution.
    Resample,
    /// `out.2`: `out_channels` (6 with `learn_sigma`) rows.
    OutConv,
    /// Anything else whose shape follows the channel counts.
    Body,
}

/// One diffusers tensor and where it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The diffusers name (`down_blocks.0.resnets.1.conv1.weight`).
    pub name: String,
    /// The diffusers shape.
    pub shape: Vec<usize>,
    /// The checkpoint tensor's name (`input_blocks.2.0.in_layers.2.weight`).
    pub source: String,
    /// The checkpoint tensor's shape.
    pub source_shape: Vec<usize>,
    pub take: Take,
    pub role: Role,
}

/// The plan under construction: the model's shape and the tensors listed so far.
struct Planner<'a> {
    arch: &'a AdmArch,
    out: Vec<Planned>,
}

impl Planner<'_> {
    /// A tensor copied as it is, `shape` in the checkpoint and in diffusers.
    fn same(&mut self, src: &str, dst: &str, shape: &[usize], role: Role) {
        self.push(src, dst, shape, shape, Take::All, role);
    }

    fn push(
        &mut self,
        src: &str,
        dst: &str,
        source_shape: &[usize],
        shape: &[usize],
        take: Take,
        role: Role,
    ) {
        self.out.push(Planned {
            name: dst.to_string(),
            shape: shape.to_vec(),
            source: src.to_string(),
            source_shape: source_shape.to_vec(),
            take,
            role,
        });
    }

    /// `weight` and `bias` of a layer whose weight is `shape` and whose bias has `shape[0]`
    /// values.
    fn layer(&mut self, src: &str, dst: &str, shape: &[usize], role: Role) {
        self.same(
            &format!("{src}.weight"),
            &format!("{dst}.weight"),
            shape,
            role,
        );
        self.same(
            &format!("{src}.bias"),
            &format!("{dst}.bias"),
            &shape[..1],
            role,
        );
    }

    /// A GroupNorm of `c` channels.
    fn norm(&mut self, src: &str, dst: &str, c: usize, role: Role) {
        self.layer(src, dst, &[c], role);
    }

    /// A 3x3 convolution from `cin` to `cout` channels.
    fn conv3(&mut self, src: &str, dst: &str, cin: usize, cout: usize, role: Role) {
        self.layer(src, dst, &[cout, cin, 3, 3], role);
    }

    /// A `ResBlock` from `cin` to `cout` channels.
    fn resblock(&mut self, src: &str, dst: &str, cin: usize, cout: usize, role: Role) {
        let temb = self.arch.time_embed_dim();
        let proj = if self.arch.use_scale_shift_norm {
            2 * cout
        } else {
            cout
        };
        self.norm(
            &format!("{src}.in_layers.0"),
            &format!("{dst}.norm1"),
            cin,
            role,
        );
        self.conv3(
            &format!("{src}.in_layers.2"),
            &format!("{dst}.conv1"),
            cin,
            cout,
            role,
        );
        self.layer(
            &format!("{src}.emb_layers.1"),
            &format!("{dst}.time_emb_proj"),
            &[proj, temb],
            role,
        );
        self.norm(
            &format!("{src}.out_layers.0"),
            &format!("{dst}.norm2"),
            cout,
            role,
        );
        self.conv3(
            &format!("{src}.out_layers.3"),
            &format!("{dst}.conv2"),
            cout,
            cout,
            role,
        );
        if cin != cout {
            self.layer(
                &format!("{src}.skip_connection"),
                &format!("{dst}.conv_shortcut"),
                &[cout, cin, 1, 1],
                Role::Shortcut,
            );
        }
    }

    /// An `AttentionBlock` of `c` channels in an output block (`up`) or not.
    fn attention(&mut self, src: &str, dst: &str, c: usize, up: bool) {
        let role = Role::Attention;
        let heads = self.arch.heads(c, up);
        self.norm(
            &format!("{src}.norm"),
            &format!("{dst}.group_norm"),
            c,
            role,
        );
        for (part, name) in [
            (QkvPart::Q, "to_q"),
            (QkvPart::K, "to_k"),
            (QkvPart::V, "to_v"),
        ] {
            let rows = qkv_rows(c, heads, self.arch.use_new_attention_order, part);
            self.push(
                &format!("{src}.qkv.weight"),
                &format!("{dst}.{name}.weight"),
                &[3 * c, c, 1],
                &[c, c],
                Take::Rows(rows.clone()),
                role,
            );
            self.push(
                &format!("{src}.qkv.bias"),
                &format!("{dst}.{name}.bias"),
                &[3 * c],
                &[c],
                Take::Rows(rows),
                role,
            );
        }
        self.push(
            &format!("{src}.proj_out.weight"),
            &format!("{dst}.to_out.0.weight"),
            &[c, c, 1],
            &[c, c],
            Take::All,
            role,
        );
        self.same(
            &format!("{src}.proj_out.bias"),
            &format!("{dst}.to_out.0.bias"),
            &[c],
            role,
        );
    }
}

/// Every diffusers tensor of the `UNet2DModel` equivalent to the `UNetModel` `arch`, in the
/// order `UNetModel.__init__` creates their sources.
pub fn plan(arch: &AdmArch) -> Vec<Planned> {
    let mut p = Planner {
        arch,
        out: Vec::new(),
    };
    let chans = &arch.block_channels;
    let levels = arch.levels();
    let nrb = arch.num_res_blocks;
    let (mc, temb) = (arch.model_channels, arch.time_embed_dim());
    p.layer(
        "time_embed.0",
        "time_embedding.linear_1",
        &[temb, mc],
        Role::TimeEmbed,
    );
    p.layer(
        "time_embed.2",
        "time_embedding.linear_2",
        &[temb, temb],
        Role::TimeEmbed,
    );
    if let Some(n) = arch.num_classes {
        p.same(
            "label_emb.weight",
            "class_embedding.weight",
            &[n, temb],
            Role::ClassEmbed,
        );
    }
    let mut ch = chans[0];
    p.conv3(
        "input_blocks.0.0",
        "conv_in",
        arch.in_channels,
        ch,
        Role::Body,
    );
    // The channels of every input block's output, which the output blocks concatenate back.
    let mut skips = vec![ch];
    let mut k = 1;
    for (l, &c) in chans.iter().enumerate() {
        for i in 0..nrb {
            let dst = format!("down_blocks.{l}");
            p.resblock(
                &format!("input_blocks.{k}.0"),
                &format!("{dst}.resnets.{i}"),
                ch,
                c,
                Role::Body,
            );
            ch = c;
            if arch.level_attention[l] {
                p.attention(
                    &format!("input_blocks.{k}.1"),
                    &format!("{dst}.attentions.{i}"),
                    ch,
                    false,
                );
            }
            skips.push(ch);
            k += 1;
        }
        if l + 1 != levels {
            let dst = format!("down_blocks.{l}.downsamplers.0");
            if arch.resblock_updown {
                p.resblock(&format!("input_blocks.{k}.0"), &dst, ch, ch, Role::Resample);
            } else {
                p.conv3(
                    &format!("input_blocks.{k}.0.op"),
                    &format!("{dst}.conv"),
                    ch,
                    ch,
                    Role::Resample,
                );
            }
            skips.push(ch);
            k += 1;
        }
    }
    p.resblock("middle_block.0", "mid_block.resnets.0", ch, ch, Role::Body);
    p.attention("middle_block.1", "mid_block.attentions.0", ch, false);
    p.resblock("middle_block.2", "mid_block.resnets.1", ch, ch, Role::Body);
    let mut k = 0;
    for (r, l) in (0..levels).rev().enumerate() {
        let c = chans[l];
        for i in 0..=nrb {
            let skip = skips.pop().expect("one skip per input block");
            let dst = format!("up_blocks.{r}");
            p.resblock(
                &format!("output_blocks.{k}.0"),
                &format!("{dst}.resnets.{i}"),
                ch + skip,
                c,
                Role::Body,
            );
            ch = c;
            let mut next = 1;
            if arch.level_attention[l] {
                p.attention(
                    &format!("output_blocks.{k}.1"),
                    &format!("{dst}.attentions.{i}"),
                    ch,
                    true,
                );
                next = 2;
            }
            if l > 0 && i == nrb {
                let src = format!("output_blocks.{k}.{next}");
                let dst = format!("{dst}.upsamplers.0");
                if arch.resblock_updown {
                    p.resblock(&src, &dst, ch, ch, Role::Resample);
                } else {
                    p.conv3(
                        &format!("{src}.conv"),
                        &format!("{dst}.conv"),
                        ch,
                        ch,
                        Role::Resample,
                    );
                }
            }
            k += 1;
        }
    }
    p.norm("out.0", "conv_norm_out", ch, Role::Body);
    p.conv3(
        "out.2",
        "conv_out",
        chans[0],
        arch.out_channels,
        Role::OutConv,
    );
    p.out
}

//! The Llama-family decoder block: RMSNorm → GQA attention with RoPE →
//! residual → RMSNorm → SwiGLU MLP → residual.
//!
//! Llama, Mistral, Qwen2 and Qwen3 differ only in biases, q/k norms and the
//! sliding window, so one block with flags serves all four (one code path to
//! test instead of four copies).
//!
//! q/k/v and gate/up are each stored as one fused matrix (one GEMM instead of
//! three or two); every linear layer stays addressable by its Hugging Face name
//! for weight replacement, and the inputs of every linear layer can be observed
//! through [`Capture`].

use candle_core::{D, Device, Tensor};

use super::attention::{AttentionParams, attention};
use super::config::ModelConfig;
use super::depth::Sublayer;
use super::kernels::{self, AttnBuffers, F32View, Heads};
use super::weights::WeightSource;
use crate::error::{Error, Result};

/// The seven linear layers of a block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    /// All kinds in checkpoint order.
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// `self_attn.q_proj`, `mlp.down_proj`, ...
    pub fn module_path(self) -> &'static str {
        match self {
            LinearKind::Q => "self_attn.q_proj",
            LinearKind::K => "self_attn.k_proj",
            LinearKind::V => "self_attn.v_proj",
            LinearKind::O => "self_attn.o_proj",
            LinearKind::Gate => "mlp.gate_proj",
            LinearKind::Up => "mlp.up_proj",
            LinearKind::Down => "mlp.down_proj",
        }
    }

    /// Short name: `q_proj`, `down_proj`, ...
    pub fn short_name(self) -> &'static str {
        self.module_path().split('.').nth(1).unwrap_or_default()
    }

    /// The input site this layer reads (layers that share a site share a Hessian).
    pub fn site(self) -> Site {
        match self {
            LinearKind::Q | LinearKind::K | LinearKind::V => Site::AttnIn,
            LinearKind::O => Site::AttnOut,
            LinearKind::Gate | LinearKind::Up => Site::MlpIn,
            LinearKind::Down => Site::MlpAct,
        }
    }
}

/// Where in a block a linear layer's input comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// Normalised block input, read by q/k/v.
    AttnIn,
    /// Attention output, read by o_proj.
    AttnOut,
    /// Normalised residual after attention, read by gate/up.
    MlpIn,
    /// `silu(gate) ⊙ up`, read by down_proj.
    MlpAct,
}

impl Site {
    /// All sites in forward order.
    pub const ALL: [Site; 4] = [Site::AttnIn, Site::AttnOut, Site::MlpIn, Site::MlpAct];

    /// The linear layers that read this site.
    pub fn kinds(self) -> &'static [LinearKind] {
        match self {
            Site::AttnIn => &[LinearKind::Q, LinearKind::K, LinearKind::V],
            Site::AttnOut => &[LinearKind::O],
            Site::MlpIn => &[LinearKind::Gate, LinearKind::Up],
            Site::MlpAct => &[LinearKind::Down],
        }
    }

    /// A short name for files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Site::AttnIn => "attn_in",
            Site::AttnOut => "attn_out",
            Site::MlpIn => "mlp_in",
            Site::MlpAct => "mlp_act",
        }
    }
}

/// A linear layer of the model: block index and kind.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LinearId {
    pub block: usize,
    pub kind: LinearKind,
}

impl LinearId {
    /// The Hugging Face weight name, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub fn weight_name(self) -> String {
        format!(
            "model.layers.{}.{}.weight",
            self.block,
            self.kind.module_path()
        )
    }

    /// The bias name.
    pub fn bias_name(self) -> String {
        format!(
            "model.layers.{}.{}.bias",
            self.block,
            self.kind.module_path()
        )
    }

    /// Parses a weight name (with or without the `.weight` suffix).
    pub fn parse(name: &str) -> Option<LinearId> {
        let rest = name.strip_prefix("model.layers.")?;
        let (block, rest) = rest.split_once('.')?;
        let block = block.parse().ok()?;
        let rest = rest.strip_suffix(".weight").unwrap_or(rest);
        let kind = LinearKind::ALL
            .into_iter()
            .find(|k| k.module_path() == rest)?;
        Some(LinearId { block, kind })
    }

    /// `(out_features, in_features)` under a configuration.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let h = cfg.hidden_size;
        match self.kind {
            LinearKind::Q => (cfg.num_heads * cfg.head_dim, h),
            LinearKind::K | LinearKind::V => (cfg.num_kv_heads * cfg.head_dim, h),
            LinearKind::O => (h, cfg.num_heads * cfg.head_dim),
            LinearKind::Gate | LinearKind::Up => (cfg.intermediate_size, h),
            LinearKind::Down => (h, cfg.intermediate_size),
        }
    }
}

impl std::fmt::Display for LinearId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.block, self.kind.short_name())
    }
}

/// Receives the input of every linear layer as row-major `[tokens, width]`.
pub trait Capture {
    /// Called once per site per forward pass of a block.
    fn capture(&mut self, block: usize, site: Site, x: &[f32], width: usize) -> Result<()>;
}

/// One or more linear layers reading the same input, stored as one matrix
/// `[Σ out, in]` (rows of part `i` at `offsets[i]..offsets[i]+sizes[i]`).
#[derive(Clone)]
struct FusedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    kinds: Vec<LinearKind>,
    sizes: Vec<usize>,
}

impl FusedLinear {
    fn load(
        src: &WeightSource,
        cfg: &ModelConfig,
        block: usize,
        kinds: &[LinearKind],
        bias: bool,
        device: &Device,
    ) -> Result<Self> {
        let shapes: Vec<(usize, usize)> = kinds
            .iter()
            .map(|&kind| LinearId { block, kind }.shape(cfg))
            .collect();
        let rows: usize = shapes.iter().map(|s| s.0).sum();
        let inp = shapes[0].1;
        // The parts are appended to the fused matrix as they are read, so
        // loading holds the fused matrix and one part, not every part twice.
        let mut ws: Vec<f32> = Vec::new();
        let mut bs = Vec::new();
        let mut sizes = Vec::new();
        for (&kind, &(out, k)) in kinds.iter().zip(&shapes) {
            let id = LinearId { block, kind };
            let part = src.load_f32(&id.weight_name(), &[out, k])?;
            if kinds.len() == 1 {
                ws = part;
            } else {
                if ws.capacity() == 0 {
                    ws.reserve_exact(rows * inp);
                }
                ws.extend_from_slice(&part);
            }
            if bias {
                bs.push(src.load(&id.bias_name(), &[out], device)?);
            }
            sizes.push(out);
        }
        let weight = Tensor::from_vec(ws, (rows, inp), device)?;
        let bias = if bias {
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        Ok(FusedLinear {
            weight,
            bias,
            kinds: kinds.to_vec(),
            sizes,
        })
    }

    fn offset(&self, kind: LinearKind) -> Option<(usize, usize)> {
        let i = self.kinds.iter().position(|&k| k == kind)?;
        Some((self.sizes[..i].iter().sum(), self.sizes[i]))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn part(&self, kind: LinearKind) -> Result<Tensor> {
        let (off, n) = self.offset(kind).expect("kind belongs to this fused layer");
        Ok(self.weight.narrow(0, off, n)?)
    }

    fn set_part(&mut self, kind: LinearKind, w: &Tensor) -> Result<()> {
        let (off, n) = self.offset(kind).expect("kind belongs to this fused layer");
        if self.kinds.len() == 1 {
            self.weight = w.clone();
            return Ok(());
        }
        let total = self.weight.dim(0)?;
        let mut parts = Vec::with_capacity(3);
        if off > 0 {
            parts.push(self.weight.narrow(0, 0, off)?);
        }
        parts.push(w.clone());
        if off + n < total {
            parts.push(self.weight.narrow(0, off + n, total - off - n)?);
        }
        self.weight = Tensor::cat(&parts, 0)?.contiguous()?;
        Ok(())
    }
}

/// Per-layer key/value cache for generation: `[b, t, hkv, d]` each.
#[derive(Default, Clone)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dim(1).unwrap_or(0))
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shape information a block needs at run time.
#[derive(Debug, Clone)]
pub(crate) struct BlockDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub window: Option<usize>,
}

/// One transformer block.
#[derive(Clone)]
pub struct Block {
    index: usize,
    dims: BlockDims,
    input_norm: Tensor,
    post_norm: Tensor,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    qkv: FusedLinear,
    o: FusedLinear,
    gate_up: FusedLinear,
    down: FusedLinear,
    /// Depth pruning: the attention branch is skipped (adds nothing).
    drop_attn: bool,
    /// Depth pruning: the MLP branch is skipped (adds nothing).
    drop_mlp: bool,
}

impl Block {
    /// Loads block `index` from a checkpoint.
    pub fn load(
        src: &WeightSource,
        cfg: &ModelConfig,
        index: usize,
        device: &Device,
    ) -> Result<Self> {
        let p = |s: &str| format!("model.layers.{index}.{s}");
        let h = cfg.hidden_size;
        let norm = |name: String, n: usize| src.load(&name, &[n], device);
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(norm(p("self_attn.q_norm.weight"), cfg.head_dim)?),
                Some(norm(p("self_attn.k_norm.weight"), cfg.head_dim)?),
            )
        } else {
            (None, None)
        };
        Ok(Block {
            index,
            dims: BlockDims {
                n_heads: cfg.num_heads,
                n_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                eps: cfg.rms_norm_eps as f32,
                window: cfg.sliding_window,
            },
            input_norm: norm(p("input_layernorm.weight"), h)?,
            post_norm: norm(p("post_attention_layernorm.weight"), h)?,
            q_norm,
            k_norm,
            qkv: FusedLinear::load(
                src,
                cfg,
                index,
                &[LinearKind::Q, LinearKind::K, LinearKind::V],
                cfg.qkv_bias,
                device,
            )?,
            o: FusedLinear::load(src, cfg, index, &[LinearKind::O], cfg.o_bias, device)?,
            gate_up: FusedLinear::load(
                src,
                cfg,
                index,
                &[LinearKind::Gate, LinearKind::Up],
                cfg.mlp_bias,
                device,
            )?,
            down: FusedLinear::load(src, cfg, index, &[LinearKind::Down], cfg.mlp_bias, device)?,
            drop_attn: false,
            drop_mlp: false,
        })
    }

    /// Drops (skips) or restores a sublayer. A dropped sublayer adds nothing
    /// to the residual stream (its biases included); its weights are kept.
    pub fn set_dropped(&mut self, sublayer: Sublayer, dropped: bool) {
        match sublayer {
            Sublayer::Attn => self.drop_attn = dropped,
            Sublayer::Mlp => self.drop_mlp = dropped,
        }
    }

    /// Whether a sublayer is dropped.
    pub fn is_dropped(&self, sublayer: Sublayer) -> bool {
        match sublayer {
            Sublayer::Attn => self.drop_attn,
            Sublayer::Mlp => self.drop_mlp,
        }
    }

    /// The block's index in the model.
    pub fn index(&self) -> usize {
        self.index
    }

    fn fused(&self, kind: LinearKind) -> &FusedLinear {
        match kind.site() {
            Site::AttnIn => &self.qkv,
            Site::AttnOut => &self.o,
            Site::MlpIn => &self.gate_up,
            Site::MlpAct => &self.down,
        }
    }

    fn fused_mut(&mut self, kind: LinearKind) -> &mut FusedLinear {
        match kind.site() {
            Site::AttnIn => &mut self.qkv,
            Site::AttnOut => &mut self.o,
            Site::MlpIn => &mut self.gate_up,
            Site::MlpAct => &mut self.down,
        }
    }

    /// The current weight `[out, in]` of a linear layer.
    pub fn linear_weight(&self, kind: LinearKind) -> Result<Tensor> {
        self.fused(kind).part(kind)
    }

    /// Replaces the weight of a linear layer (same shape, f32).
    pub fn set_linear_weight(&mut self, kind: LinearKind, w: &Tensor) -> Result<()> {
        let old = self.linear_weight(kind)?;
        if old.dims() != w.dims() {
            return Err(Error::layer(
                LinearId {
                    block: self.index,
                    kind,
                }
                .weight_name(),
                format!(
                    "new weight has shape {:?}, expected {:?}",
                    w.dims(),
                    old.dims()
                ),
            ));
        }
        let w = w.to_dtype(old.dtype())?.to_device(old.device())?;
        self.fused_mut(kind).set_part(kind, &w)
    }

    /// Runs the block on `x [b, t, hidden]` at positions `offset..offset+t`.
    ///
    /// `cos`/`sin` are the RoPE tables for those positions. With a cache, keys
    /// and values are appended to it and attention sees all cached positions.
    /// Without a cache on the CPU this takes the fused kernels; otherwise
    /// [`Block::forward_reference`].
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut KvCache>,
        capture: Option<&mut (dyn Capture + '_)>,
    ) -> Result<Tensor> {
        if cache.is_none() && self.fast_path_available() && x.device().is_cpu() {
            let (b, t, h) = x.dims3()?;
            let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
            let cos = cos.contiguous()?;
            let sin = sin.contiguous()?;
            let (cv, sv) = (F32View::new(&cos), F32View::new(&sin));
            if let (Some(cv), Some(sv)) = (cv, sv) {
                let mut scratch = Scratch::default();
                self.forward_fast(
                    &mut xs,
                    b,
                    t,
                    cv.as_slice(),
                    sv.as_slice(),
                    &mut scratch,
                    capture,
                )?;
                return Ok(Tensor::from_vec(xs, (b, t, h), x.device())?);
            }
        }
        self.forward_reference(x, cos, sin, cache, capture)
    }

    /// Whether every weight is a contiguous f32 CPU tensor (the fused kernels' input).
    pub fn fast_path_available(&self) -> bool {
        let mut ts = vec![
            &self.input_norm,
            &self.post_norm,
            &self.qkv.weight,
            &self.o.weight,
            &self.gate_up.weight,
            &self.down.weight,
        ];
        ts.extend(self.q_norm.iter().chain(&self.k_norm));
        ts.extend(
            [&self.qkv, &self.o, &self.gate_up, &self.down]
                .into_iter()
                .filter_map(|f| f.bias.as_ref()),
        );
        ts.into_iter().all(|t| F32View::new(t).is_some())
    }

    /// The fused CPU forward pass on `x [b·t·hidden]` in place, positions 0..t.
    /// `cos`/`sin` are `[t, head_dim/2]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_fast(
        &self,
        x: &mut [f32],
        b: usize,
        t: usize,
        cos: &[f32],
        sin: &[f32],
        scratch: &mut Scratch,
        mut capture: Option<&mut (dyn Capture + '_)>,
    ) -> Result<()> {
        let BlockDims {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            eps,
            window,
        } = self.dims;
        let n = b * t;
        let hidden = self.input_norm.dim(0)?;
        let f = self.down.weight.dim(1)?;
        let qkv_w = (hq + 2 * hkv) * d;
        let sc = scratch;
        sc.ensure(n, hidden, qkv_w, hq * d, hkv * d, f);
        let mut emit = |site: Site, data: &[f32], width: usize| -> Result<()> {
            match capture.as_deref_mut() {
                Some(c) => c.capture(self.index, site, data, width),
                None => Ok(()),
            }
        };

        // Attention.
        if !self.drop_attn {
            kernels::rms_norm(x, view(&self.input_norm)?.as_slice(), eps, &mut sc.xn);
            emit(Site::AttnIn, &sc.xn, hidden)?;
            linear(&self.qkv, &sc.xn, hidden, &mut sc.qkv, false)?;
            let qk_norm = match (&self.q_norm, &self.k_norm) {
                (Some(qn), Some(kn)) => Some((view(qn)?, view(kn)?)),
                _ => None,
            };
            let heads = Heads { hq, hkv, d };
            kernels::rope_split(
                &sc.qkv,
                t,
                heads,
                cos,
                sin,
                qk_norm
                    .as_ref()
                    .map(|(q, k)| (q.as_slice(), k.as_slice(), eps)),
                &mut sc.q,
                &mut sc.k,
            );
            let buffers = AttnBuffers {
                q: &sc.q,
                q_rs: hq * d,
                k: &sc.k,
                k_rs: hkv * d,
                v: &sc.qkv[(hq + hkv) * d..],
                v_rs: qkv_w,
            };
            kernels::causal_attention(
                &buffers,
                b,
                t,
                t,
                heads,
                0,
                window,
                1.0 / (d as f32).sqrt(),
                &mut sc.attn,
            );
            emit(Site::AttnOut, &sc.attn, hq * d)?;
            linear(&self.o, &sc.attn, hq * d, x, true)?;
        }

        // MLP.
        if self.drop_mlp {
            return Ok(());
        }
        kernels::rms_norm(x, view(&self.post_norm)?.as_slice(), eps, &mut sc.xn);
        emit(Site::MlpIn, &sc.xn, hidden)?;
        linear(&self.gate_up, &sc.xn, hidden, &mut sc.gu, false)?;
        kernels::swiglu(&sc.gu, f, &mut sc.act);
        emit(Site::MlpAct, &sc.act, f)?;
        linear(&self.down, &sc.act, f, x, true)?;
        Ok(())
    }

    /// `x + o_proj(attention(input_norm(x)))` with candle ops (the first half
    /// of [`Block::forward_reference`]).
    fn attention_branch(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut KvCache>,
        mut capture: Option<&mut (dyn Capture + '_)>,
    ) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let BlockDims {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            eps,
            window,
        } = self.dims;
        let residual = x;
        let xn = candle_nn::ops::rms_norm(x, &self.input_norm, eps)?;
        let xn = xn.reshape((b * t, hidden))?;
        if let Some(c) = capture.as_deref_mut() {
            c.capture(
                self.index,
                Site::AttnIn,
                &xn.flatten_all()?.to_vec1::<f32>()?,
                xn.dim(1)?,
            )?;
        }
        let qkv = self.qkv.forward(&xn)?.reshape((b, t, (hq + 2 * hkv) * d))?;
        let q = qkv.narrow(2, 0, hq * d)?.reshape((b, t, hq, d))?;
        let k = qkv.narrow(2, hq * d, hkv * d)?.reshape((b, t, hkv, d))?;
        let v = qkv
            .narrow(2, (hq + hkv) * d, hkv * d)?
            .reshape((b, t, hkv, d))?
            .contiguous()?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (
                candle_nn::ops::rms_norm(&q.contiguous()?, qn, eps)?,
                candle_nn::ops::rms_norm(&k.contiguous()?, kn, eps)?,
            ),
            _ => (q.contiguous()?, k.contiguous()?),
        };
        let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?;

        let (k, v, offset) = match cache {
            Some(cache) => {
                let offset = cache.len();
                let (k, v) = match (&cache.k, &cache.v) {
                    (Some(pk), Some(pv)) => {
                        (Tensor::cat(&[pk, &k], 1)?, Tensor::cat(&[pv, &v], 1)?)
                    }
                    _ => (k, v),
                };
                cache.k = Some(k.clone());
                cache.v = Some(v.clone());
                (k, v, offset)
            }
            None => (k, v, 0),
        };
        let attn = attention(
            &q,
            &k,
            &v,
            AttentionParams {
                q_offset: offset,
                window,
                scale: 1.0 / (d as f32).sqrt(),
            },
        )?;
        let attn = attn.reshape((b * t, hq * d))?;
        if let Some(c) = capture {
            c.capture(
                self.index,
                Site::AttnOut,
                &attn.flatten_all()?.to_vec1::<f32>()?,
                attn.dim(1)?,
            )?;
        }
        let attn = self.o.forward(&attn)?.reshape((b, t, hidden))?;
        Ok((residual + attn)?)
    }

    /// The block written with candle ops (any device, KV cache); the oracle
    /// for the fused CPU path.
    pub fn forward_reference(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut KvCache>,
        mut capture: Option<&mut (dyn Capture + '_)>,
    ) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let eps = self.dims.eps;
        let x = if self.drop_attn {
            x.clone()
        } else {
            self.attention_branch(x, cos, sin, cache, capture.as_deref_mut())?
        };
        if self.drop_mlp {
            return Ok(x);
        }
        let xn = candle_nn::ops::rms_norm(&x, &self.post_norm, eps)?;
        let xn = xn.reshape((b * t, hidden))?;
        if let Some(c) = capture.as_deref_mut() {
            c.capture(
                self.index,
                Site::MlpIn,
                &xn.flatten_all()?.to_vec1::<f32>()?,
                xn.dim(1)?,
            )?;
        }
        let gu = self.gate_up.forward(&xn)?;
        let act = candle_nn::ops::swiglu(&gu)?;
        if let Some(c) = capture {
            c.capture(
                self.index,
                Site::MlpAct,
                &act.flatten_all()?.to_vec1::<f32>()?,
                act.dim(1)?,
            )?;
        }
        let y = self.down.forward(&act)?.reshape((b, t, hidden))?;
        Ok((x + y)?)
    }
}

fn view(t: &Tensor) -> Result<F32View<'_>> {
    F32View::new(t)
        .ok_or_else(|| Error::Invalid("the fused CPU path needs contiguous f32 CPU tensors".into()))
}

/// `out = (add ? out : 0) + x · Wᵀ + bias` for a (fused) linear layer.
fn linear(l: &FusedLinear, x: &[f32], k: usize, out: &mut [f32], add: bool) -> Result<()> {
    let w = view(&l.weight)?;
    let mut accumulate = add;
    if let Some(bias) = &l.bias {
        let bv = view(bias)?;
        if add {
            let m = bv.as_slice().len();
            let bs = bv.as_slice();
            out.chunks_exact_mut(m)
                .for_each(|r| r.iter_mut().zip(bs).for_each(|(o, b)| *o += b));
        } else {
            kernels::fill_rows(out, bv.as_slice());
            accumulate = true;
        }
    }
    kernels::matmul_wt(x, k, w.as_slice(), out, accumulate);
    Ok(())
}

/// Scratch buffers of the fused CPU forward pass, reused across blocks.
#[derive(Default)]
pub struct Scratch {
    xn: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    attn: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
}

impl Scratch {
    fn ensure(&mut self, n: usize, hidden: usize, qkv: usize, q: usize, k: usize, f: usize) {
        let fit = |v: &mut Vec<f32>, len: usize| v.resize(len, 0.0);
        fit(&mut self.xn, n * hidden);
        fit(&mut self.qkv, n * qkv);
        fit(&mut self.q, n * q);
        fit(&mut self.k, n * k);
        fit(&mut self.attn, n * q);
        fit(&mut self.gu, n * 2 * f);
        fit(&mut self.act, n * f);
    }
}

/// Final RMSNorm and LM head.
#[derive(Clone)]
pub struct Head {
    pub(crate) norm: Tensor,
    pub(crate) weight: Tensor,
    pub(crate) eps: f32,
}

impl Head {
    /// Logits `[b·t, vocab]` from hidden states `[b·t·hidden]` with the fused
    /// CPU kernels, if the weights allow it.
    pub(crate) fn forward_fast(&self, x: &[f32], xn: &mut Vec<f32>) -> Option<Vec<f32>> {
        let norm = F32View::new(&self.norm)?;
        let w = F32View::new(&self.weight)?;
        let h = norm.as_slice().len();
        xn.resize(x.len(), 0.0);
        kernels::rms_norm(x, norm.as_slice(), self.eps, xn);
        let vocab = w.as_slice().len() / h;
        let mut logits = vec![0f32; x.len() / h * vocab];
        kernels::matmul_wt(xn, h, w.as_slice(), &mut logits, false);
        Some(logits)
    }

    /// Logits `[b, t, vocab]` from hidden states `[b, t, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let xn = candle_nn::ops::rms_norm(x, &self.norm, self.eps)?;
        let logits = xn.reshape((b * t, h))?.matmul(&self.weight.t()?)?;
        let v = logits.dim(D::Minus1)?;
        Ok(logits.reshape((b, t, v))?)
    }
}

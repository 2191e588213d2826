//! Round-to-nearest quantization: each group gets its grid from its own
//! weights ([`crate::grid`]) and each weight its nearest code.

use half::f16;
use rayon::prelude::*;

use crate::grid::{ClipSearch, Grid32, QuantScheme, check_finite, fit_group};
use crate::{Provenance, QuantError, QuantizedLinear};

/// Parameters of [`rtn`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RtnParams {
    /// Bit width and grouping.
    pub scheme: QuantScheme,
    /// Optional MSE clipping search per group.
    pub clip: Option<ClipSearch>,
}

/// Round-to-nearest quantization of `w` (row-major, `cols` input features).
///
/// # Panics
/// If `cols == 0` or `w.len()` is not a multiple of `cols` (shape contract).
#[track_caller]
pub fn rtn(w: &[f32], cols: usize, params: &RtnParams) -> Result<QuantizedLinear, QuantError> {
    assert!(
        cols > 0 && w.len().is_multiple_of(cols),
        "w.len() must be a multiple of cols"
    );
    let scheme = params.scheme;
    scheme.validate()?;
    check_finite(w, cols)?;
    let rows = w.len() / cols;
    let gl = scheme.group_len(cols);
    let ng = scheme.groups_per_row(cols);
    let maxq = scheme.maxq();
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![f16::ZERO; rows * ng];
    let mut zeros = vec![0u8; rows * ng];
    codes
        .par_chunks_mut(cols)
        .zip(scales.par_chunks_mut(ng))
        .zip(zeros.par_chunks_mut(ng))
        .enumerate()
        .try_for_each(|(r, ((codes, scales), zeros))| {
            let row = &w[r * cols..(r + 1) * cols];
            for (g, (xs, qs)) in row.chunks(gl).zip(codes.chunks_mut(gl)).enumerate() {
                let grid = fit_group(xs, &scheme, params.clip.as_ref()).map_err(|scale| {
                    QuantError::ScaleOverflow {
                        row: r,
                        group: g,
                        scale,
                    }
                })?;
                scales[g] = grid.scale;
                zeros[g] = grid.zero;
                let g32 = Grid32::new(grid, maxq);
                for (q, &x) in qs.iter_mut().zip(xs) {
                    *q = g32.code(x) as u8;
                }
            }
            Ok(())
        })?;
    if scheme.sym {
        zeros = Vec::new();
    }
    Ok(QuantizedLinear::new_unchecked(
        rows,
        cols,
        scheme,
        codes,
        scales,
        zeros,
        None,
        Provenance::Rtn {
            clip: params.clip.is_some(),
        },
    ))
}

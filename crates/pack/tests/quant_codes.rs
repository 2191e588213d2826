//! `quant::encode_codes` on real quantized layers: the demo model's linear
//! layers quantized by `dynapress-compress` (RTN), stored as dynapress
//! stores them, must round-trip byte for byte and code close to their
//! empirical entropy.

mod common;

use dynapress_compress::pack::unpack_bits;
use dynapress_compress::{QuantScheme, RtnParams, rtn};
use dynapress_pack::quant::{Groups, decode_codes, encode_codes, packed_len};
use safetensors::{Dtype, SafeTensors};

/// Order-0 empirical entropy of `syms` in bytes.
fn entropy_bytes(syms: impl Iterator<Item = usize>) -> f64 {
    let mut h = vec![0u64; 512];
    let mut n = 0u64;
    for s in syms {
        h[s] += 1;
        n += 1;
    }
    h.iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (n as f64 / c as f64).log2())
        .sum::<f64>()
        / 8.0
}

#[test]
fn demo_model_layers_round_trip_and_code_near_their_entropy() {
    let bytes = std::fs::read(common::fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let layers = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.3.self_attn.k_proj.weight",
        "model.layers.5.mlp.down_proj.weight",
    ];
    let mut total_packed = 0usize;
    let mut total_coded_2bit = 0usize;
    for name in layers {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::BF16);
        let cols = t.shape()[1];
        let w: Vec<f32> = t
            .data()
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect();
        // Group lengths that divide the row, one that does not (96), whole rows.
        for (bits, group_size, sym) in [
            (2u8, 128usize, false),
            (3, 128, false),
            (4, 128, false),
            (4, 96, false),
            (4, 128, true),
            (8, 0, false),
        ] {
            let scheme = QuantScheme {
                bits,
                group_size,
                sym,
            };
            let q = rtn(&w, cols, &RtnParams { scheme, clip: None }).unwrap();
            let bufs = q.to_buffers();
            let buf = |n: &str| bufs.iter().find(|b| b.name == n).map(|b| b.data.as_slice());
            let packed = buf("codes").unwrap();
            let n = q.rows() * q.cols();
            assert_eq!(packed.len(), packed_len(n, bits));
            let zeros = if sym {
                vec![1u8 << (bits - 1); q.rows() * q.groups_per_row()]
            } else {
                let z = buf("zeros").unwrap();
                let zeros = unpack_bits(z, bits, q.rows() * q.groups_per_row()).unwrap();
                // Zero points code and round-trip as a code stream of their own.
                let blob = encode_codes(z, bits, zeros.len(), None).unwrap();
                assert_eq!(decode_codes(&blob, bits, zeros.len(), None).unwrap(), z);
                zeros
            };
            let g = Groups {
                zeros: &zeros,
                cols,
                group_len: scheme.group_len(cols),
            };
            let blob = encode_codes(packed, bits, n, Some(&g)).unwrap();
            let back = decode_codes(&blob, bits, n, Some(&g)).unwrap();
            assert!(back == packed, "{name} {scheme:?}: round trip");

            // Near the better of the two order-0 entropies, never below both.
            let codes = unpack_bits(packed, bits, n).unwrap();
            let maxq = (1usize << bits) - 1;
            let gl = scheme.group_len(cols);
            let per_row = cols.div_ceil(gl);
            let h_plain = entropy_bytes(codes.iter().map(|&c| c as usize));
            let h_centered = entropy_bytes(codes.iter().enumerate().map(|(i, &c)| {
                let z = zeros[(i / cols) * per_row + (i % cols) / gl] as usize;
                c as usize + maxq - z
            }));
            let h = h_plain.min(h_centered);
            let len = blob.len() as f64;
            assert!(len >= h, "{name} {scheme:?}: {len} below the entropy {h}");
            assert!(
                len <= 1.01 * h + 400.0,
                "{name} {scheme:?}: {len} bytes for an entropy of {h}"
            );
            if sym {
                // A constant zero point: centering is a relabelling.
                assert!((h_plain - h_centered).abs() < 1e-6 * h_plain);
            }
            if bits == 2 && !sym {
                total_packed += packed.len();
                total_coded_2bit += blob.len();
            }
        }
    }
    // Bell-shaped weights on min-max grids: at 2 bits the outer levels are
    // rare, so coding must save well over the 5 % the issue asks for.
    assert!(
        (total_coded_2bit as f64) < 0.9 * total_packed as f64,
        "{total_coded_2bit} of {total_packed}"
    );
}

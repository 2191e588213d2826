//! Storage format: bits accounting, buffer round trips, corrupt buffers.

mod common;

use common::*;
use dynapress_compress::{
    BufferDtype, FormatError, GptqParams, Hessian, QuantScheme, QuantizedLinear, RtnParams, gptq,
    rtn,
};

fn variants() -> Vec<QuantizedLinear> {
    let mut out = Vec::new();
    let mut r = rng(21);
    // Odd shapes so that packed streams need padding, plus a clean one.
    for &(rows, cols) in &[(7usize, 45usize), (16, 128), (5, 33)] {
        let x = correlated_inputs(&mut r, 256, cols);
        let mut h = Hessian::new(cols);
        h.add_batch(&x).unwrap();
        let w = normals(&mut r, rows * cols, 0.1);
        for bits in 2..=8u8 {
            for &(group, sym) in &[(0usize, false), (16, false), (16, true), (10, true)] {
                let scheme = QuantScheme {
                    bits,
                    group_size: group,
                    sym,
                };
                out.push(rtn(&w, cols, &RtnParams { scheme, clip: None }).unwrap());
                out.push(
                    gptq(
                        &w,
                        &h,
                        &GptqParams {
                            scheme,
                            act_order: true,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn storage_bits_equal_stored_bytes_and_round_trip() {
    let vs = variants();
    assert!(
        vs.iter().any(|q| q.perm().is_some()),
        "some variants must store a permutation"
    );
    for q in &vs {
        let bufs = q.to_buffers();
        let bytes: usize = bufs.iter().map(|b| b.data.len()).sum();
        assert_eq!(q.storage_bits(), 8 * bytes as u64, "{:?}", q.meta());
        for b in &bufs {
            assert_eq!(
                b.shape.iter().product::<usize>() * b.dtype.size(),
                b.data.len()
            );
        }
        // Meta goes through JSON as it would in the database.
        let meta: dynapress_compress::QuantMeta =
            serde_json::from_str(&serde_json::to_string(&q.meta()).unwrap()).unwrap();
        let back = QuantizedLinear::from_buffers(&meta, &bufs).unwrap();
        assert_eq!(&back, q);
        assert_eq!(back.dequantize(), q.dequantize());
    }
}

#[test]
fn bits_formula_for_real_shapes() {
    // 4-bit, g128, f16 scale, 4-bit zero = 4 + 20/128.
    let cols = 1024;
    let w = normals(&mut rng(22), 64 * cols, 0.1);
    let q = rtn(
        &w,
        cols,
        &RtnParams {
            scheme: QuantScheme::new(4, 128),
            clip: None,
        },
    )
    .unwrap();
    assert_eq!(q.bits_per_weight(), 4.0 + 20.0 / 128.0);
    assert_eq!(
        q.bits_per_weight(),
        QuantScheme::new(4, 128).nominal_bits_per_weight(cols)
    );
    // 3-bit symmetric per-row: 3 + 16/cols.
    let s = QuantScheme {
        bits: 3,
        group_size: 0,
        sym: true,
    };
    let q = rtn(
        &w,
        cols,
        &RtnParams {
            scheme: s,
            clip: None,
        },
    )
    .unwrap();
    assert_eq!(q.bits_per_weight(), 3.0 + 16.0 / cols as f64);
    // Act-order with dynamic groups adds a u16 permutation: 16·cols bits.
    let mut h = Hessian::new(cols);
    h.add_batch(&correlated_inputs(&mut rng(23), 64, cols))
        .unwrap();
    let p = GptqParams {
        scheme: QuantScheme::new(4, 128),
        act_order: true,
        ..Default::default()
    };
    let q = gptq(&w, &h, &p).unwrap();
    assert!(q.perm().is_some());
    assert_eq!(
        q.storage_bits(),
        (64 * cols) as u64 * 4 + 64 * 8 * 20 + 16 * cols as u64
    );
}

#[test]
fn corrupt_buffers_are_rejected() {
    let vs = variants();
    let q = vs
        .iter()
        .find(|q| q.perm().is_some() && !q.scheme().sym && q.scheme().bits == 3)
        .unwrap();
    let meta = q.meta();
    let good = q.to_buffers();
    let with = |f: &dyn Fn(&mut Vec<dynapress_compress::NamedBuffer>)| {
        let mut b = good.clone();
        f(&mut b);
        QuantizedLinear::from_buffers(&meta, &b)
    };
    let idx = |name: &str| good.iter().position(|b| b.name == name).unwrap();
    // Truncated codes (shape kept consistent with the bytes).
    let e = with(&|b| {
        let c = &mut b[idx("codes")];
        c.data.pop();
        c.shape = vec![c.data.len()];
    });
    assert!(
        matches!(e, Err(FormatError::BufferSize { name: "codes", .. })),
        "{e:?}"
    );
    // Shape that disagrees with the bytes.
    let e = with(&|b| b[idx("scales")].shape = vec![1, 1]);
    assert!(matches!(e, Err(FormatError::ShapeMismatch { .. })), "{e:?}");
    // Missing zeros for an asymmetric scheme.
    let e = with(&|b| {
        b.remove(idx("zeros"));
    });
    assert!(
        matches!(e, Err(FormatError::MissingBuffer { name: "zeros" })),
        "{e:?}"
    );
    // Wrong dtype.
    let e = with(&|b| {
        let s = &mut b[idx("scales")];
        s.dtype = BufferDtype::U16;
    });
    assert!(
        matches!(e, Err(FormatError::BadDtype { name: "scales", .. })),
        "{e:?}"
    );
    // Not a permutation.
    let e = with(&|b| {
        let p = &mut b[idx("perm")];
        p.data[0] = p.data[2];
        p.data[1] = p.data[3];
    });
    assert!(matches!(e, Err(FormatError::InvalidPermutation)), "{e:?}");
    // Non-finite scale.
    let e = with(&|b| {
        let s = &mut b[idx("scales")];
        s.data[0] = 0x00;
        s.data[1] = 0x7c; // +inf in f16
    });
    assert!(
        matches!(e, Err(FormatError::NonFiniteScale { index: 0 })),
        "{e:?}"
    );
    // Unknown buffer, duplicate buffer.
    let e = with(&|b| {
        let mut x = b[0].clone();
        x.name = "bias".into();
        b.push(x);
    });
    assert!(
        matches!(e, Err(FormatError::UnexpectedBuffer { .. })),
        "{e:?}"
    );
    let e = with(&|b| {
        let x = b[0].clone();
        b.push(x);
    });
    assert!(
        matches!(e, Err(FormatError::DuplicateBuffer { .. })),
        "{e:?}"
    );
    // Metadata with an impossible bit width.
    let mut m = meta;
    m.scheme.bits = 9;
    assert!(matches!(
        QuantizedLinear::from_buffers(&m, &good),
        Err(FormatError::BadScheme { .. })
    ));
}

#[test]
fn from_parts_validates() {
    let s = QuantScheme::new(3, 4);
    let ok = QuantizedLinear::from_parts(
        1,
        8,
        s,
        vec![0, 1, 2, 3, 4, 5, 6, 7],
        vec![half::f16::ONE; 2],
        vec![3, 4],
        None,
        dynapress_compress::Provenance::Rtn { clip: false },
    )
    .unwrap();
    assert_eq!(
        ok.dequantize(),
        vec![-3.0, -2.0, -1.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    );
    let bad = QuantizedLinear::from_parts(
        1,
        8,
        s,
        vec![0, 1, 2, 3, 4, 5, 6, 8],
        vec![half::f16::ONE; 2],
        vec![3, 4],
        None,
        dynapress_compress::Provenance::Rtn { clip: false },
    );
    assert!(matches!(bad, Err(FormatError::CodeOutOfRange { bits: 3 })));
}

//! Damaged containers and unusable inputs: clear errors, no panic, and no
//! output left behind.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dynapress_pack::{
    Error, InputFile, PackOptions, PackedReader, UnpackOptions, pack_dir, pack_files, unpack,
};
use rand_chacha::rand_core::Rng;

/// A small container: a bf16 safetensors file (several chunks) and a
/// random (stored) file whose chunk record is easy to locate.
fn container() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut r = rng(9);
    let w: Vec<u16> = (0..40_000)
        .map(|_| (normalish(&mut r, 0.05).to_bits() >> 16) as u16)
        .collect();
    let st = safetensors(
        &[("w".into(), "BF16".into(), vec![200, 200], bf16_bytes(w))],
        0,
    );
    let random: Vec<u8> = (0..5000).map(|_| r.next_u32() as u8).collect();
    let files = vec![
        ("a.bin".to_string(), random),
        ("b/model.safetensors".to_string(), st),
    ];
    let inputs: Vec<InputFile<'_>> = files
        .iter()
        .map(|(n, d)| InputFile { name: n, data: d })
        .collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    let o = PackOptions {
        chunk_size: 16 << 10,
        ..PackOptions::default()
    };
    pack_files(&inputs, &mut buf, "mem".as_ref(), &o).unwrap();
    (buf.into_inner(), files)
}

/// Writes `bytes` as a container and tries to unpack it into a directory
/// that does not exist yet; returns the error. Checks that nothing was
/// created: no output directory, no stray temporary files.
fn unpack_fails(bytes: &[u8]) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    let dpk = tmp.path().join("bad.dpk");
    std::fs::write(&dpk, bytes).unwrap();
    let out = tmp.path().join("out/nested");
    let err = unpack(&dpk, &out, &UnpackOptions::default()).unwrap_err();
    assert!(
        !tmp.path().join("out").exists(),
        "output directory left behind: {err}"
    );
    assert_eq!(list(tmp.path()), vec!["bad.dpk".to_string()]);
    // Into an existing, empty directory: it stays empty.
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let err2 = unpack(&dpk, &existing, &UnpackOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), err2.to_string());
    assert!(
        list(&existing).is_empty(),
        "files left behind: {:?}",
        list(&existing)
    );
    // The message names the container.
    assert!(err.to_string().contains("bad.dpk"), "{err}");
    err
}

fn index_offset(c: &[u8]) -> usize {
    u64::from_le_bytes(c[16..24].try_into().unwrap()) as usize
}

/// Offset of the first chunk record of the first file ("a.bin", one
/// stored segment): u32 files, u16 name length, name, u64 size, u8 kind,
/// u32 segments, u8 codec, u64 length, u32 chunks.
fn first_chunk_record(c: &[u8]) -> usize {
    index_offset(c) + 4 + 2 + "a.bin".len() + 8 + 1 + 4 + 1 + 8 + 4
}

#[test]
fn intact_container_unpacks() {
    let (c, files) = container();
    let tmp = tempfile::tempdir().unwrap();
    let dpk = tmp.path().join("ok.dpk");
    std::fs::write(&dpk, &c).unwrap();
    unpack(&dpk, &tmp.path().join("out"), &UnpackOptions::default()).unwrap();
    for (n, d) in &files {
        assert_eq!(&std::fs::read(tmp.path().join("out").join(n)).unwrap(), d);
    }
    // The offset arithmetic of the crafted cases below matches the layout.
    let rec = first_chunk_record(&c);
    assert_eq!(u64::from_le_bytes(c[rec..rec + 8].try_into().unwrap()), 64);
    assert_eq!(
        u32::from_le_bytes(c[rec + 12..rec + 16].try_into().unwrap()),
        5000
    );
}

#[test]
fn truncated_container() {
    let (c, _) = container();
    for cut in [
        1,
        7,
        8,
        11,
        12,
        40,
        63,
        64,
        1000,
        index_offset(&c),
        c.len() - 1,
    ] {
        let err = unpack_fails(&c[..cut]);
        assert!(
            matches!(err, Error::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    // Empty file: not a pack at all.
    assert!(matches!(unpack_fails(&[]), Error::NotAPack { .. }));
}

#[test]
fn wrong_checksums() {
    let (c, _) = container();
    // A payload byte of the stored chunk, of a coded chunk, an index byte,
    // and a header byte.
    let coded_payload = 64 + 5000 + 100;
    for (at, what) in [
        (64 + 10, "a.bin"),
        (coded_payload, "model.safetensors"),
        (index_offset(&c) + 3, "index"),
        (20, "header"),
    ] {
        let mut bad = c.clone();
        bad[at] ^= 0x40;
        let err = unpack_fails(&bad);
        assert!(matches!(err, Error::Checksum { .. }), "byte {at}: {err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    // A wrong stored checksum (payload intact) is caught as well.
    let mut bad = c.clone();
    let rec = first_chunk_record(&c);
    bad[rec + 17] ^= 1; // payload hash
    rehash(&mut bad);
    assert!(matches!(unpack_fails(&bad), Error::Checksum { .. }));
}

#[test]
fn damage_in_a_later_file_leaves_no_earlier_file() {
    // "a.bin" decodes fine; the second file is damaged.
    let (mut c, _) = container();
    let at = index_offset(&c) - 10;
    c[at] ^= 1;
    let err = unpack_fails(&c);
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn chunk_offset_past_the_end() {
    let (c, _) = container();
    let rec = first_chunk_record(&c);
    for offset in [
        index_offset(&c) as u64 - 10,
        c.len() as u64 + 5,
        u64::MAX - 2,
        3,
    ] {
        let mut bad = c.clone();
        bad[rec..rec + 8].copy_from_slice(&offset.to_le_bytes());
        rehash(&mut bad);
        let err = unpack_fails(&bad);
        assert!(
            matches!(err, Error::Corrupt { .. }),
            "offset {offset}: {err}"
        );
        assert!(err.to_string().contains("outside the data area"), "{err}");
    }
}

#[test]
fn version_from_the_future() {
    let (c, _) = container();
    let mut bad = c.clone();
    let future = dynapress_pack::FORMAT_VERSION + 1;
    bad[8..12].copy_from_slice(&future.to_le_bytes());
    // With and without a matching header checksum the version is reported.
    let err = unpack_fails(&bad);
    assert!(
        matches!(
            err,
            Error::FutureVersion {
                found,
                supported: dynapress_pack::FORMAT_VERSION,
                ..
            } if found == future
        ),
        "{err}"
    );
    rehash(&mut bad);
    let err = unpack_fails(&bad);
    assert!(err.to_string().contains("upgrade"), "{err}");
}

#[test]
fn not_a_pack_and_bad_flags() {
    let err =
        unpack_fails(b"PK\x03\x04 this is a zip file, not a pack at all........................");
    assert!(matches!(err, Error::NotAPack { .. }));
    let (c, _) = container();
    let mut bad = c.clone();
    bad[12] = 1;
    rehash(&mut bad);
    assert!(matches!(unpack_fails(&bad), Error::Corrupt { .. }));
    // Trailing garbage after the index.
    let mut bad = c.clone();
    bad.extend_from_slice(b"junk");
    assert!(matches!(unpack_fails(&bad), Error::Corrupt { .. }));
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let (c, _) = container();
    let io = index_offset(&c);
    let mut bad = c.clone();
    bad[io..io + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    rehash(&mut bad);
    assert!(matches!(unpack_fails(&bad), Error::Corrupt { .. }));
    // Chunk count of the first segment.
    let mut bad = c.clone();
    let rec = first_chunk_record(&c);
    bad[rec - 4..rec].copy_from_slice(&u32::MAX.to_le_bytes());
    rehash(&mut bad);
    assert!(matches!(unpack_fails(&bad), Error::Corrupt { .. }));
    // A chunk claiming a huge original length.
    let mut bad = c.clone();
    bad[rec + 12..rec + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    rehash(&mut bad);
    assert!(matches!(unpack_fails(&bad), Error::Corrupt { .. }));
    // An unsafe file name.
    let mut bad = c.clone();
    bad[io + 6..io + 11].copy_from_slice(b"../ab");
    rehash(&mut bad);
    let err = unpack_fails(&bad);
    assert!(err.to_string().contains("unsafe name"), "{err}");
}

#[test]
fn random_damage_never_panics_or_returns_wrong_bytes() {
    // Flip bytes anywhere. Without fixing the checksums every flip is an
    // error. With the header and index checksums forged to match, a flip
    // may land in a field that does not affect the output (the file kind,
    // the unused hash of the original bytes of a stored chunk); otherwise it
    // must be an error. Never a panic, never silently wrong bytes.
    let (c, files) = container();
    let mut r = rng(10);
    for i in 0..400 {
        let mut bad = c.clone();
        for _ in 0..1 + i % 3 {
            let at = (r.next_u32() as usize) % bad.len();
            bad[at] ^= 1 << (r.next_u32() % 8);
        }
        let forged = i % 2 == 0;
        if forged {
            rehash(&mut bad);
        }
        let outcome = PackedReader::from_bytes(bad, "fuzz.dpk").and_then(|reader| {
            files
                .iter()
                .map(|(n, _)| reader.read_file(n))
                .collect::<Result<Vec<_>, _>>()
        });
        match outcome {
            Err(_) => {}
            Ok(got) => {
                assert!(forged, "damage {i} went unnoticed");
                for ((_, want), got) in files.iter().zip(got) {
                    assert!(&got == want, "damage {i} produced wrong bytes");
                }
            }
        }
    }
}

#[test]
fn damaged_payload_with_matching_hash_is_still_rejected() {
    // Corrupt a coded chunk and forge its payload checksum: the decoder
    // must fail cleanly (or the decoded-bytes checksum must catch it).
    let (c, _) = container();
    let reader = PackedReader::from_bytes(c.clone(), "x").unwrap();
    assert_eq!(reader.files().len(), 2);
    let mut r = rng(11);
    // Locate chunk records of the safetensors file by scanning the index
    // for payload offsets past the stored chunk.
    let io = index_offset(&c);
    let mut recs = vec![];
    let mut p = first_chunk_record(&c) + 33;
    while p + 33 <= c.len() {
        let off = u64::from_le_bytes(c[p..p + 8].try_into().unwrap());
        let len = u32::from_le_bytes(c[p + 8..p + 12].try_into().unwrap()) as usize;
        if off >= 64 + 5000 && (off as usize) + len <= io && c[p + 16] == 1 {
            recs.push((p, off as usize, len));
            p += 33;
        } else {
            p += 1;
        }
    }
    assert!(recs.len() >= 3, "found {} coded chunk records", recs.len());
    for k in 0..200 {
        let (p, off, len) = recs[k % recs.len()];
        let mut bad = c.clone();
        let at = off + (r.next_u32() as usize) % len;
        bad[at] ^= 1 << (k % 8);
        let h = xxh3(&bad[off..off + len]);
        bad[p + 17..p + 25].copy_from_slice(&h.to_le_bytes());
        rehash(&mut bad);
        let reader = PackedReader::from_bytes(bad, "forged.dpk").unwrap();
        let err = reader.read_file("b/model.safetensors").unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. } | Error::Checksum { .. }),
            "{err}"
        );
    }
}

#[test]
fn unusable_pack_inputs_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.dpk");
    let check = |in_dir: PathBuf| {
        let err = pack_dir(&in_dir, &out, &PackOptions::default()).unwrap_err();
        assert!(!out.exists());
        assert!(
            list(tmp.path())
                .iter()
                .all(|f| !f.contains("dynapress-tmp")),
            "{:?}",
            list(tmp.path())
        );
        err
    };
    assert!(matches!(
        check(tmp.path().join("missing")),
        Error::Io { .. }
    ));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(check(empty.clone()), Error::BadInput { .. }));
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    assert!(matches!(
        check(tmp.path().join("file")),
        Error::BadInput { .. }
    ));
    // Output into a missing directory.
    std::fs::write(empty.join("x"), b"x").unwrap();
    let err = pack_dir(
        &empty,
        Path::new("/nonexistent-dir-for-test/o.dpk"),
        &PackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    // Bad options.
    let o = PackOptions {
        chunk_size: 10,
        ..PackOptions::default()
    };
    assert!(matches!(
        pack_dir(&empty, &out, &o).unwrap_err(),
        Error::BadOptions(_)
    ));
    assert!(!out.exists());
    // Unsafe or duplicate names through the in-memory API.
    let mut buf = std::io::Cursor::new(Vec::new());
    for names in [vec!["../x"], vec!["a", "a"], vec![""], vec!["a//b"]] {
        let inputs: Vec<_> = names
            .iter()
            .map(|n| InputFile {
                name: n,
                data: b"x",
            })
            .collect();
        assert!(matches!(
            pack_files(&inputs, &mut buf, "mem".as_ref(), &PackOptions::default()),
            Err(Error::BadInput { .. })
        ));
    }
}

#[test]
fn reader_errors_name_the_file() {
    let (c, _) = container();
    let reader = PackedReader::from_bytes(c, "some/model.dpk").unwrap();
    let err = reader.read_file("nope.json").unwrap_err();
    assert!(matches!(err, Error::NoSuchFile { .. }));
    assert!(err.to_string().contains("some/model.dpk") && err.to_string().contains("nope.json"));
    let mut small = vec![0u8; 3];
    assert!(reader.read_file_into("a.bin", &mut small).is_err());
    assert!(matches!(
        PackedReader::open(Path::new("/nonexistent.dpk")),
        Err(Error::Io { .. })
    ));
}

/// Issue 11, row 4: packing into a file inside the input directory used to
/// leave that file out of the pack and then replace it with the pack.
#[test]
fn pack_refuses_an_output_inside_its_input_and_an_existing_output() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    std::fs::write(x.join("model.safetensors"), b"weights").unwrap();
    std::fs::write(x.join("config.json"), b"{}").unwrap();
    for out in [x.join("model.safetensors"), x.join("new.dpk")] {
        let err = pack_dir(&x, &out, &PackOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Output { .. }), "{err}");
        assert!(
            err.to_string().contains("inside the input directory"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(x.join("model.safetensors")).unwrap(),
        b"weights"
    );
    assert_eq!(list(&x), vec!["config.json", "model.safetensors"]);
    // An existing output is replaced only when asked.
    let out = tmp.path().join("x.dpk");
    std::fs::write(&out, b"old").unwrap();
    let err = pack_dir(&x, &out, &PackOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Output { .. }), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let o = PackOptions {
        overwrite: true,
        ..PackOptions::default()
    };
    pack_dir(&x, &out, &o).unwrap();
    assert_eq!(PackedReader::open(&out).unwrap().files().len(), 2);
}

/// Issue 11, row 5: unpack into a non-empty directory silently overwrote it.
#[test]
fn unpack_refuses_a_non_empty_directory_and_never_replaces_the_container() {
    let (c, files) = container();
    let tmp = tempfile::tempdir().unwrap();
    let dpk = tmp.path().join("a.bin");
    std::fs::write(&dpk, &c).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("a.bin"), b"mine").unwrap();
    let err = unpack(&dpk, &out, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Output { .. }), "{err}");
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), b"mine");
    let o = UnpackOptions {
        overwrite: true,
        ..UnpackOptions::default()
    };
    unpack(&dpk, &out, &o).unwrap();
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), files[0].1);
    // The container holds a file named like itself: unpacking next to it
    // would replace it, even when overwriting is allowed.
    let err = unpack(&dpk, tmp.path(), &o).unwrap_err();
    assert!(matches!(err, Error::Output { .. }), "{err}");
    assert_eq!(std::fs::read(&dpk).unwrap(), c);
}

/// Issue 11, row 16: packed and unpacked files got mode 0600.
#[cfg(unix)]
#[test]
fn packed_and_unpacked_files_get_the_default_mode() {
    use std::os::unix::fs::PermissionsExt;
    // The mode File::create gives under this process's umask.
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    let want = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    assert_ne!(want, 0o600, "the test needs a umask that is not 077");
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    std::fs::write(x.join("f"), b"data").unwrap();
    let dpk = tmp.path().join("x.dpk");
    pack_dir(&x, &dpk, &PackOptions::default()).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dpk), want);
    let out = tmp.path().join("out");
    unpack(&dpk, &out, &UnpackOptions::default()).unwrap();
    assert_eq!(mode(&out.join("f")), want);
}

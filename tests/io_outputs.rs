//! Output formats: 8-bit quantisation (against torch + diffusers' `numpy_to_pil`), PNG files,
//! score tables, contact sheets, and the member-folder reader.

use crate::common;

use std::path::Path;

use common::npy;
use uqengine::io::contact_sheet::{
    contact_sheet, contact_sheet_with_header, thumb_size, write_contact_sheet, BACKGROUND, INK,
};
use uqengine::io::images_out::{to_u8, write_png};
use uqengine::io::members::{load_member_image, member_image_path, scan_members};
use uqengine::io::scores::{
    read_csv, read_json, rows_from_scores, write_csv, write_json, ScoreRow, CSV_HEADER,
};
use uqengine::uncertainty::order_ascending;

// ---------------------------------------------------------------------------------------------
// to_u8

/// The formula written out: f32 `(x / 2 + 0.5).clamp(0, 1) * 255`, ties to even like NumPy.
fn formula(x: f32) -> u8 {
    let y = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    let f = y.floor();
    let r = if y - f > 0.5 || (y - f == 0.5 && f % 2.0 == 1.0) {
        f + 1.0
    } else {
        f
    };
    r as u8
}

#[test]
fn to_u8_matches_diffusers_numpy_to_pil() {
    let x = npy("entropy/to_u8_inputs.npy").to_f32();
    let want: Vec<u8> = npy("entropy/to_u8_expected.npy")
        .data
        .iter()
        .map(|&v| v as u8)
        .collect();
    let got = to_u8(&x);
    let bad: Vec<_> = (0..x.len())
        .filter(|&i| got[i] != want[i])
        .map(|i| (x[i], got[i], want[i]))
        .collect();
    assert!(bad.is_empty(), "(x, got, want): {bad:?}");
}

#[test]
fn to_u8_edge_values_follow_the_formula() {
    let cases = [
        -1.0f32,
        1.0,
        0.0,
        -1.5,
        2.0,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.999,
        -0.999,
    ];
    let got = to_u8(&cases);
    for (x, g) in cases.iter().zip(&got) {
        assert_eq!(*g, formula(*x), "x = {x}");
    }
    assert_eq!(&got[..5], &[0, 255, 128, 0, 255]); // 0 -> 127.5 -> 128 (even)
    assert_eq!(to_u8(&[f32::NAN]), vec![0]);
}

/// Inputs whose scaled value is exactly k + 0.5 (listed by the fixture script): both directions
/// of round-half-to-even occur and each matches the formula.
#[test]
fn to_u8_rounds_exact_halves_to_even() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("entropy/meta.json")).unwrap(),
    )
    .unwrap();
    let halves: Vec<f32> = meta["to_u8"]["exact_half_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (mut down, mut up) = (0, 0);
    for &x in &halves {
        let y = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
        assert_eq!(y.fract(), 0.5, "x = {x}");
        let got = to_u8(&[x])[0];
        assert_eq!(got, formula(x), "x = {x}, y = {y}");
        assert_eq!(got % 2, 0, "x = {x}, y = {y}");
        if (got as f32) < y {
            down += 1
        } else {
            up += 1
        }
    }
    assert!(down > 0 && up > 0, "down {down}, up {up}");
}

// ---------------------------------------------------------------------------------------------
// PNG

#[test]
fn png_round_trips_rgb_and_gray_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (h, w) = (5, 7);
    for c in [1usize, 3] {
        let px: Vec<u8> = (0..h * w * c).map(|i| (i * 37 % 256) as u8).collect();
        let path = tmp.path().join(format!("img{c}.png"));
        write_png(&path, &px, h, w, c).unwrap();
        let (back, bh, bw, bc) = common::read_image(&path);
        assert_eq!((bh, bw, bc), (h, w, c));
        assert_eq!(back, px);
    }
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(write_png(&tmp.path().join("x.png"), &[0; 8], 2, 2, 2).is_err());
    assert!(write_png(&tmp.path().join("y.png"), &[0; 8], 2, 2, 3).is_err());
}

// ---------------------------------------------------------------------------------------------
// Score tables

fn sample_rows() -> Vec<ScoreRow> {
    let scores = [-1042.37123456789, 1e-300, 0.1 + 0.2, 7.0, -0.0, 12.5];
    let classes = [3usize, 0, 999, 1, 1, 42];
    rows_from_scores(&[10, 11, 12, 13, 14, 15], u64::MAX, Some(&classes), &scores).unwrap()
}

#[test]
fn csv_round_trips_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scores.csv");
    let mut rows = sample_rows();
    write_csv(&path, &rows).unwrap();
    assert_eq!(read_csv(&path).unwrap(), rows);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next().unwrap(), CSV_HEADER);
    assert_eq!(
        text.lines().nth(1).unwrap(),
        "10,18446744073709551615,3,-1042.37123456789,0,"
    );

    for (i, r) in rows.iter_mut().enumerate() {
        r.class = None;
        r.kept = Some(i % 2 == 0);
    }
    write_csv(&path, &rows).unwrap();
    assert_eq!(read_csv(&path).unwrap(), rows);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().nth(1).unwrap(),
        "10,18446744073709551615,,-1042.37123456789,0,1"
    );
    assert_eq!(
        text.lines().nth(4).unwrap(),
        "13,18446744073709551615,,7,4,0"
    );
}

#[test]
fn csv_without_the_kept_column_still_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("old.csv");
    std::fs::write(&path, "index,seed,class,uncertainty,rank\n3,7,2,-1.5,0\n").unwrap();
    let rows = read_csv(&path).unwrap();
    assert_eq!(
        rows,
        vec![ScoreRow {
            index: 3,
            seed: 7,
            class: Some(2),
            uncertainty: -1.5,
            rank: 0,
            kept: None
        }]
    );
    std::fs::write(&path, format!("{CSV_HEADER}\n3,7,2,-1.5,0,yes\n")).unwrap();
    let e = read_csv(&path).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("`kept` = `yes`"), "{e}");
}

#[test]
fn malformed_csv_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.csv");
    std::fs::write(&path, format!("{CSV_HEADER}\n0,1,,2.5,0,\n1,1,,abc,1,\n")).unwrap();
    let e = read_csv(&path).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv") && e.contains("line 3") && e.contains("abc"),
        "{e}"
    );
    std::fs::write(&path, "index,seed\n").unwrap();
    assert!(read_csv(&path).unwrap_err().to_string().contains("header"));
}

#[test]
fn json_round_trips_rows_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scores.json");
    let mut rows = sample_rows();
    rows[1].class = None;
    let meta = serde_json::json!({"estimator": "gaussian_entropy", "sigma2": 1e-3, "members": 6});
    write_json(&path, &rows, meta.clone()).unwrap();
    let (back, back_meta) = read_json(&path).unwrap();
    assert_eq!(back, rows);
    assert_eq!(back_meta, meta);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(doc["rows"][1]["class"].is_null());
    assert_eq!(doc["rows"][0]["seed"].as_u64(), Some(u64::MAX));

    // A sample marked invalid (NaN) is `null` and reads back as NaN; infinity is refused.
    rows[0].uncertainty = f64::NAN;
    write_json(&path, &rows, serde_json::Value::Null).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(doc["rows"][0]["uncertainty"].is_null());
    let (back, _) = read_json(&path).unwrap();
    assert!(back[0].uncertainty.is_nan() && back[1..] == rows[1..]);
    rows[0].uncertainty = f64::INFINITY;
    let e = write_json(&path, &rows, serde_json::Value::Null).unwrap_err();
    assert!(e.to_string().contains("cannot represent"), "{e}");
}

#[test]
fn keep_list_holds_the_n_most_certain_in_rank_order() {
    use uqengine::keep::keep_list;
    let rows = sample_rows();
    // Scores: 10 -> -1042.37, 11 -> 1e-300, 12 -> 0.3, 13 -> 7, 14 -> -0.0, 15 -> 12.5.
    assert_eq!(
        rows.iter().map(|r| r.rank).collect::<Vec<_>>(),
        vec![0, 2, 3, 4, 1, 5]
    );
    assert_eq!(keep_list(&rows, 3), vec![10, 14, 11]);
    assert_eq!(keep_list(&rows, 0), Vec::<usize>::new());
    assert_eq!(keep_list(&rows, 100), vec![10, 14, 11, 12, 13, 15]);
    let mut shuffled = rows.clone();
    shuffled.reverse();
    assert_eq!(keep_list(&shuffled, 3), vec![10, 14, 11]);
}

// ---------------------------------------------------------------------------------------------
// Contact sheets

/// A `h x w x c` image whose every pixel encodes (image id, y, x).
fn pattern(id: usize, h: usize, w: usize, c: usize) -> (Vec<u8>, usize, usize, usize) {
    let mut px = vec![0u8; h * w * c];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                px[(y * w + x) * c + ch] = (id * 40 + y * 3 + x * 5 + ch * 70) as u8;
            }
        }
    }
    (px, h, w, c)
}

fn rgb_at(sheet: &[u8], width: usize, y: usize, x: usize) -> [u8; 3] {
    let o = (y * width + x) * 3;
    [sheet[o], sheet[o + 1], sheet[o + 2]]
}

#[test]
fn thumbnails_land_in_the_given_order_nearest_upscaled() {
    let images: Vec<_> = (0..5).map(|i| pattern(i, 32, 32, 3)).collect();
    let scores = [3.5, -1.25, 10.0, 0.0, -7.75];
    let order = order_ascending(&scores);
    assert_eq!(order, vec![4, 1, 3, 0, 2]);
    let sheet = contact_sheet(&images, &scores, &order, 3, 64).unwrap();
    let l = sheet.layout;
    assert_eq!((l.columns, l.rows), (3, 2));
    assert_eq!((sheet.width, sheet.height), (l.width(), l.height()));
    assert_eq!(sheet.pixels.len(), sheet.width * sheet.height * 3);
    assert_eq!(thumb_size(32, 32, 64), (64, 64));
    for (pos, &i) in order.iter().enumerate() {
        let (y0, x0, th, tw) = l.thumb_rect(pos, 32, 32);
        assert_eq!((th, tw), (64, 64));
        let (src, ..) = &images[i];
        for y in 0..th {
            for x in 0..tw {
                let s = ((y / 2) * 32 + x / 2) * 3;
                assert_eq!(
                    rgb_at(&sheet.pixels, sheet.width, y0 + y, x0 + x),
                    [src[s], src[s + 1], src[s + 2]],
                    "cell {pos} (image {i}) at ({y}, {x})"
                );
            }
        }
        // The label strip under the thumbnail has ink; the gap left of the cell is background.
        let (cy, cx) = l.cell_origin(pos);
        let ink = (cy + 64..cy + 64 + l.label_h)
            .flat_map(|y| (cx..cx + 64).map(move |x| (y, x)))
            .filter(|&(y, x)| rgb_at(&sheet.pixels, sheet.width, y, x) == INK)
            .count();
        assert!(ink > 10, "cell {pos}: {ink} ink pixels");
        assert_eq!(rgb_at(&sheet.pixels, sheet.width, cy, cx - 1), BACKGROUND);
    }
    // The unused sixth cell stays background.
    let (cy, cx) = l.cell_origin(5);
    assert!((cy..cy + 64)
        .all(|y| (cx..cx + 64).all(|x| rgb_at(&sheet.pixels, sheet.width, y, x) == BACKGROUND)));
}

#[test]
fn gray_and_large_images_fit_their_box_and_a_header_adds_a_strip() {
    let images = vec![pattern(0, 16, 8, 1), pattern(1, 200, 100, 3)];
    let scores = [1.0, 2.0];
    let plain = contact_sheet(&images, &scores, &[0, 1], 4, 48).unwrap();
    assert_eq!(plain.layout.columns, 2);
    // 16x8 gray grows by 3 (48 / 16) and is centred; each value is replicated to R = G = B.
    let (y0, x0, th, tw) = plain.layout.thumb_rect(0, 16, 8);
    assert_eq!((th, tw), (48, 24));
    let (y, x) = plain.layout.cell_origin(0);
    assert_eq!((y0, x0), (y, x + 12));
    for yy in 0..th {
        for xx in 0..tw {
            let v = images[0].0[(yy / 3) * 8 + xx / 3];
            assert_eq!(
                rgb_at(&plain.pixels, plain.width, y0 + yy, x0 + xx),
                [v, v, v]
            );
        }
    }
    // 200x100 shrinks to 48x24 (box filter): a flat image stays flat.
    assert_eq!(thumb_size(200, 100, 48), (48, 24));
    let flat = vec![(vec![90u8; 200 * 100 * 3], 200, 100, 3)];
    let s = contact_sheet(&flat, &[0.0], &[0], 1, 48).unwrap();
    let (y0, x0, th, tw) = s.layout.thumb_rect(0, 200, 100);
    assert!((0..th)
        .all(|y| (0..tw).all(|x| rgb_at(&s.pixels, s.width, y0 + y, x0 + x) == [90, 90, 90])));

    let with_header = contact_sheet_with_header(
        &images,
        &scores,
        &[0, 1],
        4,
        48,
        Some("uncertainty ascending"),
    )
    .unwrap();
    assert!(with_header.layout.header_h > 0);
    assert_eq!(
        with_header.height,
        plain.height + with_header.layout.header_h
    );
    assert_eq!(with_header.width, plain.width);
}

#[test]
fn contact_sheet_rejects_bad_input_and_writes_png() {
    let images = vec![pattern(0, 8, 8, 3)];
    assert!(contact_sheet(&images, &[1.0, 2.0], &[0], 1, 32).is_err());
    assert!(contact_sheet(&images, &[1.0], &[1], 1, 32).is_err());
    assert!(contact_sheet(&images, &[1.0], &[], 1, 32).is_err());
    assert!(contact_sheet(&images, &[1.0], &[0], 0, 32).is_err());
    assert!(contact_sheet(&[(vec![0; 10], 2, 2, 3)], &[1.0], &[0], 1, 32).is_err());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sheet.png");
    let sheet = write_contact_sheet(&path, &images, &[1.5], &[0], 1, 32, Some("top")).unwrap();
    let (back, h, w, c) = common::read_image(&path);
    assert_eq!((w, h, c), (sheet.width, sheet.height, 3));
    assert_eq!(back, sheet.pixels);
}

// ---------------------------------------------------------------------------------------------
// Member folders

/// `dir/<m>/imgs/<i>.png` for the given members and indices; image content encodes (m, i).
fn make_members(dir: &Path, members: &[usize], indices: &[usize]) {
    for &m in members {
        std::fs::create_dir_all(dir.join(m.to_string()).join("imgs")).unwrap();
        for &i in indices {
            let (px, h, w, c) = pattern(m * 10 + i, 4, 6, 3);
            write_png(&member_image_path(dir, m, i), &px, h, w, c).unwrap();
        }
    }
}

#[test]
fn members_are_scanned_and_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    make_members(tmp.path(), &[0, 1, 2], &[0, 1, 2, 7]);
    // Files next to the member folders (as the reference code leaves them) are ignored.
    std::fs::write(tmp.path().join("entropy_clip.npy"), b"x").unwrap();
    std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
    std::fs::write(tmp.path().join("0").join("imgs").join("notes.txt"), b"x").unwrap();
    let set = scan_members(tmp.path()).unwrap();
    assert_eq!(set.members, 3);
    assert_eq!(set.indices, vec![0, 1, 2, 7]);
    assert!(set.image_path(2, 7).ends_with("2/imgs/00007.png"));
    let (px, h, w, c) = load_member_image(&set, 2, 7).unwrap();
    assert_eq!((h, w, c), (4, 6, 3));
    assert_eq!(px, pattern(27, 4, 6, 3).0);
    assert!(load_member_image(&set, 3, 7).is_err());
    assert!(load_member_image(&set, 0, 5).is_err());
}

#[test]
fn member_errors_name_the_missing_folder_or_file() {
    let err = |f: &dyn Fn(&Path)| {
        let tmp = tempfile::tempdir().unwrap();
        f(tmp.path());
        scan_members(tmp.path()).unwrap_err().to_string()
    };
    let e = err(&|d| make_members(d, &[0], &[0, 1]));
    assert!(e.contains("at least 1 posterior draw"), "{e}");
    let e = err(&|_| {});
    assert!(e.contains("found none"), "{e}");
    let e = err(&|d| make_members(d, &[0, 1, 3], &[0, 1]));
    assert!(
        e.contains(&format!("{}2:", std::path::MAIN_SEPARATOR))
            && e.contains("member folder missing"),
        "{e}"
    );
    let e = err(&|d| {
        make_members(d, &[0, 1], &[0, 1]);
        std::fs::create_dir_all(d.join("2")).unwrap();
    });
    assert!(
        e.contains("2/imgs") && e.contains("no `imgs` folder"),
        "{e}"
    );
    let e = err(&|d| {
        make_members(d, &[0, 1, 2], &[0, 1, 2, 3]);
        std::fs::remove_file(member_image_path(d, 2, 3)).unwrap();
    });
    assert!(
        e.contains("2/imgs/00003.png") && e.contains("member 2 does not"),
        "{e}"
    );
    let e = err(&|d| {
        make_members(d, &[0, 1], &[0, 1]);
        make_members(d, &[1], &[5]);
    });
    assert!(
        e.contains("0/imgs/00005.png") && e.contains("member 0 does not"),
        "{e}"
    );
    let e = err(&|d| make_members(d, &[0, 1], &[]));
    assert!(e.contains("no NNNNN.png images in member 0"), "{e}");
    let missing = tempfile::tempdir().unwrap().path().join("nope");
    assert!(scan_members(&missing)
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

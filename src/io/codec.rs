//! PNG and JPEG to 8-bit pixels, and 8-bit pixels to PNG, on the `png` and `zune-jpeg` crates.
//! Gray stays one channel; gray with alpha, palette, RGB and RGBA become RGB (alpha dropped, not
//! composited); 16-bit samples become `(v + 128) / 257`; a JPEG in CMYK or YCCK is converted to
//! RGB by the decoder.

use std::io::Cursor;

/// An 8-bit image, `[h, w, c]`, `c` = 1 (gray) or 3 (RGB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub pixels: Vec<u8>,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

/// The most a decoded image may take in memory (512 MiB).
pub const MAX_DECODED_BYTES: usize = 512 << 20;

/// Decode PNG or JPEG bytes (told apart by their signature). Any input gives an image or an
/// error message, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        decode_jpeg(bytes)
    } else {
        Err("not a PNG or JPEG file (unknown signature)".into())
    }
}

fn decode_png(bytes: &[u8]) -> Result<Decoded, String> {
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: MAX_DECODED_BYTES,
        },
    );
    // Palette to RGB(A), gray below 8 bits scaled to 8 bits, tRNS to an alpha channel.
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(|e| format!("PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_DECODED_BYTES)
        .ok_or_else(|| {
            let i = reader.info();
            format!(
                "PNG: a {}x{} image is too large to decode",
                i.width, i.height
            )
        })?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG: {e}"))?;
    buf.truncate(frame.buffer_size());
    let (w, h) = (frame.width as usize, frame.height as usize);
    let samples: Vec<u8> = match frame.bit_depth {
        png::BitDepth::Eight => buf,
        png::BitDepth::Sixteen => buf
            .chunks_exact(2)
            .map(|b| ((u32::from(u16::from_be_bytes([b[0], b[1]])) + 128) / 257) as u8)
            .collect(),
        d => return Err(format!("PNG: unexpected {d:?}-bit samples after expansion")),
    };
    let per_px = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("PNG: palette not expanded".into()),
    };
    if samples.len() < w * h * per_px {
        return Err(format!(
            "PNG: {} samples for a {w}x{h} image",
            samples.len()
        ));
    }
    let samples = &samples[..w * h * per_px];
    Ok(match per_px {
        1 => Decoded {
            pixels: samples.to_vec(),
            h,
            w,
            c: 1,
        },
        2 => Decoded {
            pixels: samples.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
            h,
            w,
            c: 3,
        },
        3 => Decoded {
            pixels: samples.to_vec(),
            h,
            w,
            c: 3,
        },
        _ => Decoded {
            pixels: samples
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            h,
            w,
            c: 3,
        },
    })
}

fn decode_jpeg(bytes: &[u8]) -> Result<Decoded, String> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    dec.decode_headers().map_err(|e| format!("JPEG: {e:?}"))?;
    let info = dec.info().ok_or("JPEG: no image header")?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    let gray = matches!(dec.input_colorspace(), Some(ColorSpace::Luma));
    let c = if gray { 1 } else { 3 };
    if w * h * c > MAX_DECODED_BYTES {
        return Err(format!("JPEG: a {w}x{h} image is too large to decode"));
    }
    let out = if gray {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    dec.set_options(dec.options().jpeg_set_out_colorspace(out));
    let pixels = dec.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    if pixels.len() != w * h * c {
        return Err(format!(
            "JPEG: {} bytes decoded for a {w}x{h}x{c} image",
            pixels.len()
        ));
    }
    Ok(Decoded { pixels, h, w, c })
}

/// Encode an 8-bit `[h, w, c]` image (c = 1 gray or 3 RGB, sizes checked by the caller) as PNG.
pub fn encode_png(hwc: &[u8], h: u32, w: u32, c: usize) -> Result<Vec<u8>, String> {
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => return Err(format!("PNG output supports 1 or 3 channels, got {c}")),
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(hwc).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG from raw scanlines, written by hand (zlib stored blocks, CRCs computed here), so
    /// the decoder is checked against bytes it did not produce.
    fn handmade_png(
        w: u32,
        h: u32,
        bit_depth: u8,
        color: u8,
        rows: &[Vec<u8>],
        extra: &[(&[u8; 4], Vec<u8>)],
    ) -> Vec<u8> {
        fn crc(data: &[u8]) -> u32 {
            let mut c = 0xffff_ffffu32;
            for &b in data {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend(crc(&body).to_be_bytes());
        }
        let mut raw = Vec::new();
        for r in rows {
            raw.push(0u8);
            raw.extend_from_slice(r);
        }
        // zlib: header, one stored block, Adler-32.
        let mut z = vec![0x78, 0x01, 0x01];
        z.extend((raw.len() as u16).to_le_bytes());
        z.extend((!(raw.len() as u16)).to_le_bytes());
        z.extend_from_slice(&raw);
        let (mut a, mut b) = (1u32, 0u32);
        for &v in &raw {
            a = (a + u32::from(v)) % 65521;
            b = (b + a) % 65521;
        }
        z.extend(((b << 16) | a).to_be_bytes());
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([bit_depth, color, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        for (kind, data) in extra {
            chunk(&mut out, kind, data);
        }
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn png_color_types_and_depths_become_gray_or_rgb() {
        // 8-bit gray: one channel, as stored.
        let d = decode(&handmade_png(2, 1, 8, 0, &[vec![7, 200]], &[])).unwrap();
        assert_eq!(
            d,
            Decoded {
                pixels: vec![7, 200],
                h: 1,
                w: 2,
                c: 1
            }
        );
        // 16-bit gray: (v + 128) / 257 (0x8080 = 32896 -> 128, 0x00ff = 255 -> 1).
        let d = decode(&handmade_png(
            2,
            1,
            16,
            0,
            &[vec![0x80, 0x80, 0x00, 0xff]],
            &[],
        ))
        .unwrap();
        assert_eq!(d.pixels, vec![128, 1]);
        // 1-bit gray: scaled to 0 / 255.
        let d = decode(&handmade_png(3, 1, 1, 0, &[vec![0b1010_0000]], &[])).unwrap();
        assert_eq!(d.pixels, vec![255, 0, 255]);
        // Gray + alpha: RGB, alpha dropped.
        let d = decode(&handmade_png(1, 1, 8, 4, &[vec![9, 0]], &[])).unwrap();
        assert_eq!((d.pixels.clone(), d.c), (vec![9, 9, 9], 3));
        // RGBA: RGB, alpha dropped (not composited).
        let d = decode(&handmade_png(1, 1, 8, 6, &[vec![1, 2, 3, 0]], &[])).unwrap();
        assert_eq!((d.pixels.clone(), d.c), (vec![1, 2, 3], 3));
        // Palette: expanded to RGB.
        let plte = vec![10, 20, 30, 40, 50, 60];
        let d = decode(&handmade_png(2, 1, 8, 3, &[vec![1, 0]], &[(b"PLTE", plte)])).unwrap();
        assert_eq!((d.pixels.clone(), d.c), (vec![40, 50, 60, 10, 20, 30], 3));
    }

    #[test]
    fn written_png_reads_back_and_bad_bytes_are_errors() {
        for c in [1usize, 3] {
            let px: Vec<u8> = (0..4 * 5 * c).map(|i| (i * 53 % 256) as u8).collect();
            let bytes = encode_png(&px, 4, 5, c).unwrap();
            assert_eq!(
                decode(&bytes).unwrap(),
                Decoded {
                    pixels: px,
                    h: 4,
                    w: 5,
                    c
                }
            );
        }
        assert!(encode_png(&[0; 8], 2, 2, 2).is_err());
        assert!(decode(b"GIF89a").unwrap_err().contains("signature"));
        let mut cut = encode_png(&[1; 12], 2, 2, 3).unwrap();
        cut.truncate(cut.len() - 20);
        assert!(decode(&cut).is_err());
        assert!(decode(&[0xff, 0xd8, 0xff, 0xe0, 0, 2]).is_err());
    }
}

//! Contact sheets: a grid of thumbnails in a given order (most certain first), each with its score
//! printed underneath, on a light background, optionally under a header line.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::font::{self, GLYPH_H};
use crate::io::images_out::write_png;

/// Background colour of the sheet.
pub const BACKGROUND: [u8; 3] = [245, 245, 245];
/// Colour of labels and the header.
pub const INK: [u8; 3] = [20, 20, 20];
/// Gap between cells and around the border, in pixels.
pub const PAD: usize = 6;

/// Geometry of a sheet; every position is in pixels from the top-left corner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SheetLayout {
    /// Cells per row.
    pub columns: usize,
    /// Rows of cells.
    pub rows: usize,
    /// Side of the square thumbnail box.
    pub thumb: usize,
    /// Scale of the 5x7 font (1 or 2).
    pub font_scale: usize,
    /// Height of the label strip under each thumbnail box.
    pub label_h: usize,
    /// Height of the header strip (0 without a header).
    pub header_h: usize,
}

impl SheetLayout {
    /// Sheet width.
    pub fn width(&self) -> usize {
        PAD + self.columns * (self.thumb + PAD)
    }
    /// Sheet height.
    pub fn height(&self) -> usize {
        PAD + self.header_h + self.rows * (self.thumb + self.label_h + PAD)
    }
    /// Top-left corner `(y, x)` of the thumbnail box of the `pos`-th cell (row-major).
    pub fn cell_origin(&self, pos: usize) -> (usize, usize) {
        let (r, c) = (pos / self.columns, pos % self.columns);
        (
            PAD + self.header_h + r * (self.thumb + self.label_h + PAD),
            PAD + c * (self.thumb + PAD),
        )
    }
    /// Where an `h x w` image lands in cell `pos`: `(y, x, th, tw)`, centred in the box.
    pub fn thumb_rect(&self, pos: usize, h: usize, w: usize) -> (usize, usize, usize, usize) {
        let (th, tw) = thumb_size(h, w, self.thumb);
        let (y, x) = self.cell_origin(pos);
        (y + (self.thumb - th) / 2, x + (self.thumb - tw) / 2, th, tw)
    }
}

/// A rendered sheet: RGB pixels `[height, width, 3]`.
#[derive(Clone, Debug)]
pub struct ContactSheet {
    pub pixels: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub layout: SheetLayout,
}

/// Size of an `h x w` image inside a `thumb` box: small images grow by the largest integer factor
/// that fits (nearest neighbour, so 32 px becomes 64 px in a 64 px box), large ones shrink to fit
/// (box filter), keeping the aspect ratio.
pub fn thumb_size(h: usize, w: usize, thumb: usize) -> (usize, usize) {
    let m = h.max(w).max(1);
    if m <= thumb {
        let s = thumb / m;
        (h * s, w * s)
    } else {
        let f = thumb as f64 / m as f64;
        (
            ((h as f64 * f).round() as usize).clamp(1, thumb),
            ((w as f64 * f).round() as usize).clamp(1, thumb),
        )
    }
}

/// Resample an 8-bit `[h, w, c]` image (c = 1 or 3) to RGB `[th, tw, 3]`: nearest neighbour when
/// growing, the mean of the covered source block when shrinking.
fn resample_rgb(img: &[u8], h: usize, w: usize, c: usize, th: usize, tw: usize) -> Vec<u8> {
    let mut out = vec![0u8; th * tw * 3];
    let px =
        |y: usize, x: usize, ch: usize| img[(y * w + x) * c + if c == 1 { 0 } else { ch }] as u32;
    for oy in 0..th {
        let (y0, y1) = (
            oy * h / th,
            ((oy + 1) * h).div_ceil(th).max(oy * h / th + 1),
        );
        for ox in 0..tw {
            let (x0, x1) = (
                ox * w / tw,
                ((ox + 1) * w).div_ceil(tw).max(ox * w / tw + 1),
            );
            for ch in 0..3 {
                let value = if th >= h && tw >= w {
                    px(y0, x0, ch)
                } else {
                    let mut sum = 0u32;
                    for y in y0..y1.min(h) {
                        for x in x0..x1.min(w) {
                            sum += px(y, x, ch);
                        }
                    }
                    let n = ((y1.min(h) - y0) * (x1.min(w) - x0)) as u32;
                    (sum + n / 2) / n
                };
                out[(oy * tw + ox) * 3 + ch] = value as u8;
            }
        }
    }
    out
}

/// The label of a score that fits in `max_w` pixels at `scale`: two decimals if they fit, then
/// fewer, then scientific notation.
pub fn score_label(score: f64, max_w: usize, scale: usize) -> String {
    let candidates = [
        format!("{score:.2}"),
        format!("{score:.1}"),
        format!("{score:.0}"),
        format!("{score:.2e}"),
        format!("{score:.0e}"),
    ];
    let fallback = candidates[4].clone();
    candidates
        .into_iter()
        .find(|s| font::text_width(s, scale) <= max_w)
        .unwrap_or(fallback)
}

/// Render a contact sheet without a header; see [`contact_sheet_with_header`].
pub fn contact_sheet(
    images: &[(Vec<u8>, usize, usize, usize)],
    scores: &[f64],
    order: &[usize],
    columns: usize,
    thumb: usize,
) -> Result<ContactSheet> {
    contact_sheet_with_header(images, scores, order, columns, thumb, None)
}

/// Render a contact sheet.
///
/// `images`: 8-bit `(pixels [h, w, c], h, w, c)` with c = 1 or 3; `scores[i]` belongs to
/// `images[i]`; `order` lists the images to show, in order (e.g. ascending uncertainty, most
/// certain first; a prefix shows only the best). Cells run row-major over `columns` columns
/// (fewer if there are fewer images); each thumbnail sits in a `thumb x thumb` box (see
/// [`thumb_size`]) with its score printed underneath.
pub fn contact_sheet_with_header(
    images: &[(Vec<u8>, usize, usize, usize)],
    scores: &[f64],
    order: &[usize],
    columns: usize,
    thumb: usize,
    header: Option<&str>,
) -> Result<ContactSheet> {
    if scores.len() != images.len() {
        return Err(Error::arg(format!(
            "contact sheet: {} images but {} scores",
            images.len(),
            scores.len()
        )));
    }
    if order.is_empty() {
        return Err(Error::arg("contact sheet: no images to show"));
    }
    if columns == 0 || thumb < 8 {
        return Err(Error::arg(format!(
            "contact sheet: need columns >= 1 and thumb >= 8 px, got {columns} and {thumb}"
        )));
    }
    if let Some(&bad) = order.iter().find(|&&i| i >= images.len()) {
        return Err(Error::arg(format!(
            "contact sheet: order names image {bad}, only {} images given",
            images.len()
        )));
    }
    for (i, (px, h, w, c)) in images.iter().enumerate() {
        if !(*c == 1 || *c == 3) || *h == 0 || *w == 0 || px.len() != h * w * c {
            return Err(Error::arg(format!(
                "contact sheet: image {i} is {h}x{w}x{c} with {} bytes (need 1 or 3 channels, h*w*c bytes)",
                px.len()
            )));
        }
    }
    let font_scale = if thumb >= 128 { 2 } else { 1 };
    let columns = columns.min(order.len());
    let layout = SheetLayout {
        columns,
        rows: order.len().div_ceil(columns),
        thumb,
        font_scale,
        label_h: GLYPH_H * font_scale + 6,
        header_h: if header.is_some() {
            GLYPH_H * font_scale + PAD
        } else {
            0
        },
    };
    let (width, height) = (layout.width(), layout.height());
    let mut pixels = BACKGROUND.repeat(width * height);

    if let Some(text) = header {
        font::draw_text(&mut pixels, width, (PAD, PAD), text, font_scale, INK);
    }
    for (pos, &i) in order.iter().enumerate() {
        let (img, h, w, c) = &images[i];
        let (y, x, th, tw) = layout.thumb_rect(pos, *h, *w);
        let t = resample_rgb(img, *h, *w, *c, th, tw);
        for r in 0..th {
            let dst = ((y + r) * width + x) * 3;
            pixels[dst..dst + tw * 3].copy_from_slice(&t[r * tw * 3..(r + 1) * tw * 3]);
        }
        let label = score_label(scores[i], thumb, font_scale);
        let (cy, cx) = layout.cell_origin(pos);
        let lx = cx + thumb.saturating_sub(font::text_width(&label, font_scale)) / 2;
        font::draw_text(
            &mut pixels,
            width,
            (lx, cy + thumb + 3),
            &label,
            font_scale,
            INK,
        );
    }
    Ok(ContactSheet {
        pixels,
        width,
        height,
        layout,
    })
}

/// Render a contact sheet (see [`contact_sheet_with_header`]) and write it to `path` as PNG,
/// atomically.
pub fn write_contact_sheet(
    path: &Path,
    images: &[(Vec<u8>, usize, usize, usize)],
    scores: &[f64],
    order: &[usize],
    columns: usize,
    thumb: usize,
    header: Option<&str>,
) -> Result<ContactSheet> {
    let sheet = contact_sheet_with_header(images, scores, order, columns, thumb, header)?;
    write_png(path, &sheet.pixels, sheet.height, sheet.width, 3)?;
    Ok(sheet)
}

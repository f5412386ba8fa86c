//! Files: .npy arrays, images, score tables, contact sheets, and atomic writes.
pub mod codec;
pub mod contact_sheet;
pub mod font;
pub mod fs;
pub mod images_in;
pub mod images_out;
pub mod members;
pub mod npy;
pub mod scores;

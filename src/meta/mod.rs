//! The header and logs of one image: the superblock pair (F1, F2) and the region bitmaps,
//! read and written through a `Device`.

pub mod bitmaps;
pub mod image;

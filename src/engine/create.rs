//! Create: the checks before a primary header is written over an existing image, and the
//! writing itself. The command finds or makes the file, sizes it and locks it; what may be
//! overwritten is decided here (rule D0, device/probe.rs).

use crate::device::probe::{self, Found};
use crate::device::Device;
use crate::engine::uuid_str;
use crate::error::opt::*;
use crate::error::Error;
use crate::error::Result;
use crate::format::layout::Geometry;
use crate::format::Superblock;
use crate::meta::image::Image;
use crate::meta::image::ReadError;
use crate::units::now_unix;
use std::sync::Arc;

/// What `create` found on an existing image that it may go on with.
pub struct CreateChecks {
    /// The regular file is smaller than the geometry needs and may be grown (`force`).
    pub grow: bool,
    /// A signature that `force` overwrites (said in a note).
    pub overwrites: Option<Found>,
}

/// Checks an existing image before `format_primary`: a mirrorctl header, a signature, or
/// data inside the metadata area are refused without `force`, and so is a too-small image
/// (a block device always). Reads only.
pub fn check_existing(
    dev: Arc<dyn Device>,
    name: &str,
    g: &Geometry,
    force: bool,
    block: bool,
) -> Result<CreateChecks> {
    let capacity = dev.len();
    match Image::read(dev.clone()) {
        Err(ReadError::NotMirrorctl) => {}
        Ok(img) if !force => {
            return Err(Error::invalid(format!(
                "{name} already holds a mirrorctl header ({} of mirror {}); use {FORCE} to overwrite it",
                img.sb.role.as_str(),
                uuid_str(&img.sb.mirror_uuid)
            )))
        }
        Err(e) if !force => {
            return Err(Error::invalid(format!(
                "{name} already holds a mirrorctl header that cannot be read ({e}); use {FORCE} to overwrite it"
            )))
        }
        _ => {}
    }
    let grow = g.total_len() > capacity;
    if grow && (block || !force) {
        return Err(Error::invalid(format!(
            "{name} is too small: it has {capacity} bytes, but {} of data needs {} bytes with metadata{}",
            g.data_size,
            g.total_len(),
            if block {
                String::new()
            } else {
                format!("; use {FORCE} to grow the file")
            }
        )));
    }
    // D0: say what is there, and overwrite it only with {FORCE}.
    let found =
        probe::holds_data(&*dev).map_err(|e| Error::primary_io(format!("reading {name}"), &e))?;
    let overwrites = found.filter(|f| f.signature);
    if let Some(f) = &overwrites {
        if !force {
            return Err(Error::invalid(format!(
                "{name} holds {} (signature at byte {}); create would overwrite its first {} bytes with mirrorctl metadata. Nothing was written; use {FORCE} to overwrite it",
                f.what, f.offset, g.data_offset
            )));
        }
    }
    if !force {
        if let Some(off) = probe::first_nonzero(&*dev, 0..g.data_offset)
            .map_err(|e| Error::primary_io(format!("reading {name}"), &e))?
        {
            return Err(Error::invalid(format!(
                "{name} holds data at byte {off}, inside the {} bytes of metadata that create would overwrite; use {FORCE} to overwrite it",
                g.data_offset
            )));
        }
    }
    Ok(CreateChecks { grow, overwrites })
}

/// Writes a new mirror's primary header onto `dev` (the data area is left as it is).
pub fn format_primary(dev: Arc<dyn Device>, name: &str, g: Geometry) -> Result<Superblock> {
    Image::create_primary(dev, g, now_unix())
        .map(|img| img.sb)
        .map_err(|e| Error::primary_io(format!("writing the header of {name}"), &e))
}

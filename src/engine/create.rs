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

/// Writes a new mirror's primary header onto `dev` (the data area is left as it is), with
/// a written map (W7) where the geometry has room: see [`initially_written`].
pub fn format_primary(
    dev: Arc<dyn Device>,
    name: &str,
    g: Geometry,
    force: bool,
) -> Result<Superblock> {
    let extents = dev
        .data_extents(g.data_offset..g.total_len())
        .map_err(|e| Error::primary_io(format!("finding data extents of {name}"), &e))?;
    // An image of unknown extents (a block device) counts as holding data if D0's probe
    // finds anything on it (create keeps the data area).
    let found = extents.is_none()
        && probe::holds_data(&*dev)
            .map_err(|e| Error::primary_io(format!("reading {name}"), &e))?
            .is_some();
    let written = initially_written(&g, extents, force || found);
    Image::create_primary_written(dev, g, now_unix(), &written)
        .map(|img| img.sb)
        .map_err(|e| Error::primary_io(format!("writing the header of {name}"), &e))
}

/// The regions a new primary's written map starts with: where a file's data area holds
/// data (its holes are never written), else nothing, unless `held` (an image of unknown
/// extents on which D0's probe found something, or that `--force` overwrote), whose data
/// area then counts as written everywhere (create keeps it: its bytes may be wanted). On a
/// block device where the probe finds nothing, the old bytes are not the mirror's data, as
/// on a new disk: a host reads what the device held until it writes there, and legs may
/// differ in chunks no one wrote.
pub fn initially_written(
    g: &Geometry,
    extents: Option<Vec<std::ops::Range<u64>>>,
    held: bool,
) -> Vec<std::ops::Range<u64>> {
    match extents {
        Some(v) => v
            .into_iter()
            .map(|r| g.regions_for(r.start - g.data_offset, r.end - r.start))
            .collect(),
        None if held => crate::engine::plan::every(g.region_count),
        None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::KIB;

    #[test]
    fn a_new_primary_starts_written_where_its_file_holds_data_or_everywhere_on_a_device_holding_some(
    ) {
        let g = Geometry::for_data_size(1 << 20, 64 * KIB, 1).unwrap();
        let d = g.data_offset;
        assert_eq!(
            initially_written(
                &g,
                Some(vec![d + 100..d + 200, d + 128 * KIB..d + 200 * KIB]),
                false
            ),
            vec![0..1, 2..4]
        );
        assert_eq!(
            initially_written(&g, Some(vec![]), true),
            Vec::<std::ops::Range<u64>>::new()
        );
        assert_eq!(
            initially_written(&g, None, true),
            crate::engine::plan::every(16)
        );
        assert!(initially_written(&g, None, false).is_empty());
    }
}

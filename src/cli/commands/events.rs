//! `events`: the primary's event journal as text or JSON lines, once or followed, with a
//! program run per new event. A follower follows the mirror (its UUID), not a path: when a
//! promotion moves the primary it finds the new one and reads its journal, each event
//! delivered once; `--state-file` carries that position across restarts. Takes no lock and
//! writes nothing to the mirror.

use super::*;
use crate::device::open::Opener;
use crate::format::journal::{kind_name, Event, Journal};
use crate::format::Superblock;
use serde::Deserialize;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often `--follow` looks at the journal.
const POLL: Duration = Duration::from_millis(250);
/// How often `--follow` looks for the mirror's primary while the image it followed is no
/// longer it (and none was found yet).
const SEARCH: Duration = Duration::from_millis(500);
/// How often `--follow` checks whether a promotion replaced the primary it follows while
/// that image still calls itself the primary (it reads every leg's header).
const REPLACED_CHECK: Duration = Duration::from_secs(5);

/// One event as printed (JSON fields are stable, see README).
#[derive(Serialize, Clone, Debug)]
struct Shown {
    /// null for `replaced-primary` and `following`, which are found, not stored (rule P6).
    seq: Option<u64>,
    time: String,
    time_unix: u64,
    kind: String,
    slot: Option<u32>,
    /// The slot's location now (null when the event names no slot or the slot is free):
    /// the full location (an NBD URI with its query).
    leg: Option<String>,
    /// `leg` in its short form (`nbds://HOST:PORT/EXPORT (TLS)`), as the text shows it.
    leg_display: Option<String>,
    detail: String,
    mirror_uuid: String,
    /// The primary whose journal the event was read from (it changes with a promotion).
    primary: String,
}

impl Shown {
    fn of(e: &Event, sb: &Superblock, primary: &str) -> Shown {
        let leg = e
            .slot
            .and_then(|s| sb.legs.get(s as usize))
            .filter(|l| l.state() != LegState::Empty)
            .map(|l| l.location.clone());
        Shown {
            seq: Some(e.seq),
            time: crate::units::format_time(e.at),
            time_unix: e.at,
            kind: kind_name(e.kind),
            slot: e.slot,
            leg_display: leg.as_deref().map(nbd::display),
            leg,
            detail: e.detail.clone(),
            mirror_uuid: engine::uuid_str(&sb.mirror_uuid),
            primary: primary.to_string(),
        }
    }

    /// An event found by `events` itself, not stored in a journal (`seq` null).
    fn found(kind: &str, detail: String, mirror: &Uuid, primary: &str) -> Shown {
        let now = crate::units::now_unix();
        Shown {
            seq: None,
            time: crate::units::format_time(now),
            time_unix: now,
            kind: kind.into(),
            slot: None,
            leg: None,
            leg_display: None,
            detail,
            mirror_uuid: engine::uuid_str(mirror),
            primary: primary.to_string(),
        }
    }

    fn text(&self) -> String {
        let seq = self
            .seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let slot = match (self.slot, &self.leg_display) {
            (Some(s), Some(l)) => format!("  slot {s} ({l})"),
            (Some(s), None) => format!("  slot {s}"),
            _ => String::new(),
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        format!("{seq:>6}  {}  {}{slot}{detail}", self.time, self.kind)
    }

    fn print(&self, json: bool) -> Result<()> {
        let mut out = io::stdout().lock();
        let r = if json {
            serde_json::to_writer(&mut out, self)
                .map_err(io::Error::other)
                .and_then(|()| writeln!(out))
        } else {
            writeln!(out, "{}", self.text())
        };
        r.and_then(|()| out.flush()).map_err(Error::output)
    }
}

type Uuid = crate::format::superblock::Uuid;

/// The superblock at `path` as committed now (re-opened each time: the image may be
/// rewritten or replaced by other commands).
fn read(path: &Path) -> Result<Superblock> {
    let dev = FileDevice::open(path, false).map_err(|e| open_error("opening", path, e))?;
    let dev: Arc<dyn Device> = Arc::new(dev);
    engine::status::read_superblock(&dev, &display(path))
}

/// The superblock at a location (a path or an NBD URI) as committed now.
fn read_at(location: &str) -> Result<Superblock> {
    let dev = FileOpener { writable: false }
        .open(location)
        .map_err(|e| Error::invalid(format!("opening {}: {e}", nbd::display(location))))?;
    engine::status::read_superblock(&dev, &nbd::display(location))
}

/// Whether a promotion replaced the primary at `path`: the new primary's name.
fn replaced(path: &Path) -> Option<String> {
    let dev = FileDevice::open(path, false).ok()?;
    let s = engine::status::report(
        Arc::new(dev),
        &display(path),
        Arc::new(FileOpener { writable: false }),
        None,
    )
    .ok()?;
    s.replaced_by
}

fn journal_of<'a>(sb: &'a Superblock, path: &Path) -> Result<Option<&'a Journal>> {
    if sb.role != Role::Primary {
        let primary = if sb.primary_location.is_empty() {
            "its primary".to_string()
        } else {
            sb.primary_location.clone()
        };
        return Err(Error::invalid(format!(
            "{} is a {} image; the event journal is kept by the primary: give {primary}",
            display(path),
            sb.role.as_str()
        )));
    }
    Ok(sb.journal.as_ref())
}

/// Where the last delivered event is: its sequence number and, when known, the event
/// itself, which tells its journal from another one that reuses the numbers (an unplanned
/// promotion begins a new journal at 1; a planned one carries the old primary's over).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    seq: u64,
    event: Option<Event>,
}

impl Cursor {
    fn at(seq: u64, j: Option<&Journal>) -> Cursor {
        Cursor {
            seq,
            event: j.and_then(|j| j.events.iter().find(|e| e.seq == seq).cloned()),
        }
    }
}

/// Pure: where to go on in journal `j` after `c`: the sequence number to deliver events
/// after, and what to say on stderr (a new journal, dropped events).
fn resume(j: &Journal, c: &Cursor) -> (u64, Option<String>) {
    let newest = j.next_seq.saturating_sub(1);
    if let (Some(mine), Some(there)) = (&c.event, j.events.iter().find(|e| e.seq == c.seq)) {
        if mine == there {
            return (c.seq, None);
        }
        return (
            0,
            Some(format!(
                "this is another journal than the one event {} was read from (a promotion without the former primary began a new one); following it from its first event",
                c.seq
            )),
        );
    }
    if newest < c.seq && c.event.is_some() {
        return (
            0,
            Some(format!(
                "this journal ends at {newest}, before event {} last read: it is another journal (a promotion without the former primary, or an older mirrorctl, began a new one); following it from its first event",
                c.seq
            )),
        );
    }
    match j.events.first() {
        Some(first) if c.seq > 0 && first.seq > c.seq + 1 => (
            c.seq,
            Some(format!(
                "events {} to {} were dropped from the journal before they were read",
                c.seq + 1,
                first.seq - 1
            )),
        ),
        _ => (c.seq, None),
    }
}

/// What `--state-file` holds (JSON): the mirror, the primary followed, where else to look
/// for it, and the last event delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct State {
    /// [`STATE_FORMAT`].
    format: String,
    mirror_uuid: String,
    /// The primary whose journal was read last, as named to the user and as opened.
    primary: String,
    primary_open: String,
    /// The other images of the mirror (the primary's legs) where a new primary may be.
    legs: Vec<String>,
    /// The last event delivered (seq 0 and no event: none yet).
    last: Cursor,
}

const STATE_FORMAT: &str = "mirrorctl-events-state-1";

/// Pure: a state file's text, checked.
fn parse_state(text: &str) -> std::result::Result<State, String> {
    let st: State = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if st.format != STATE_FORMAT {
        return Err(format!("format \"{}\" is not {STATE_FORMAT}", st.format));
    }
    uuid::Uuid::parse_str(&st.mirror_uuid)
        .map_err(|e| format!("mirror_uuid \"{}\": {e}", st.mirror_uuid))?;
    if st.last.event.as_ref().is_some_and(|e| e.seq != st.last.seq) {
        return Err("the last event's seq is not the recorded seq".into());
    }
    Ok(st)
}

fn load_state(path: &Path) -> Result<Option<State>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::invalid(format!(
                "events: reading the state file {}: {}",
                display(path),
                crate::error::describe_io(&e)
            )))
        }
    };
    parse_state(&text).map(Some).map_err(|e| {
        Error::invalid(format!(
            "events: the state file {} is not one mirrorctl wrote or is damaged ({e}); nothing was delivered. Remove it to start from the newest event (or with --since SEQ)",
            display(path)
        ))
    })
}

/// Writes the state durably: a temporary file beside it, synced, renamed over it, and the
/// directory synced.
fn write_state(path: &Path, st: &State) -> io::Result<()> {
    let text = serde_json::to_string(st).map_err(io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// An image of the mirror: as named to the user, and as opened (absolute for a leg).
#[derive(Clone, Debug, PartialEq)]
struct Place {
    name: String,
    open: String,
}

impl Place {
    /// The image given on the command line: opened by its absolute path (a restarted
    /// follower may run elsewhere).
    fn path(p: &Path) -> Place {
        Place {
            name: display(p),
            open: display(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
        }
    }
    fn named(s: &str) -> Place {
        Place {
            name: s.to_string(),
            open: s.to_string(),
        }
    }
}

/// Where to look for the primary: the image followed, the one given, the primary's legs
/// and what a demoted image names as its primary; each once.
#[derive(Default)]
struct Places(Vec<Place>);

impl Places {
    fn add(&mut self, p: Place) {
        if !p.open.is_empty() && !self.0.iter().any(|q| q.open == p.open) {
            self.0.push(p);
        }
    }
    fn add_legs(&mut self, sb: &Superblock) {
        for l in sb.legs.iter().filter(|l| l.state() != LegState::Empty) {
            self.add(Place {
                name: l.location.clone(),
                open: l.open_path().to_string(),
            });
        }
    }
}

fn is_primary_of(sb: &Superblock, mirror: &Uuid) -> bool {
    sb.role == Role::Primary && sb.mirror_uuid == *mirror
}

/// The image among `places` (but `not`) that is the primary of `mirror` at the newest
/// generation.
fn find_primary(places: &Places, mirror: &Uuid, not: Option<&str>) -> Option<(Place, Superblock)> {
    let mut best: Option<(Place, Superblock)> = None;
    for p in places.0.iter().filter(|p| Some(p.open.as_str()) != not) {
        if let Ok(sb) = read_at(&p.open) {
            if is_primary_of(&sb, mirror)
                && best
                    .as_ref()
                    .is_none_or(|(_, b)| sb.generation > b.generation)
            {
                best = Some((p.clone(), sb));
            }
        }
    }
    best
}

/// With the primary `sb` (at `here`) still calling itself primary: the image a promotion
/// put in its place, if a leg shows one (rule P6), and why.
fn replacement(sb: &Superblock, here: &Place) -> Option<(Place, String)> {
    for l in sb.legs.iter().filter(|l| l.state() != LegState::Empty) {
        let Ok(theirs) = read_at(l.open_path()) else {
            continue;
        };
        if let Some(new) = engine::failover::replaced_by(sb, l, &theirs) {
            let place = if theirs.role == Role::Primary {
                Place {
                    name: l.location.clone(),
                    open: l.open_path().to_string(),
                }
            } else {
                Place::named(&theirs.primary_location)
            };
            return Some((
                place,
                format!(
                    "{} was replaced by a promotion of {}",
                    here.name,
                    nbd::display(&new)
                ),
            ));
        }
    }
    None
}

/// Why the image at `here` is no longer the mirror's primary (its header `sb`).
fn not_primary_why(here: &Place, sb: &Superblock, mirror: &Uuid) -> String {
    if sb.mirror_uuid != *mirror {
        format!(
            "{} now holds another mirror ({})",
            here.name,
            engine::uuid_str(&sb.mirror_uuid)
        )
    } else if sb.role == Role::Secondary && !sb.primary_location.is_empty() {
        format!(
            "{} is now a secondary of {}",
            here.name,
            nbd::display(&sb.primary_location)
        )
    } else {
        format!("{} is now a {} image", here.name, sb.role.as_str())
    }
}

/// Prints events and hands them to `--exec`; records each in `--state-file` once it was
/// delivered (after its program ran, or once printed).
struct Deliver {
    json: bool,
    exec: Option<Runner>,
    state_file: Option<PathBuf>,
}

impl Deliver {
    fn send(&self, e: Shown, st: Option<State>) -> Result<()> {
        e.print(self.json)?;
        let rec = self.state_file.clone().zip(st);
        match &self.exec {
            Some(r) => r.send(e, rec),
            None => {
                if let Some((p, st)) = rec {
                    record(&p, &st);
                }
            }
        }
        Ok(())
    }
}

fn record(path: &Path, st: &State) {
    if let Err(e) = write_state(path, st) {
        eprintln!(
            "mirrorctl: events: recording the last event in {}: {}; a restarted follower would deliver it again",
            display(path),
            crate::error::describe_io(&e)
        );
    }
}

/// The follower's position: the mirror, the primary whose journal it reads, and the last
/// event delivered.
struct Follow {
    mirror: Uuid,
    here: Place,
    places: Places,
    last: Cursor,
    /// The switch just said how the new journal goes on: not said again.
    told_resume: bool,
}

impl Follow {
    fn state(&self) -> State {
        State {
            format: STATE_FORMAT.into(),
            mirror_uuid: engine::uuid_str(&self.mirror),
            primary: self.here.name.clone(),
            primary_open: self.here.open.clone(),
            legs: self
                .places
                .0
                .iter()
                .filter(|p| p.open != self.here.open)
                .map(|p| p.open.clone())
                .collect(),
            last: self.last.clone(),
        }
    }

    /// Delivers the events of the primary's journal after the last one.
    fn deliver(&mut self, sb: &Superblock, out: &Deliver) -> Result<()> {
        self.places.add_legs(sb);
        let Some(j) = sb.journal.as_ref() else {
            return Ok(());
        };
        let (after, note) = resume(j, &self.last);
        if let Some(n) = note.filter(|_| !std::mem::take(&mut self.told_resume)) {
            eprintln!("mirrorctl: events: {}: {n}", self.here.name);
        }
        for e in j.since(after) {
            self.last = Cursor {
                seq: e.seq,
                event: Some(e.clone()),
            };
            out.send(Shown::of(e, sb, &self.here.name), Some(self.state()))?;
        }
        Ok(())
    }

    /// Goes on with the primary at `to` (its header `sb`): says what changed on stderr and
    /// as a `following` event.
    fn switch(&mut self, to: Place, sb: &Superblock, why: &str, out: &Deliver) -> Result<()> {
        let how = match sb.journal.as_ref().map(|j| resume(j, &self.last)) {
            Some((0, _)) | None if self.last.seq > 0 => {
                "its journal is a new one (an unplanned promotion began it): its events are delivered from the first".to_string()
            }
            _ => format!(
                "its journal goes on from the one read so far: events after {} are delivered",
                self.last.seq
            ),
        };
        eprintln!(
            "mirrorctl: events: mirror {}: {why}; following the primary {} from now on ({how})",
            engine::uuid_str(&self.mirror),
            nbd::display(&to.name)
        );
        self.places.add(self.here.clone());
        self.here = to;
        self.told_resume = true;
        let detail = format!(
            "now following {} ({why}); {how}",
            nbd::display(&self.here.name)
        );
        out.send(
            Shown::found("following", detail, &self.mirror, &self.here.name),
            Some(self.state()),
        )
    }
}

pub(super) fn events(_ctx: &Ctx, a: cli::EventsArgs) -> Result<Exit> {
    let saved = match &a.state_file {
        Some(p) => load_state(p)?,
        None => None,
    };
    let given = Place::path(&a.primary);
    let mut places = Places::default();
    // The primary to start with, and the mirror.
    let (mirror, here, sb) = match &saved {
        Some(st) => {
            let mirror = *uuid::Uuid::parse_str(&st.mirror_uuid)
                .map_err(|e| Error::invalid(format!("events: state file: {e}")))?
                .as_bytes();
            if let Ok(sb) = read(&a.primary) {
                if sb.mirror_uuid != mirror {
                    return Err(Error::invalid(format!(
                        "events: the state file {} is for mirror {}, but {} is an image of mirror {}; give the state file of this mirror (each follower needs its own), or remove it to start from the newest event",
                        display(a.state_file.as_deref().unwrap_or(Path::new(""))),
                        st.mirror_uuid,
                        display(&a.primary),
                        engine::uuid_str(&sb.mirror_uuid)
                    )));
                }
            }
            places.add(Place {
                name: st.primary.clone(),
                open: st.primary_open.clone(),
            });
            places.add(given.clone());
            for l in &st.legs {
                places.add(Place::named(l));
            }
            // The primary it followed last, if it still is; else the newest one found.
            let first = Places(places.0[..1].to_vec());
            match find_primary(&first, &mirror, None)
                .or_else(|| find_primary(&places, &mirror, None))
            {
                Some((p, sb)) => (mirror, p, Some(sb)),
                None => (mirror, places.0[0].clone(), None),
            }
        }
        None => {
            let sb = read(&a.primary)?;
            if sb.role == Role::Primary || !a.follow {
                journal_of(&sb, &a.primary)?;
                (sb.mirror_uuid, given.clone(), Some(sb))
            } else {
                // --follow given a demoted primary (a follower restarted after a promotion):
                // its mirror's primary.
                let mirror = sb.mirror_uuid;
                places.add(given.clone());
                places.add(Place::named(&sb.primary_location));
                places.add_legs(&sb);
                match find_primary(&places, &mirror, Some(&given.open)) {
                    Some((p, psb)) => {
                        eprintln!(
                            "mirrorctl: events: {}; following its primary {}",
                            not_primary_why(&given, &sb, &mirror),
                            nbd::display(&p.name)
                        );
                        (mirror, p, Some(psb))
                    }
                    None => (mirror, given.clone(), None),
                }
            }
        }
    };
    if let Some(sb) = &sb {
        places.add_legs(sb);
    } else if !a.follow {
        return Err(Error::invalid(format!(
            "events: no primary of mirror {} found (looked at {})",
            engine::uuid_str(&mirror),
            places
                .0
                .iter()
                .map(|p| nbd::display(&p.name))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    places.add(given.clone());
    let journal = sb.as_ref().and_then(|sb| sb.journal.as_ref());
    let newest = journal.map_or(0, |j| j.next_seq.saturating_sub(1));
    let last = match (&saved, a.since) {
        // A state file wins over --since (which only says where a new one starts).
        (Some(st), _) => st.last.clone(),
        (None, Some(s)) => Cursor::at(s, journal),
        // --exec or --state-file without --since: what happens from now on (not a storm
        // of old events).
        (None, None) if a.exec.is_some() || a.state_file.is_some() => Cursor::at(newest, journal),
        (None, None) => Cursor::default(),
    };
    let mut f = Follow {
        mirror,
        here,
        places,
        last,
        told_resume: false,
    };
    if let Some(p) = &a.state_file {
        write_state(p, &f.state()).map_err(|e| {
            Error::invalid(format!(
                "events: writing the state file {}: {}",
                display(p),
                crate::error::describe_io(&e)
            ))
        })?;
    }
    let exec = a
        .exec
        .as_ref()
        .map(|cmd| Runner::start(cmd.clone(), a.exec_timeout))
        .transpose()
        .map_err(|e| Error::invalid(format!("events: starting the --exec thread: {e}")))?;
    let out = Deliver {
        json: a.json,
        exec,
        state_file: a.state_file.clone(),
    };
    // Restarted after a promotion moved the primary: said like a switch seen live.
    let mut sb = sb;
    if let (Some(st), Some(now)) = (&saved, &sb) {
        if st.primary_open != f.here.open {
            let to = f.here.clone();
            f.here = Place {
                name: st.primary.clone(),
                open: st.primary_open.clone(),
            };
            let why = match read_at(&st.primary_open) {
                Ok(old) if is_primary_of(&old, &mirror) => {
                    format!("{} was replaced by a promotion", st.primary)
                }
                Ok(old) => not_primary_why(&f.here, &old, &mirror),
                Err(e) => format!("{} cannot be read ({e})", st.primary),
            };
            f.switch(to, now, &why, &out)?;
        }
    }
    let mut told_replaced = false;
    let mut told_missing = false;
    let mut told_error = false;
    // None: not checked yet (an Instant minus a duration would panic on a machine up for
    // less, e.g. the alert unit starting at boot).
    let mut checked: Option<Instant> = None;
    let mut searched: Option<Instant> = None;
    loop {
        if let Some(sb) = sb.take() {
            f.deliver(&sb, &out)?;
            if !a.follow && !told_replaced {
                told_replaced = true;
                if let Some(new) = replaced(Path::new(&f.here.open)) {
                    out.send(
                        Shown::found(
                            "replaced-primary",
                            format!("replaced by {new} (promoted); nothing is written here"),
                            &mirror,
                            &f.here.name,
                        ),
                        None,
                    )?;
                }
            }
        }
        if !a.follow {
            break;
        }
        std::thread::sleep(POLL);
        // The image followed: still the primary (and not replaced)? Else why not.
        let why = match read_at(&f.here.open) {
            Ok(now) if is_primary_of(&now, &mirror) => {
                told_error = false;
                told_missing = false;
                let due = checked.is_none_or(|t| t.elapsed() >= REPLACED_CHECK);
                let replaced = if due {
                    checked = Some(Instant::now());
                    replacement(&now, &f.here)
                } else {
                    None
                };
                match replaced {
                    None => {
                        sb = Some(now);
                        continue;
                    }
                    Some((to, why)) => {
                        // The events it recorded before it was replaced, first.
                        f.deliver(&now, &out)?;
                        f.places.add(to);
                        // Looked for now, whenever the last search was.
                        searched = None;
                        why
                    }
                }
            }
            Ok(now) => {
                told_error = false;
                if now.mirror_uuid == mirror {
                    f.places.add(Place::named(&now.primary_location));
                }
                not_primary_why(&f.here, &now, &mirror)
            }
            Err(e) => {
                if !told_error {
                    told_error = true;
                    eprintln!(
                        "mirrorctl: events: {e}; looking for the primary of mirror {}",
                        engine::uuid_str(&mirror)
                    );
                }
                format!("{} cannot be read", f.here.name)
            }
        };
        if searched.is_some_and(|t| t.elapsed() < SEARCH) {
            continue;
        }
        searched = Some(Instant::now());
        let here = f.here.open.clone();
        match find_primary(&f.places, &mirror, Some(&here)) {
            Some((to, now)) => {
                told_missing = false;
                told_error = false;
                checked = None;
                f.switch(to, &now, &why, &out)?;
                sb = Some(now);
            }
            None if !told_missing => {
                told_missing = true;
                eprintln!(
                    "mirrorctl: events: mirror {}: {why}, and no other primary of it was found (looked at {}); still looking, twice a second",
                    engine::uuid_str(&mirror),
                    f.places
                        .0
                        .iter()
                        .map(|p| nbd::display(&p.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            None => {}
        }
    }
    drop(out);
    Ok(Exit::Success)
}

/// Runs `--exec` for each event in order on its own thread, so a slow program never holds
/// up the following; one that outlives the timeout is killed.
type Record = Option<(PathBuf, State)>;

struct Runner {
    tx: Option<mpsc::Sender<(Shown, Record)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    fn start(cmd: String, timeout: Duration) -> io::Result<Runner> {
        let (tx, rx) = mpsc::channel::<(Shown, Record)>();
        let thread = std::thread::Builder::new()
            .name("exec".into())
            .spawn(move || {
                for (e, rec) in rx {
                    run_one(&cmd, timeout, &e);
                    // Delivered: recorded only now (killed in between, it comes again).
                    if let Some((p, st)) = rec {
                        record(&p, &st);
                    }
                }
            })?;
        Ok(Runner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, e: Shown, rec: Record) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((e, rec));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_one(cmd: &str, timeout: Duration, e: &Shown) {
    let seq = e.seq.map(|s| s.to_string()).unwrap_or_default();
    let what = format!(
        "--exec for event {} ({})",
        if seq.is_empty() { "-" } else { &seq },
        e.kind
    );
    // Its output goes to stderr: stdout carries the events.
    let out = std::os::fd::AsFd::as_fd(&io::stderr())
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let child = Process::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("MIRRORCTL_EVENT", &e.kind)
        .env("MIRRORCTL_SEQ", &seq)
        .env("MIRRORCTL_TIME", &e.time)
        .env("MIRRORCTL_TIME_UNIX", e.time_unix.to_string())
        .env(
            "MIRRORCTL_SLOT",
            e.slot.map(|s| s.to_string()).unwrap_or_default(),
        )
        .env("MIRRORCTL_LEG", e.leg_display.clone().unwrap_or_default())
        .env("MIRRORCTL_DETAIL", &e.detail)
        .env("MIRRORCTL_PRIMARY", &e.primary)
        .env("MIRRORCTL_MIRROR", &e.mirror_uuid)
        .stdin(Stdio::null())
        .stdout(out)
        // A process group of its own: the timeout kills the hook's children too (a `sleep`
        // or `curl` it started), not only /bin/sh.
        .process_group(0)
        .spawn();
    let mut child: Child = match child {
        Ok(c) => c,
        Err(err) => {
            eprintln!("mirrorctl: events: {what}: starting /bin/sh: {err}");
            return;
        }
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return,
            Ok(Some(st)) => {
                eprintln!("mirrorctl: events: {what} failed ({st})");
                return;
            }
            Ok(None) if started.elapsed() >= timeout => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: a plain kill(2) of the process group this child leads.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "mirrorctl: events: {what} was killed after {}s (--exec-timeout)",
                    timeout.as_secs()
                );
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => {
                eprintln!("mirrorctl: events: {what}: {err}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::journal::Kind;

    fn journal(first_at: u64, n: u64) -> Journal {
        let mut j = Journal::new();
        for i in 0..n {
            j.push(Kind::Attached, Some(0), &format!("e{i}"), first_at + i);
        }
        j
    }

    fn cursor_at(j: &Journal, seq: u64) -> Cursor {
        Cursor::at(seq, Some(j))
    }

    #[test]
    fn the_same_journal_goes_on_after_the_last_event_even_when_carried_to_a_new_primary() {
        let mut a = journal(100, 5);
        let c = cursor_at(&a, 5);
        // A planned promotion carries the journal over and adds `promoted`.
        a.push(Kind::Promoted, None, "planned", 200);
        assert_eq!(resume(&a, &c), (5, None));
    }

    #[test]
    fn a_new_journal_reusing_the_numbers_is_read_from_its_first_event() {
        let a = journal(100, 5);
        let c = cursor_at(&a, 3);
        // An unplanned promotion begins a new journal: same numbers, other events.
        let b = journal(500, 7);
        let (after, note) = resume(&b, &c);
        assert_eq!(after, 0);
        assert!(note.unwrap().contains("another journal"));
        // One that has fewer events than the last one read.
        let b = journal(500, 2);
        assert_eq!(resume(&b, &c).0, 0);
    }

    #[test]
    fn events_dropped_before_they_were_read_are_named_and_a_bare_since_is_trusted() {
        let mut j = Journal::new();
        for i in 0..(crate::format::journal::MAX_EVENTS as u64 + 10) {
            j.push(Kind::Fractured, Some(0), "x", i);
        }
        let c = Cursor {
            seq: 3,
            event: None,
        };
        let (after, note) = resume(&j, &c);
        assert_eq!(after, 3);
        assert!(note.unwrap().contains("events 4 to 10 were dropped"));
        // --since beyond the newest: waits for the next (nothing to deliver, no note).
        let c = Cursor {
            seq: 99_999,
            event: None,
        };
        assert_eq!(resume(&j, &c), (99_999, None));
        assert_eq!(resume(&j, &Cursor::default()), (0, None));
    }

    #[test]
    fn a_state_file_is_read_back_and_a_damaged_or_foreign_one_is_refused() {
        let j = journal(100, 3);
        let st = State {
            format: STATE_FORMAT.into(),
            mirror_uuid: "8d3c3f4e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".into(),
            primary: "a.img".into(),
            primary_open: "/srv/a.img".into(),
            legs: vec!["/srv/b.img".into()],
            last: cursor_at(&j, 2),
        };
        let text = serde_json::to_string(&st).unwrap();
        assert_eq!(parse_state(&text).unwrap(), st);
        assert!(parse_state(&text[..text.len() / 2]).is_err());
        assert!(parse_state("{}").is_err());
        let other = text.replace(STATE_FORMAT, "something-else");
        assert!(parse_state(&other).unwrap_err().contains("is not"));
        let bad = text.replace("8d3c3f4e-2b1a", "not-a-uuid");
        assert!(parse_state(&bad).unwrap_err().contains("mirror_uuid"));
        let mut wrong = st.clone();
        wrong.last.seq = 1;
        assert!(parse_state(&serde_json::to_string(&wrong).unwrap()).is_err());
    }

    #[test]
    fn a_found_event_and_a_journal_event_name_an_nbd_leg_by_its_short_form_in_text() {
        let e = Shown {
            seq: Some(4),
            time: "t".into(),
            time_unix: 1,
            kind: "fractured".into(),
            slot: Some(0),
            leg: Some("nbds://h:1/x?tls-ca=/a/b".into()),
            leg_display: Some(nbd::display("nbds://h:1/x?tls-ca=/a/b")),
            detail: "by error: boom".into(),
            mirror_uuid: "m".into(),
            primary: "a.img".into(),
        };
        assert!(e
            .text()
            .ends_with("fractured  slot 0 (nbds://h:1/x (TLS)): by error: boom"));
    }
}

//! A dyno's output on disk, between its monitor (which writes it) and the server (which
//! delivers it to the app's log stream): a bounded, rotating log that keeps what the dyno
//! wrote while no server was reading.
//!
//! The monitor appends whole lines (`text\n`, at most [`slipway_logs::MAX_LINE_BYTES`] of
//! text; longer output is cut into several lines) to segment files `out.<n>` in the dyno's
//! monitor directory. A segment grows to [`SEGMENT_BYTES`]; then `out.<n+1>` is started and
//! segments older than the last [`KEEP_SEGMENTS`] are deleted, so a dyno's buffered output
//! never takes more than `SEGMENT_BYTES * KEEP_SEGMENTS` on disk.
//!
//! The server reads from a [`Cursor`] (segment number and byte offset), delivers complete
//! lines only, and saves the cursor to `cursor` (`<segment> <offset>`, written to a temporary
//! file and renamed) after each batch: a server that restarts resumes exactly there, so no
//! line is delivered twice and none is lost while the segment holding it is kept. If the
//! reader fell so far behind that its segment was deleted, it resumes at the oldest segment
//! left and reports the gap.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest size of one segment file.
pub(crate) const SEGMENT_BYTES: u64 = 2 * 1024 * 1024;
/// Segments kept: at most `SEGMENT_BYTES * KEEP_SEGMENTS` of output wait for a server.
pub(crate) const KEEP_SEGMENTS: u64 = 2;
/// Most bytes one file read takes (the rest comes with the next).
const READ_BATCH: u64 = 256 * 1024;
/// Most bytes one [`read_new`] delivers before it returns with [`ReadOutcome::more`]: a dyno
/// writing faster than the server reads must not keep its reader (and the thread it runs on)
/// busy for ever.
pub(crate) const READ_BUDGET: u64 = 4 * READ_BATCH;

fn segment(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("out.{n}"))
}

/// The monitor's side: appends lines, rotating segments.
pub(crate) struct LogWriter {
    dir: PathBuf,
    n: u64,
    file: File,
    len: u64,
}

impl LogWriter {
    /// Starts at segment 0 (a monitor directory is fresh for each run of a dyno).
    pub(crate) fn create(dir: &Path) -> std::io::Result<Self> {
        let file = open_append(&segment(dir, 0))?;
        let len = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            n: 0,
            file,
            len,
        })
    }

    /// Appends `line` (without its newline; must not contain one) as one `write`.
    pub(crate) fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let size = line.len() as u64 + 1;
        if self.len > 0 && self.len + size > SEGMENT_BYTES {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.len += size;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.n += 1;
        self.file = open_append(&segment(&self.dir, self.n))?;
        self.len = 0;
        if let Some(old) = self.n.checked_sub(KEEP_SEGMENTS) {
            match std::fs::remove_file(segment(&self.dir, old)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Where the server has read up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Cursor {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

impl Cursor {
    fn path(dir: &Path) -> PathBuf {
        dir.join("cursor")
    }

    /// The saved cursor, or the start when none was saved (or it is unreadable).
    pub(crate) fn load(dir: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(Self::path(dir)) else {
            return Self::default();
        };
        let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
        match (parts.next(), parts.next()) {
            (Some(Ok(segment)), Some(Ok(offset))) => Self { segment, offset },
            _ => Self::default(),
        }
    }

    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("cursor.tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.segment, self.offset))?;
        std::fs::rename(&tmp, Self::path(dir))
    }
}

/// What one [`read_new`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadOutcome {
    /// Lines delivered.
    pub(crate) lines: usize,
    /// The reader's segment had been deleted: output between it and the oldest kept
    /// segment is lost.
    pub(crate) gap: bool,
    /// The read stopped at its budget ([`READ_BUDGET`]) with more output waiting.
    pub(crate) more: bool,
}

/// Delivers the complete lines after `cursor` to `line`, up to [`READ_BUDGET`] bytes of them,
/// and moves the cursor past them. `more` in the outcome says the budget stopped it.
pub(crate) fn read_new(
    dir: &Path,
    cursor: &mut Cursor,
    mut line: impl FnMut(&str),
) -> std::io::Result<ReadOutcome> {
    let mut read = ReadOutcome::default();
    let mut delivered: u64 = 0;
    loop {
        if delivered >= READ_BUDGET {
            read.more = true;
            return Ok(read);
        }
        // Seen before reading the current segment to its end: once the next segment exists,
        // the current one is complete.
        let next_exists = segment(dir, cursor.segment + 1).exists();
        let mut file = match File::open(segment(dir, cursor.segment)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match oldest_after(dir, cursor.segment)? {
                    Some(n) => {
                        *cursor = Cursor {
                            segment: n,
                            offset: 0,
                        };
                        read.gap = true;
                        continue;
                    }
                    None => return Ok(read),
                }
            }
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(cursor.offset))?;
        let mut buf = Vec::new();
        file.take(READ_BATCH).read_to_end(&mut buf)?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        for l in buf[..complete].split_inclusive(|b| *b == b'\n') {
            line(&String::from_utf8_lossy(&l[..l.len() - 1]));
            read.lines += 1;
        }
        cursor.offset += complete as u64;
        delivered += complete as u64;
        if buf.len() as u64 == READ_BATCH {
            // More to read in this segment.
            continue;
        }
        if next_exists && complete == buf.len() {
            *cursor = Cursor {
                segment: cursor.segment + 1,
                offset: 0,
            };
            continue;
        }
        return Ok(read);
    }
}

/// The lowest segment number above `after` that exists.
fn oldest_after(dir: &Path, after: u64) -> std::io::Result<Option<u64>> {
    let mut oldest: Option<u64> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("out."))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if n > after && oldest.is_none_or(|o| n < o) {
            oldest = Some(n);
        }
    }
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads until nothing more is waiting (as the server's tail does).
    fn collect(dir: &Path, cursor: &mut Cursor) -> (Vec<String>, ReadOutcome) {
        let mut lines = Vec::new();
        let mut all = ReadOutcome::default();
        loop {
            let read = read_new(dir, cursor, |l| lines.push(l.to_string())).expect("read");
            all.lines += read.lines;
            all.gap |= read.gap;
            if !read.more {
                return (lines, all);
            }
        }
    }

    #[test]
    fn one_read_stops_at_its_budget_and_the_next_goes_on_from_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::create(dir.path()).expect("writer");
        let total = 3 * READ_BUDGET / 1_000;
        for i in 0..total {
            let mut line = format!("{i:08} ").into_bytes();
            line.resize(999, b'x');
            w.write_line(&line).expect("write");
        }
        let mut cursor = Cursor::default();
        let mut first = Vec::new();
        let read =
            read_new(dir.path(), &mut cursor, |l| first.push(l[..8].to_string())).expect("read");
        assert!(read.more, "a read past its budget says more is waiting");
        assert!(read.lines > 0 && (read.lines as u64) * 1_000 <= READ_BUDGET + READ_BATCH);
        let (rest, end) = collect(dir.path(), &mut cursor);
        assert!(!end.gap);
        let numbers: Vec<u64> = first
            .iter()
            .map(|n| n.parse().expect("number"))
            .chain(rest.iter().map(|l| l[..8].parse().expect("number")))
            .collect();
        assert_eq!(numbers, (0..total).collect::<Vec<_>>());
    }

    #[test]
    fn lines_are_read_once_and_a_saved_cursor_resumes_after_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::create(dir.path()).expect("writer");
        w.write_line(b"one").expect("write");
        w.write_line(b"two").expect("write");
        let mut cursor = Cursor::default();
        assert_eq!(collect(dir.path(), &mut cursor).0, ["one", "two"]);
        assert!(collect(dir.path(), &mut cursor).0.is_empty());
        cursor.save(dir.path()).expect("save");
        w.write_line(b"three").expect("write");
        // A partial line (a writer mid-way) is not delivered until complete.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("out.0"))
            .and_then(|mut f| f.write_all(b"fou"))
            .expect("partial");
        let mut resumed = Cursor::load(dir.path());
        assert_eq!(resumed, cursor);
        assert_eq!(collect(dir.path(), &mut resumed).0, ["three"]);
    }

    #[test]
    fn segments_rotate_within_the_bound_and_a_reader_left_behind_sees_the_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::create(dir.path()).expect("writer");
        let line = vec![b'x'; 9_999];
        let per_segment = SEGMENT_BYTES / 10_000;
        let mut cursor = Cursor::default();
        // A reader that keeps up sees every line across rotations.
        let total = per_segment * 3 + 5;
        let mut seen = 0;
        for i in 0..total {
            w.write_line(&line).expect("write");
            if i % 50 == 0 {
                seen += collect(dir.path(), &mut cursor).1.lines;
            }
        }
        seen += collect(dir.path(), &mut cursor).1.lines;
        assert_eq!(seen as u64, total);
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("out."))
            .map(|e| e.metadata().expect("meta").len())
            .sum();
        assert!(on_disk <= SEGMENT_BYTES * KEEP_SEGMENTS, "{on_disk}");
        // A reader from the start lost the deleted segments and says so.
        let mut late = Cursor::default();
        let (lines, read) = collect(dir.path(), &mut late);
        assert!(read.gap);
        assert!((lines.len() as u64) < total);
        assert_eq!(late, cursor);
    }
}

//! A reader that bounds tar metadata entries before the `tar` crate buffers them.
//!
//! The `tar` crate reads a GNU long name (`L`), long link (`K`) or PAX extension (`x`) entry
//! whole into memory before it hands out the entry it describes, so a pushed tarball with a
//! 64 MiB "long name" made the server hold 64 MiB (and more) without any entry being counted.
//! [`BoundedHeaders`] follows the tar block structure as the bytes pass and fails the read that
//! would deliver a metadata header declaring more than its bound, before its data is read.

use std::io::{self, Read};

/// Each GNU long name/link or PAX header may hold at most this many bytes.
pub const MAX_METADATA_ENTRY: u64 = 64 * 1024;

const BLOCK: usize = 512;

pub(crate) struct BoundedHeaders<R> {
    inner: R,
    state: State,
    /// A PAX `size=` for the next entry (it overrides the size in that entry's header).
    pax_size: Option<u64>,
    max: u64,
}

enum State {
    Header {
        buf: Box<[u8; BLOCK]>,
        filled: usize,
    },
    Data {
        /// Bytes until the next header (data and padding).
        remaining: u64,
        /// The data of a PAX header, kept to read its `size=`.
        pax: Option<Vec<u8>>,
        pax_len: u64,
    },
    /// After the end-of-archive block: bytes pass through.
    Done,
}

impl<R: Read> BoundedHeaders<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_METADATA_ENTRY)
    }

    pub(crate) fn with_limit(inner: R, max: u64) -> Self {
        Self {
            inner,
            state: State::header(),
            pax_size: None,
            max,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header { buf, filled } => {
                    let take = (BLOCK - *filled).min(bytes.len());
                    buf[*filled..*filled + take].copy_from_slice(&bytes[..take]);
                    *filled += take;
                    bytes = &bytes[take..];
                    if *filled == BLOCK {
                        let header = std::mem::replace(buf, Box::new([0u8; BLOCK]));
                        self.state = self.after_header(&header)?;
                    }
                }
                State::Data {
                    remaining,
                    pax,
                    pax_len,
                } => {
                    let take = (*remaining).min(bytes.len() as u64) as usize;
                    if let Some(p) = pax.as_mut() {
                        let want = (*pax_len as usize).saturating_sub(p.len()).min(take);
                        p.extend_from_slice(&bytes[..want]);
                    }
                    *remaining -= take as u64;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        if let Some(p) = pax.take() {
                            self.pax_size = pax_size(&p);
                        }
                        self.state = State::header();
                    }
                }
            }
        }
        Ok(())
    }

    fn after_header(&mut self, header: &[u8; BLOCK]) -> io::Result<State> {
        if header.iter().all(|b| *b == 0) {
            return Ok(State::Done);
        }
        let kind = header[156];
        let declared = parse_size(&header[124..136])?;
        let metadata = match kind {
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link name"),
            b'x' | b'g' => Some("PAX extended header"),
            _ => None,
        };
        if kind == b'S' {
            return Err(invalid(
                "the source tarball has a GNU sparse file, which is not supported",
            ));
        }
        let size = match metadata {
            Some(what) => {
                if declared > self.max {
                    return Err(invalid(&format!(
                        "the source tarball has a {what} of {declared} bytes; at most {} are allowed",
                        self.max
                    )));
                }
                declared
            }
            None => self.pax_size.take().unwrap_or(declared),
        };
        let padded = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s / BLOCK as u64 * BLOCK as u64)
            .ok_or_else(|| invalid("the source tarball has an entry with an impossible size"))?;
        if padded == 0 {
            return Ok(State::header());
        }
        Ok(State::Data {
            remaining: padded,
            pax: (kind == b'x').then(Vec::new),
            pax_len: size,
        })
    }
}

impl State {
    fn header() -> Self {
        State::Header {
            buf: Box::new([0u8; BLOCK]),
            filled: 0,
        }
    }
}

impl<R: Read> Read for BoundedHeaders<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.feed(&out[..n])?;
        Ok(n)
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// A tar size field: octal ASCII, or base-256 when the high bit of the first byte is set.
fn parse_size(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value: u64 = 0;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| invalid("the source tarball has an entry size that overflows"))?;
        }
        return Ok(value);
    }
    let text: String = field
        .iter()
        .map(|b| *b as char)
        .filter(|c| *c != '\0' && *c != ' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(&text, 8)
        .map_err(|_| invalid("the source tarball has a header with an unreadable size"))
}

/// The `size` record of PAX extension data (`"<len> size=<n>\n"` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut found = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return found;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"size=") {
            found = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
        rest = &rest[len..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records() {
        assert_eq!(pax_size(b"16 size=1234567\n12 path=ab\n"), Some(1_234_567));
        assert_eq!(pax_size(b"12 path=ab\n"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(b"00000001750\0").expect("octal"), 1000);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 1;
        b256[10] = 1;
        assert_eq!(parse_size(&b256).expect("base-256"), 257);
    }
}

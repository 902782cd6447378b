//! The disk writer's hand-written JSON: the very bytes serde_json writes for a line, so the
//! reader (and any older version) reads it as it always did.

use super::*;
use chrono::{NaiveDate, TimeZone};
use proptest::strategy::Strategy;

fn encoded(line: &LogLine) -> String {
    let mut out = Vec::new();
    crate::store::encode(line, &mut out);
    String::from_utf8(out).expect("UTF-8")
}

fn serde(line: &LogLine) -> String {
    serde_json::to_string(line).expect("a line serializes")
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nano: u32) -> DateTime<Utc> {
    let naive = NaiveDate::from_ymd_opt(y, mo, d)
        .and_then(|d| d.and_hms_nano_opt(h, mi, s, nano))
        .expect("valid time");
    Utc.from_utc_datetime(&naive)
}

const TRICKY: &[&str] = &[
    "",
    "at=info method=GET path=\"/\" status=200",
    "quote \" backslash \\ slash / end\\",
    "\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{e}\u{1b}\u{1f} \u{7f}",
    "caf\u{e9} \u{1F600} \u{2028} \u{2029} \u{feff} \u{fffd} \u{10ffff}",
    "\"",
    "\\",
    "\n",
    "ends with a control\u{1}",
];

#[test]
fn encodes_exactly_what_serde_json_writes() {
    let times = [
        at(2013, 2, 11, 15, 19, 10, 123_456_000),
        at(2024, 12, 31, 23, 59, 59, 0),
        at(2024, 1, 1, 0, 0, 0, 5_000_000),
        at(2024, 1, 1, 0, 0, 0, 123_456_789),
        at(2024, 1, 1, 0, 0, 0, 1),
        at(0, 1, 1, 0, 0, 0, 10_000),
        at(9999, 12, 31, 23, 59, 59, 999_999_999),
        // Outside the fast path: a leap second and years chrono writes with a sign.
        at(2016, 12, 31, 23, 59, 59, 1_500_000_000),
        at(-1, 6, 1, 0, 0, 0, 0),
        at(10000, 6, 1, 0, 0, 0, 42),
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MAX_UTC,
    ];
    for (i, time) in times.into_iter().enumerate() {
        for dyno in TRICKY {
            for message in TRICKY {
                let line = LogLine {
                    seq: [0, 7, u64::MAX][i % 3],
                    time,
                    source: if i % 2 == 0 {
                        Source::App
                    } else {
                        Source::Heroku
                    },
                    dyno: (*dyno).into(),
                    message: (*message).into(),
                };
                assert_eq!(encoded(&line), serde(&line));
            }
        }
    }
}

#[test]
fn encoded_lines_read_back() {
    for message in TRICKY {
        let line = LogLine {
            seq: 3,
            time: at(2013, 2, 11, 15, 19, 10, 123_456_000),
            source: Source::Heroku,
            dyno: "router".into(),
            message: (*message).into(),
        };
        let back: LogLine = serde_json::from_str(&encoded(&line)).expect("readable");
        assert_eq!(back, line);
    }
}

proptest::proptest! {
    #[test]
    fn encodes_any_line_as_serde_json_does(
        seq in proptest::num::u64::ANY,
        secs in -100_000_000_000i64..300_000_000_000,
        nano in proptest::prop_oneof![
            proptest::strategy::Just(0u32),
            (0u32..1000).prop_map(|n| n * 1_000_000),
            (0u32..1_000_000).prop_map(|n| n * 1000),
            0u32..1_000_000_000,
        ],
        app in proptest::bool::ANY,
        dyno in "\\PC*|[a-z0-9.]*",
        message in "\\PC*|.*|[\"\\\\ =\n\r\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}a\u{e9}\u{1F600}]*",
    ) {
        let time = DateTime::from_timestamp(secs, nano).expect("in range");
        let line = LogLine {
            seq,
            time,
            source: if app { Source::App } else { Source::Heroku },
            dyno,
            message,
        };
        proptest::prop_assert_eq!(encoded(&line), serde(&line));
    }
}

/// The bytes JSON escapes, one at a time: what the word scan must find.
fn escaped_bytes(word: [u8; 8]) -> u64 {
    word.iter().enumerate().fold(0, |mask, (at, &b)| {
        if b < 0x20 || b == b'"' || b == b'\\' {
            mask | 0x80 << (8 * at)
        } else {
            mask
        }
    })
}

#[test]
fn the_word_scan_marks_exactly_the_bytes_json_escapes() {
    // Every byte value at every place among neighbours that are plain ASCII, UTF-8
    // continuation bytes, or bytes that need escaping themselves.
    let fillers = [
        0, 0x1f, b' ', b'!', b'"', b'#', b'[', b'\\', b']', 0x7f, 0x80, 0xa2, 0xff,
    ];
    for filler in fillers {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = [filler; 8];
                word[at] = b;
                assert_eq!(
                    crate::store::escape_mask(u64::from_le_bytes(word)),
                    escaped_bytes(word),
                    "{word:?}"
                );
            }
        }
    }
}

proptest::proptest! {
    #[test]
    fn the_word_scan_marks_exactly_the_bytes_json_escapes_in_any_word(word in proptest::array::uniform8(proptest::num::u8::ANY)) {
        proptest::prop_assert_eq!(crate::store::escape_mask(u64::from_le_bytes(word)), escaped_bytes(word));
    }
}
